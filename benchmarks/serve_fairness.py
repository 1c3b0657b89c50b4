"""How long a small `zsris serve` request waits behind the largest one the server accepts.

    python benchmarks/serve_fairness.py [--max-proposals 100]

Starts the real server on the loopback address (random CLIP weights, classical proposals),
then: the bundled example image alone (the baseline, in the same run); then a 16 MP image (the
service's default pixel limit) with a 4,000-character expression (its expression limit), and
the small request one second after it. Prints each latency and the small request's ratio
against its baseline.
"""
from __future__ import annotations

import argparse
import io
import threading
import time

import numpy as np
from PIL import Image

from serve_memory import REPO, start_server


def _giant_image(side: int) -> bytes:
    """A side x side photo-like image (smooth shapes and noise: proposals have work to do)."""
    rng = np.random.default_rng(0)
    small = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(small).resize((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-proposals", type=int, default=100)
    args = parser.parse_args()
    import httpx

    server, url = start_server("serve_fairness.py", "--max-proposals", str(args.max_proposals))
    try:
        small = (REPO / "src" / "zsris" / "examples" / "shapes.png").read_bytes()
        giant = _giant_image(4000)

        def post(image: bytes, name: str, expression: str, times: dict, key: str) -> None:
            start = time.perf_counter()
            response = httpx.post(f"{url}/api/segment", files={"image": (name, image, "image/jpeg")},
                                  data={"expressions": [expression]}, timeout=600)
            times[key] = (time.perf_counter() - start, response.status_code)

        times: dict = {}
        post(small, "shapes.png", "the red circle", times, "warm-up")
        post(small, "shapes.png", "the red circle", times, "small alone")
        long_text = ("the large rounded object near the left edge beside the other things " * 60)[:4000]
        big = threading.Thread(target=post, args=(giant, "giant.jpg", long_text, times, "giant"))
        big.start()
        time.sleep(1.0)
        post(small, "shapes.png", "the red circle", times, "small behind the giant")
        big.join()
        for key in ("small alone", "giant", "small behind the giant"):
            seconds, status = times[key]
            print(f"{key:<24} {seconds:7.2f} s  (HTTP {status})")
        ratio = times["small behind the giant"][0] / times["small alone"][0]
        waited = times["small behind the giant"][0] - times["small alone"][0]
        print(f"\nthe small request behind a 16 MP, 4,000-character one: x{ratio:.1f} its time alone "
              f"({waited:.1f} s of waiting)")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
