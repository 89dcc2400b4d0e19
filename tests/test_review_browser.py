"""The review page end to end in headless Chromium (Debian's) driven by Playwright: review a group,
change the file to keep, select all but one, dry run, move, check the files on disk, undo, and
check every file is byte-identical to before. Skips where Chromium or Playwright is missing."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from shapes import make_shapes
from test_review import FAST, snapshot
from test_serve_browser import CHROMIUM, browser_page

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
TOKEN = "browser-test-token"


@pytest.fixture
def server(tmp_path):
    from zoo.cli.main import main
    from zoo.serve.server import spawn_server

    images = make_shapes(tmp_path / "photos", per_class=2, seed=5, shapes=("circle", "square"))
    src = images / "circle" / "000.png"
    Image.open(src).save(images / "circle" / "000_q40.jpg", quality=40)
    Image.open(src).resize((24, 24)).save(images / "circle" / "000_small.png")
    shutil.copy(images / "square" / "000.png", images / "square" / "000_copy.png")
    index = tmp_path / "i"
    assert main(["index", "--images", str(images), "--out", str(index), *FAST]) == 0
    p = lambda *parts: str(images.joinpath(*parts))  # noqa: E731
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "groups.json").write_text(json.dumps({
        "source": str(images), "threshold": 0.9, "model": "m",
        "exact_groups": [[p("square", "000.png"), p("square", "000_copy.png")]],
        "near_groups": [{"paths": [p("circle", "000_q40.jpg"), p("circle", "000.png"), p("circle", "000_small.png")],
                         "min_similarity": 0.95, "max_similarity": 0.99, "pairs": [[0, 1, 0.99], [1, 2, 0.95]]}]}))
    proc, url = spawn_server(index, "--duplicates", str(tmp_path / "d"), "--move_to", str(tmp_path / "q"),
                             env={"ZOO_TOKEN": TOKEN})
    yield images, url, tmp_path / "q"
    proc.terminate()
    proc.wait(timeout=30)


def test_review_change_keep_move_and_undo_in_the_page(server):
    images, url, quarantine = server
    before = snapshot(images)
    with browser_page() as (sync_api, page, errors):
        expect = sync_api.expect
        page.goto(url + "/#review")
        page.fill("#token", TOKEN)  # the server has a token: the page asks for it once
        page.click("#token-bar button")
        group = page.locator('.review-group[data-group="1"]')
        expect(group.locator(".member")).to_have_count(3)
        expect(page.locator("#review-page")).to_have_text("groups 1–2 of 2")
        expect(group.locator(".keep-reasons")).to_contain_text("keep 000.png: most pixels")
        expect(group.locator(".pairs")).to_have_text("pair scores: 1–2 0.990 · 2–3 0.950")
        expect(group.locator(".member").nth(0).locator(".fact-format")).to_have_text("JPEG")
        expect(group.locator(".member").nth(1)).to_have_class("member kept")
        # a zoomed view of a member
        group.locator(".member").nth(2).locator("img").click()
        expect(page.locator("#zoom")).to_be_visible()
        expect(page.locator("#zoom-caption")).to_have_text(str(images / "circle" / "000_small.png"))
        page.click("#zoom")
        expect(page.locator("#zoom")).to_be_hidden()
        # keep the small one instead, then move the two others
        small = group.locator(f'.member[data-path="{images / "circle" / "000_small.png"}"]')
        small.locator(".keep-choice").check()
        group.locator(".all-but-one").click()
        expect(group.locator(".member.to-move")).to_have_count(2)
        expect(small).to_have_class("member kept")
        page.click("#review-plan")
        expect(page.locator("#review-summary")).to_contain_text("Dry run: 2 file(s)")
        assert snapshot(images) == before  # the dry run moved nothing
        page.click("#review-move")
        expect(page.locator("#review-summary")).to_contain_text("Moved 2 file(s)")
        assert not (images / "circle" / "000.png").exists() and not (images / "circle" / "000_q40.jpg").exists()
        assert (images / "circle" / "000_small.png").read_bytes() == before["circle/000_small.png"]
        moved = sorted(p.relative_to(quarantine).as_posix().split("/", 1)[1] for p in quarantine.rglob("*.*")
                       if p.suffix != ".json")
        assert moved == ["circle/000.png", "circle/000_q40.jpg"]
        expect(group.locator(".badge.gone")).to_have_count(2)  # the page shows them gone
        # undo the batch: every file back, byte for byte
        page.locator(".batch .undo").first.click()
        expect(page.locator("#review-summary")).to_contain_text("Restored 2 file(s)")
        assert snapshot(images) == before
        expect(group.locator(".badge.gone")).to_have_count(0)
        assert not errors, errors
