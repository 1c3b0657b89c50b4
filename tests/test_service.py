"""`zsris serve` on loopback: the JSON API (correct, malformed, concurrent) and the page in Chromium."""
from __future__ import annotations

import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from zsris.masks import decode_rle

from conftest import Server

pytestmark = pytest.mark.slow  # every test here starts a server (one a browser too)

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "zsris" / "examples" / "shapes.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(["--max-proposals", "6", "--max-request-mb", "2", "--method", "global-local,cropping"],
                     tmp_path_factory.mktemp("serve") / "serve.log")
    yield running.url
    running.stop()


def _png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _segment(url, image: bytes, expressions, name="image.png", **fields):
    data = {"expressions": expressions, **{k: str(v) for k, v in fields.items()}}
    return httpx.post(f"{url}/api/segment", files={"image": (name, image, "image/png")}, data=data, timeout=300)


def test_health_and_binding(server):
    body = httpx.get(f"{server}/api/health").json()
    assert body["status"] == "ok" and body["random_weights"] is True
    assert server.startswith("http://127.0.0.1:")


def test_segment_request(server):
    response = _segment(server, EXAMPLE.read_bytes(), ["the red circle", "the blue square"], top_k=2)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["expression"] for r in results] == ["the red circle", "the blue square"]
    for record in results:
        mask = decode_rle(record["mask"])
        assert mask.shape == (320, 480) and mask.any()
        assert record["image_size"] == [320, 480] and len(record["top_proposals"]) == 2
        x1, y1, x2, y2 = record["box"]
        ys, xs = np.nonzero(mask)
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_each_request_chooses_among_the_servers_methods(server):
    """The server loaded two methods over one generator: the first answers by default, the other
    when named, and a method it did not load is a 422 that names those it has."""
    assert httpx.get(f"{server}/api/health").json()["methods"] == ["global-local", "cropping"]
    image = EXAMPLE.read_bytes()
    default = _segment(server, image, ["the red circle"]).json()
    cropping = _segment(server, image, ["the red circle"], method="cropping").json()
    assert default["settings"]["method"]["name"] == "global-local"
    assert cropping["settings"]["method"]["name"] == "cropping"
    ours, theirs = default["results"][0]["top_proposals"], cropping["results"][0]["top_proposals"]
    assert theirs[0]["global_score"] is None and ours[0]["global_score"] is not None
    local_of = {p["index"]: p["local_score"] for p in ours}  # cropping ranks by the paper's local score
    assert all(abs(p["score"] - local_of[p["index"]]) < 1e-5 for p in theirs if p["index"] in local_of)
    wrong = _segment(server, image, ["the red circle"], method="grad-cam")
    assert wrong.status_code == 422 and "global-local, cropping" in wrong.json()["detail"]


def test_a_request_changes_the_servers_settings_within_its_limits(server):
    """#37: the settings the page sends go through the API alike: the generator (one the server
    loaded), fewer proposals, spatial words, the no-target threshold and multi-target; the time."""
    health = httpx.get(f"{server}/api/health").json()
    assert health["proposals"] == {"classical": 6}
    image = EXAMPLE.read_bytes()
    answer = _segment(server, image, ["the red circle", "the blue square"], max_proposals=2, spatial="true",
                      no_target_threshold=1, multi_target="true", multi_target_margin=0.5)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [r["found"] for r in body["results"]] == [False, False] and body["elapsed_s"] > 0
    used = body["settings"]
    assert used["proposals"]["max_proposals"] == 2 and used["spatial"] == "on" and used["multi_target"] is True
    assert _segment(server, image, ["x"], max_proposals=50).json()["settings"]["proposals"]["max_proposals"] == 6
    wrong = _segment(server, image, ["x"], proposals="sam")
    assert wrong.status_code == 422 and "it has classical" in wrong.json()["detail"]
    assert _segment(server, image, ["x"], no_target_threshold=1.5).status_code == 422


