"""`zsris serve` against hostile clients: decompression bombs, file paths named by the client,
oversized page uploads, leftover files and server paths in messages. A real server on loopback,
with its own temporary folder so that what it leaves behind can be counted."""
from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import Server

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "zsris" / "examples" / "shapes.png"
TTL = 2
#: The page's settings after image, expressions and top-k (one method, one generator: no menus):
#: max proposals, spatial words, no-target threshold (-1: always answer), multi-target and its margin.
RUN_SETTINGS = [4, False, -1, False, 0.01]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int, one_bit: bool = False) -> bytes:
    """A valid all-black PNG of ``width x height``, written row by row: a few hundred KB on disk,
    gigabytes once decoded (and built here without ever holding the pixels)."""
    header = struct.pack(">IIBBBBB", width, height, 1 if one_bit else 8, 0 if one_bit else 2, 0, 0, 0)
    row = b"\0" * (1 + ((width + 7) // 8 if one_bit else 3 * width))  # filter byte + pixels
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"13000x13000 RGB": bomb_png(13000, 13000), "30000x30000 1-bit": bomb_png(30000, 30000, one_bit=True)}


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardened")
    temp = root / "tmp"
    temp.mkdir()
    server = Server(["--max-proposals", "4", "--max-request-mb", "2", "--file-ttl", str(TTL)], root / "serve.log",
                    env={"TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(temp / "gradio")})
    server.temp = temp
    yield server
    server.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _call(server: Server, api_name: str, data: list) -> tuple[str, str]:
    """Call a page event through Gradio's HTTP API; ``(event, data)`` of its last message."""
    started = httpx.post(f"{server.url}/gradio_api/call/{api_name}", json={"data": data}, timeout=60)
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    stream = httpx.get(f"{server.url}/gradio_api/call/{api_name}/{event_id}", timeout=300).text
    events = [line[len("event: "):] for line in stream.splitlines() if line.startswith("event: ")]
    payloads = [line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], payloads[-1]


def _upload(server: Server, name: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/gradio_api/upload", files={"files": (name, content, "image/png")}, timeout=60)


def _file_data(path: str, name: str = "image.png") -> dict:
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_pngs_are_small_files_of_huge_images(bombs):
    for data in bombs.values():
        assert len(data) < 1_000_000
    with Image.open(io.BytesIO(bombs["13000x13000 RGB"])) as image:
        assert image.size == (13000, 13000) and image.mode == "RGB"


@pytest.mark.slow
def test_parallel_bomb_uploads_get_413_and_no_memory(hardened, bombs):
    """5 parallel uploads of each bomb: every one refused from its header, RSS flat (< 200 MB)."""
    assert httpx.post(f"{hardened.url}/api/segment", files={"image": ("s.png", EXAMPLE.read_bytes())},
                      data={"expressions": ["the red circle"]}, timeout=300).status_code == 200  # warm
    pid = hardened.process.pid
    baseline = _rss_kb(pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kb(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for name, data in bombs.items():
            def one(i: int, data=data):
                return httpx.post(f"{hardened.url}/api/segment", files={"image": (f"bomb{i}.png", data, "image/png")},
                                  data={"expressions": ["x"]}, timeout=120)

            with ThreadPoolExecutor(max_workers=5) as pool:
                answers = list(pool.map(one, range(5)))
            for answer in answers:
                assert answer.status_code == 413, (name, answer.text)
                assert "over the limit" in answer.json()["detail"]
    finally:
        done.set()
        sampler.join()
    grown_mb = (peak[0] - baseline) / 1024
    assert grown_mb < 200, f"server RSS grew by {grown_mb:.0f} MB under bomb uploads"


def test_page_reads_back_only_its_own_uploads(hardened, tmp_path):
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((12, 16, 3), 200, np.uint8)).save(secret)
    for api_name, data in (("show_preview", [_file_data(str(secret))]),
                           ("run", [_file_data(str(secret)), "the thing", 3, *RUN_SETTINGS])):
        event, payload = _call(hardened, api_name, data)
        assert event == "error" or "Error" in payload, (api_name, event, payload)
        assert "secret" not in payload and str(tmp_path) not in payload
    served = httpx.get(f"{hardened.url}/gradio_api/file={secret}", timeout=30)
    assert served.status_code in (403, 404)


@pytest.mark.slow
def test_page_upload_limit_and_messages_without_server_paths(hardened):
    too_big = _upload(hardened, "big.png", b"\0" * (3 * 1024 * 1024))
    assert too_big.status_code == 413
    uploaded = _upload(hardened, "corrupt.png", EXAMPLE.read_bytes()[:1500])
    assert uploaded.status_code == 200, uploaded.text
    path = uploaded.json()[0]
    event, payload = _call(hardened, "show_preview", [_file_data(path, "corrupt.png")])
    assert event == "complete" and "corrupt.png" in payload and "truncated" in payload
    assert str(hardened.temp) not in payload.replace("\\/", "/")


@pytest.mark.slow
def test_page_files_are_deleted_after_their_ttl_and_at_exit(hardened):
    # not the bundled example's bytes: Gradio keeps its cached copy of an example for good
    photo = io.BytesIO()
    Image.fromarray(np.asarray(Image.open(EXAMPLE).convert("RGB"))[::-1].copy()).save(photo, format="PNG")
    uploaded = _upload(hardened, "upside-down.png", photo.getvalue())
    path = Path(uploaded.json()[0])
    event, payload = _call(hardened, "run",
                           [_file_data(str(path), "upside-down.png"), "the red circle", 2, *RUN_SETTINGS])
    assert event == "complete" and "Segmented 1" in payload, payload
    outputs = list(hardened.temp.glob("zsris-serve-*/*/*"))
    assert path.is_file() and len(outputs) == 2  # the mask PNG and the JSON record of this request
    assert sorted(p.name for p in outputs) == ["the-red-circle.json", "the-red-circle.mask.png"]
    time.sleep(TTL + 3)
    assert not path.exists(), "the upload outlived --file-ttl"
    again = _upload(hardened, "upside-down.png", photo.getvalue()).json()[0]
    event, _ = _call(hardened, "run",  # prunes the old
                     [_file_data(again, "upside-down.png"), "the blue square", 2, *RUN_SETTINGS])
    assert event == "complete"
    assert all(not p.exists() for p in outputs)
    hardened.stop()
    assert list(hardened.temp.glob("zsris-*")) == []
    assert not json.dumps([str(p) for p in hardened.temp.glob("gradio/**/*") if p.is_file()]).count("upside-down")


def test_a_chunked_upload_is_refused_once_it_passes_the_limit(tiny_vit):
    """#38: a body without a Content-Length was read whole (300 MB into a temporary file) before the
    413. The app is driven as a server drives it, counting the body chunks it pulls."""
    import asyncio

    from zsris.proposals import ClassicalProposals
    from zsris.segmenter import Segmenter
    from zsris.service import SegmentationService, create_app

    service = SegmentationService(Segmenter(tiny_vit, ClassicalProposals(max_proposals=2)), max_request_bytes=1 << 20)
    head = (b'--b\r\nContent-Disposition: form-data; name="expressions"\r\n\r\nx\r\n'
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n')
    chunks = [head, *[b"\0" * (1 << 19)] * 64, b"\r\n--b--\r\n"]  # 32 MB in 512 kB chunks
    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        if len(pulled) > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[len(pulled) - 1], "more_body": len(pulled) < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/segment", "raw_path": b"/api/segment", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"multipart/form-data; boundary=b"),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(create_app(service)(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert len(pulled) <= 4  # about the limit read, not the 32 MB
