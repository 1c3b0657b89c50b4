"""Memory of `zsris serve` under requests with new sentences: does it stay flat once the text
caches are full?

    python benchmarks/serve_memory.py --requests 300 --text-cache 64

Starts the real server on the loopback address (random CLIP weights, classical proposals, few of
them), posts the bundled example image with two sentences never seen before per request, and
prints the server's resident memory (VmRSS) every ``--every`` requests: after the caches have
filled (``--text-cache`` entries each), it should not grow with the requests. The baseline in
the same run is the memory after the first ``--every`` requests.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("red", "blue", "green", "small", "large", "round", "square", "left", "right", "top", "bottom", "shiny")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(name: str, *flags: str) -> tuple[subprocess.Popen, str]:
    """`zsris serve` (random weights, ``flags``) on a free loopback port, and its URL, once its
    health check answers; the script ``name`` exits with one line if it never does."""
    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "zsris.cli", "serve", "--port", str(port), "--weights", "random",
                               *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline or server.poll() is not None:
            server.kill()
            sys.exit(f"{name}: the server did not start")
        time.sleep(0.5)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _sentence(number: int, which: int) -> str:
    """A sentence no other request sends: number written out in words drawn from WORDS."""
    digits = [WORDS[int(d)] for d in f"{number:04d}"]
    return f"the {' '.join(digits)} shape number {which}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--every", type=int, default=25, help="measure every N requests")
    parser.add_argument("--text-cache", type=int, default=64)
    parser.add_argument("--max-proposals", type=int, default=3)
    args = parser.parse_args()
    import httpx

    server, url = start_server("serve_memory.py", "--max-proposals", str(args.max_proposals),
                               "--text-cache", str(args.text_cache))
    try:
        image = (REPO / "src" / "zsris" / "examples" / "shapes.png").read_bytes()
        print(f"server pid {server.pid}, text cache {args.text_cache} entries each (parser, text features); "
              f"RSS at start {_rss_mb(server.pid):.1f} MB")
        print(f"{'requests':>9} {'RSS MB':>8} {'vs first mark':>14} {'s/request':>10}")
        started, baseline = time.perf_counter(), None
        with httpx.Client(timeout=120) as client:
            for number in range(1, args.requests + 1):
                sentences = [_sentence(number, 1), _sentence(number, 2)]
                response = client.post(f"{url}/api/segment", files={"image": ("shapes.png", image, "image/png")},
                                       data={"expressions": sentences})
                response.raise_for_status()
                if number % args.every == 0:
                    rss = _rss_mb(server.pid)
                    baseline = baseline or rss
                    print(f"{number:>9} {rss:>8.1f} {rss / baseline:>13.3f}x "
                          f"{(time.perf_counter() - started) / number:>10.2f}", flush=True)
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
