"""Seconds per image of `zsris batch` against `zsris eval` on the same images, sentences and
settings, both run through the real command line in this process.

    python benchmarks/batch_throughput.py [--images 40] [--proposals 30] [--rounds 2]

The manifest holds every sentence of the first ``--images`` images of refcoco-mini's train
split (ids: the sentence ids), so both commands do the same visual work; eval also computes
its metrics, batch writes JSONL and its store. Figures are the engines' own end-to-end seconds
per image (model loading excluded) and the whole command's wall time. The order of the two
alternates between rounds, so that neither always finds the page cache warm.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from common import add_data_flag, require_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from refcoco_manifest import manifest_rows
from zsris.cli import main


def _run(argv: list[str]) -> tuple[float, float]:
    """(engine seconds/image end to end, whole command seconds) of one CLI run."""
    printed = io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    wall = time.perf_counter() - began
    if code != 0:
        sys.exit(f"{argv[0]} exited with {code}:\n{printed.getvalue()[-2000:]}")
    found = re.search(r"seconds/image \(end to end\)\s*\|\s*([\d.]+)", printed.getvalue())
    return float(found.group(1)), wall


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flag(parser)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--proposals", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--proposal-workers", default=None, help="(default: the commands' default)")
    args = parser.parse_args()
    data = require_data(args.data)
    rows = _first_images(manifest_rows(data, "train", 10**9), args.images)
    common = ["--weights", "random", "--max-proposals", str(args.proposals)]
    if args.proposal_workers is not None:
        common += ["--proposal-workers", args.proposal_workers]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        manifest = folder / "pairs.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        eval_args = ["eval", "--data", str(data), "--dataset", "refcoco", "--split", "train", "--limit",
                     str(args.images), "--no-cache", "--alpha", "0.95", *common]
        figures: dict[str, list[tuple[float, float]]] = {"eval": [], "batch": []}
        for number in range(args.rounds):
            order = ("eval", "batch") if number % 2 == 0 else ("batch", "eval")
            for name in order:
                out = str(folder / f"{name}-{number}")
                argv = eval_args + ["--out", out] if name == "eval" else ["batch", str(manifest), "-o", out, *common]
                figures[name].append(_run(argv))
    print(f"{len(rows)} pairs over {args.images} images, ViT-B/32 (random weights), {args.proposals} proposals, "
          f"device: CPU ({args.rounds} rounds, order alternating)")
    print(f"{'command':8} {'s/image (engine, each round)':32} {'mean':>6} {'whole command, s':>18}")
    means = {}
    for name, values in figures.items():
        per_image = [v[0] for v in values]
        means[name] = sum(per_image) / len(per_image)
        print(f"{name:8} {', '.join(f'{v:.3f}' for v in per_image):32} {means[name]:6.3f} "
              f"{', '.join(f'{v[1]:.1f}' for v in values):>18}")
    print(f"batch / eval, seconds per image (CPU): {means['batch'] / means['eval']:.3f}")


def _first_images(rows: list[dict], images: int) -> list[dict]:
    """The rows of the first ``images`` images (those that eval's --limit takes)."""
    chosen: dict[str, None] = {}
    for row in rows:
        if len(chosen) == images and row["image"] not in chosen:
            break
        chosen.setdefault(row["image"])
    return [row for row in rows if row["image"] in chosen]


if __name__ == "__main__":
    main_()
