"""Make docs/serve.png: the `zoo serve` page with a search result, in headless Chromium.

    python docs/serve_screenshot.py --index food7.index --query ../shared/data/food7/satay/010.jpg

Needs Playwright (`pip install playwright`) and a Chromium binary (Debian: apt-get install chromium);
no browser download.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from zoo.io import atomic_path
from zoo.serve.server import spawn_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--query", required=True, help="image to search with")
    ap.add_argument("--out", default=str(Path(__file__).with_name("serve.png")))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--view", default="search", choices=["search", "compare", "duplicates"])
    ap.add_argument("--serve-args", nargs="*", default=[], help="extra `zoo serve` options")
    args = ap.parse_args()
    proc, url = spawn_server(args.index, *args.serve_args)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)  # wait_for_function evals
            page.goto(url + "/#" + args.view)
            if args.view == "search":
                page.set_input_files("#query-file", args.query)
                page.wait_for_selector("#results .result")
            elif args.view == "compare":
                page.set_input_files("#compare-file-a", args.query)
                page.set_input_files("#compare-file-b", args.query)
                page.wait_for_function("document.querySelector('#compare-score').textContent !== '–'")
            else:
                page.wait_for_selector("#dup-groups .group")
            page.wait_for_function(  # the images in view (the others load lazily)
                "[...document.images].every((i) => i.complete || i.getBoundingClientRect().top > innerHeight)")
            png = page.screenshot()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # a 256-colour palette keeps the picture small in the repository
    im = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    with atomic_path(args.out) as tmp:
        im.save(tmp, format="PNG", optimize=True)
    print(f"screenshot -> {args.out}")


if __name__ == "__main__":
    main()
