"""Screenshots of the `zsris serve` page in Chromium, for docs/images/: empty, two expressions on
a photo, a very wide image (a 4000 x 300 panorama made of the photo) and an error (a truncated JPEG).

    python scripts/page_screenshots.py [--photo PATH] [--out docs/images]

Starts the real server on loopback (random CLIP weights, 6 classical proposals), drives the
page with Playwright and Debian's chromium, and writes serve-empty.png, serve-two-expressions.png,
serve-wide-image.png and serve-error.png. The photo defaults to a refcoco-mini image (see
tests/conftest.py).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from PIL import Image  # noqa: E402

from conftest import REFCOCO_MINI, Server  # noqa: E402

EXPRESSIONS = "the elephant on the left\nthe baby elephant"
NAMES = ("serve-empty.png", "serve-two-expressions.png", "serve-wide-image.png", "serve-error.png")


def panorama(photo: Path, target: Path, width: int = 4000, height: int = 300) -> None:
    """A ``width`` x ``height`` strip: the photo scaled to the height, repeated side by side."""
    with Image.open(photo) as image:
        tile = image.convert("RGB").resize((round(image.width * height / image.height), height))
    strip = Image.new("RGB", (width, height))
    for x in range(0, width, tile.width):
        strip.paste(tile, (x, 0))
    strip.save(target)


def answered(page, count: int) -> None:
    """Wait for a run's answers: the status line, the elapsed time and the tabs."""
    page.wait_for_function(f"document.querySelector('#zsris-status').innerText.includes('Segmented {count}') && "
                           "document.querySelector('#zsris-elapsed').innerText.includes('Answered in')",
                           timeout=300_000)
    page.wait_for_selector("#zsris-tabs", timeout=60_000)
    time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path,
                        default=REFCOCO_MINI / "images" / "train2014" / "COCO_train2014_000000000312.jpg")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    if not args.photo.is_file():
        print(f"page_screenshots.py: no photo at {args.photo} (give --photo PATH)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="zsris-shots-"))
    corrupt = work / "corrupt.jpg"
    corrupt.write_bytes(args.photo.read_bytes()[:3000])
    wide = work / "panorama.png"
    panorama(args.photo, wide)
    args.out.mkdir(parents=True, exist_ok=True)
    server = Server(["--max-proposals", "6"], work / "serve.log")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(server.url + "/", wait_until="load")
            page.wait_for_selector("#zsris-examples img", timeout=60_000)
            time.sleep(1)
            page.screenshot(path=str(args.out / "serve-empty.png"), full_page=True)
            page.set_input_files("#zsris-image input[type=file]", str(args.photo))
            page.wait_for_selector("#zsris-image img", timeout=60_000)
            page.fill("#zsris-expressions textarea", EXPRESSIONS)
            page.click("#zsris-submit")
            answered(page, 2)
            page.screenshot(path=str(args.out / "serve-two-expressions.png"), full_page=True)
            page.click("#zsris-clear")
            page.wait_for_function("!document.querySelector('#zsris-image img') && "  # the photo's tabs gone too
                                   "!document.querySelector('#zsris-tabs')", timeout=30_000)
            page.set_input_files("#zsris-image input[type=file]", str(wide))
            page.wait_for_selector("#zsris-image img", timeout=60_000)
            page.fill("#zsris-expressions textarea", EXPRESSIONS)
            page.click("#zsris-submit")
            answered(page, 2)
            page.screenshot(path=str(args.out / "serve-wide-image.png"), full_page=True)
            page.reload(wait_until="load")
            page.wait_for_selector("#zsris-submit", timeout=60_000)
            page.set_input_files("#zsris-image input[type=file]", str(corrupt))
            page.fill("#zsris-expressions textarea", "the elephant")
            page.click("#zsris-submit")
            page.wait_for_function("document.querySelector('#zsris-status').innerText.includes('Error')",
                                   timeout=60_000)
            time.sleep(1)
            page.screenshot(path=str(args.out / "serve-error.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    for name in NAMES:  # 256 colours: a page screenshot loses nothing, the file a third of its size
        with Image.open(args.out / name) as shot:
            shot.convert("RGB").quantize(256).save(args.out / name, optimize=True)
    print(f"wrote {', '.join(str(args.out / name) for name in NAMES)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