def test_the_endpoint_says_it_takes_post(server):
    response = httpx.get(f"{server}/api/segment")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_malformed_requests(server):
    no_image = httpx.post(f"{server}/api/segment", data={"expressions": ["x"]}, timeout=60)
    assert no_image.status_code == 422
    garbage = _segment(server, b"not an image at all", ["x"], name="x.jpg")
    assert garbage.status_code == 400 and "not an image file" in garbage.json()["detail"]
    truncated = _segment(server, EXAMPLE.read_bytes()[:2000], ["x"])
    assert truncated.status_code == 400 and "truncated" in truncated.json()["detail"]
    empty = _segment(server, EXAMPLE.read_bytes(), ["   "])
    assert empty.status_code == 422 and "non-empty expression" in empty.json()["detail"]
    overlong = _segment(server, EXAMPLE.read_bytes(), ["the dog", "dog " * 250_000])  # spaCy would fail at 1e6
    assert overlong.status_code == 422 and "over the limit of 4,000" in overlong.json()["detail"]
    bad_k = _segment(server, EXAMPLE.read_bytes(), ["x"], top_k=0)
    assert bad_k.status_code == 422
    too_big = _segment(server, b"\0" * (3 * 1024 * 1024), ["x"])
    assert too_big.status_code == 413 and "over the limit" in too_big.json()["detail"]
    buffer = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buffer, format="PNG")  # small file, 48 MP image
    huge = _segment(server, buffer.getvalue(), ["x"])
    assert huge.status_code == 413 and "over the limit" in huge.json()["detail"]


def test_concurrent_load_answers_each_request(server):
    """24 requests from 8 clients: every answer is correct and belongs to its own request."""
    def one(i: int):
        width, height = 48 + 4 * i, 40 + 2 * (i % 7)
        response = _segment(server, _png(width, height, i), [f"object number {i}"])
        return i, width, height, response

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(24)))
    for i, width, height, response in answers:
        assert response.status_code == 200, response.text
        record = response.json()["results"][0]
        assert record["expression"] == f"object number {i}"
        assert record["image_size"] == [height, width]
        assert decode_rle(record["mask"]).shape == (height, width)
    assert httpx.get(f"{server}/api/health").status_code == 200


