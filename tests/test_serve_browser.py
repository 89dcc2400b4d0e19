"""`zoo serve` end to end in a real browser: headless Chromium (Debian's) driven by Playwright.

Starts `zoo serve` as a subprocess on a free loopback port, uploads an image through the page's
file input and checks that the first result shown is that image; then clicks another result
("more like this") and checks that it becomes the first. Skips where Chromium or Playwright is
not installed (Debian: apt-get install chromium; pip install playwright; no browser download).
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import TINY
from shapes import make_shapes

CHROMIUM = next((p for p in (os.environ.get("ZOO_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")


@contextmanager
def browser_page(console: bool = False):
    """(playwright's sync_api, a Chromium page, the list its script errors land in; with
    ``console`` also console errors)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            if console:
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            yield sync_api, page, errors
        finally:
            browser.close()


@pytest.fixture
def server(tmp_path):
    from zoo.cli.main import main
    from zoo.serve.server import spawn_server

    images = make_shapes(tmp_path / "shapes", per_class=3, seed=1, shapes=("circle", "square", "triangle"))
    index = tmp_path / "shapes.index"
    assert main(["index", "--images", str(images), "--out", str(index),
                 "--trainer.enable_progress_bar", "false", *TINY]) == 0
    proc, url = spawn_server(index)
    yield images, url
    proc.terminate()
    proc.wait(timeout=30)


def test_upload_in_the_page_shows_the_image_first(server):
    images, url = server
    query = images / "triangle" / "001.png"
    with browser_page(console=True) as (sync_api, page, errors):
        page.goto(url + "/")
        sync_api.expect(page.locator("#info")).to_contain_text("9 items")
        page.set_input_files("#query-file", str(query))
        first = page.locator("#results .result").first
        sync_api.expect(first).to_have_attribute("data-path", str(query.resolve()))
        sync_api.expect(first.locator(".cos")).to_have_text("1.000")
        sync_api.expect(page.locator("#results .result")).to_have_count(9)
        assert first.locator(".label").inner_text() == "triangle"
        # its thumbnail came from the server, by id, and decoded
        img = first.locator("img")
        sync_api.expect(img).to_have_attribute("src", f"/api/items/{first.get_attribute('data-id')}/thumbnail")
        for _ in range(100):
            if img.evaluate("i => i.complete && i.naturalWidth"):
                break
            page.wait_for_timeout(100)
        assert img.evaluate("i => i.naturalWidth") == 48

        # click the third result: more like this puts it first
        third = page.locator("#results .result").nth(2)
        third_path = third.get_attribute("data-path")
        third.click()
        sync_api.expect(page.locator("#results .result").first).to_have_attribute("data-path", third_path)
        sync_api.expect(page.locator("#query-meta")).to_contain_text("indexed item #")
        assert not errors, errors