def test_openapi_schema(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    operation = schema["paths"]["/api/segment"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    documented = json.loads((Path(__file__).resolve().parents[1] / "docs" / "openapi.json").read_text())
    assert documented["paths"] == schema["paths"], "docs/openapi.json is stale: regenerate it (see README)"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_in_headless_chromium(server, real_image_path, tmp_path):
    """Two expressions on a real photo: one overlay with a legend entry each, a tab each with its
    own mask, ranking and explanation, downloads named after them; then the errors."""
    from playwright.sync_api import sync_playwright

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(real_image_path.read_bytes()[:3000])
    expressions = ["the elephant on the left", "the baby elephant"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(server + "/", wait_until="load")
        page.wait_for_selector("#zsris-submit", timeout=60_000)
        assert "the red circle on the left\nthe blue square" in page.inner_text("#zsris-examples")  # one per line
        assert page.locator("#zsris-method").is_visible()  # the server has two methods: the page offers both
        page.set_input_files("#zsris-image input[type=file]", str(real_image_path))
        page.wait_for_selector("#zsris-image img", timeout=60_000)
        page.fill("#zsris-expressions textarea", "\n".join(expressions))
        page.click("#zsris-submit")
        page.wait_for_function("document.querySelector('#zsris-status').innerText.includes('Segmented 2')",
                               timeout=120_000)
        page.wait_for_selector("#zsris-tabs", timeout=60_000)
        page.screenshot(path=str(tmp_path / "two-expressions.png"), full_page=True)
        legend = page.inner_text("#zsris-overlay")
        assert all(f"{n}. {e}" in legend for n, e in enumerate(expressions, start=1)), legend
        tabs = page.locator("#zsris-tabs button[role=tab]")
        assert [tabs.nth(i).inner_text() for i in range(tabs.count())] == ["1. the elephant on the left",
                                                                             "2. the baby elephant"]
        for number, expression in enumerate(expressions, start=1):
            tabs.nth(number - 1).click()
            panel = page.locator(f"#zsris-tab-{number}")
            panel.wait_for(state="visible", timeout=30_000)
            assert expression in panel.inner_text() and "fused score" in panel.inner_text()
            assert panel.locator("img").count() >= 2  # its mask and its ranked proposals
        downloads = page.inner_text("#zsris-files").replace("\n.", ".")  # the page breaks names before the suffix
        for name in ("the-elephant-on-the-left.mask.png", "the-elephant-on-the-left.json",
                     "the-baby-elephant.mask.png", "the-baby-elephant.json"):
            assert name in downloads, downloads
        page.set_input_files("#zsris-image input[type=file]", str(EXAMPLE))  # a second image replaces the first
        page.wait_for_function("document.querySelector('#zsris-image img') && "
                               "document.querySelector('#zsris-image img').src.includes('shapes')", timeout=60_000)
        page.reload(wait_until="load")
        page.wait_for_selector("#zsris-submit", timeout=60_000)
        page.fill("#zsris-expressions textarea", "the elephant on the left")
        page.set_input_files("#zsris-image input[type=file]", str(corrupt))
        page.wait_for_function("document.querySelector('#zsris-status').innerText.includes('truncated')",
                               timeout=60_000)
        page.click("#zsris-submit")
        page.wait_for_function("document.querySelector('#zsris-status').innerText.includes('Error')",
                               timeout=60_000)
        assert "truncated" in page.inner_text("#zsris-status")
        page.reload(wait_until="load")
        page.wait_for_selector("#zsris-submit", timeout=60_000)
        page.set_input_files("#zsris-image input[type=file]", str(real_image_path))
        page.wait_for_selector("#zsris-image img", timeout=60_000)
        page.fill("#zsris-expressions textarea", "   ")
        page.click("#zsris-submit")
        page.wait_for_function("document.querySelector('#zsris-status').innerText.includes('non-empty expression')",
                               timeout=60_000)
        browser.close()


def _absent(selector: str) -> str:
    """A page condition: no element matches ``selector``."""
    return f"!document.querySelector({selector!r})"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_settings_clear_examples_and_a_wide_image(server, tmp_path):
    """#37: the settings the server allows, the time and the combined download with the answers,
    a 4000 x 300 panorama shown readable (not fitted into a strip), an example that clears the
    last answers, a threshold that answers 'no such object', and Clear."""
    from playwright.sync_api import sync_playwright

    wide = tmp_path / "panorama.png"
    Image.fromarray(np.tile(np.asarray(Image.open(EXAMPLE).convert("RGB").resize((500, 300))), (1, 8, 1))).save(wide)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(server + "/", wait_until="load")
        page.wait_for_selector("#zsris-submit", timeout=60_000)
        assert page.locator("#zsris-max-proposals").is_visible() and page.locator("#zsris-spatial").is_visible()
        assert not page.locator("#zsris-proposals").is_visible()  # one generator: no menu
        page.set_input_files("#zsris-image input[type=file]", str(wide))
        page.wait_for_selector("#zsris-image img", timeout=60_000)
        page.fill("#zsris-expressions textarea", "the red circle\nthe blue square")
        page.click("#zsris-submit")
        page.wait_for_function("document.querySelector('#zsris-elapsed').innerText.includes('Answered in')",
                               timeout=300_000)
        page.wait_for_function("(i => i && i.complete && i.naturalWidth > 0)"
                               "(document.querySelector('#zsris-overlay img.base-image'))", timeout=60_000)
        shown = page.locator("#zsris-overlay img.base-image").bounding_box()
        assert shown["height"] >= 250 and shown["width"] > 3000, shown  # its own height, scrolled sideways
        assert "all-expressions.labels.png" in page.inner_text("#zsris-files").replace("\n.", ".")
        page.click("#zsris-examples tbody tr")  # the bundled example: the panorama's answers go
        page.wait_for_function(_absent("#zsris-overlay img.base-image") + " && " + _absent("#zsris-tabs") + " && "
                               + "document.querySelector('#zsris-elapsed').innerText.trim() === ''", timeout=30_000)
        assert "the blue square" in page.input_value("#zsris-expressions textarea")
        page.fill("#zsris-threshold input[type=number]", "1")
        page.press("#zsris-threshold input[type=number]", "Enter")
        page.click("#zsris-submit")
        page.wait_for_function("document.querySelector('#zsris-status').innerText.includes('No such object')",
                               timeout=300_000)
        page.click("#zsris-clear")
        page.wait_for_function(" && ".join(_absent(s) for s in ("#zsris-image img", "#zsris-overlay img.base-image",
                                                                "#zsris-tabs", "#zsris-files a")), timeout=30_000)
        assert page.input_value("#zsris-expressions textarea") == "" and page.inner_text("#zsris-status").strip() == ""
        browser.close()
