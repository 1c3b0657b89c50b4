"""Fingerprint of zsris's outputs on refcoco-mini images, to prove a refactor changed nothing.

    python scripts/output_fingerprint.py --data ../shared/data/refcoco-mini --out before.json
    (change the code)
    python scripts/output_fingerprint.py --data ../shared/data/refcoco-mini --out after.json
    cmp before.json after.json

Runs the real command line (`zsris segment` with five model configurations, `zsris batch` on a
manifest with COCO export, and `zsris eval`) and the HTTP API's answers (`POST /api/segment`, in
this process) with random weights, and records every mask (COCO RLE), score, box, ranking and
noun phrase exactly (floats by ``repr``); settings are left out, since their layout may change
(and so is the hash of them that names each `zsris segment` record, and the records' ``files``,
which carry it), and so is the API's ``elapsed_s``, a time.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

EXPRESSIONS = ["the man on the left", "white cup next to the laptop", "the biggest elephant in the middle",
               "the second person from the right"]
CONFIGS = {
    "vit-b32": ["--backbone", "ViT-B/32", "--max-proposals", "40"],
    "rn50-normalized-clip": ["--backbone", "RN50", "--fusion", "normalized", "--preprocess", "clip",
                             "--max-proposals", "25"],
    "vit-b16-alpha-k": ["--backbone", "ViT-B/16", "--alpha", "0.5", "-k", "2", "--beta", "0.3",
                        "--max-proposals", "20", "--batch-size", "7"],
    "vit-b32-decisions": ["--max-proposals", "30", "--spatial", "on", "--multi-target", "--multi-target-margin",
                          "0.02", "--top-k", "7"],
    "vit-b32-threshold": ["--max-proposals", "30", "--no-target-threshold", "0.25", "--top-k", "2"],
}
IMAGES = {"vit-b32": 6, "rn50-normalized-clip": 2, "vit-b16-alpha-k": 1, "vit-b32-decisions": 2, "vit-b32-threshold": 2}


def zsris(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "zsris.cli", *args, "--weights", "random"], check=True,
                   stdout=subprocess.DEVNULL)


def _untagged(file_name: str) -> str:
    """A record's file name without its run tag (``IMAGE--EXPRESSION--TAG.json``): the tag is a hash
    of the settings, which are left out for the same reason."""
    stem, _, tag = file_name.removesuffix(".json").rpartition("--")
    return f"{stem}.json" if stem and len(tag) == 8 else file_name


def segment_outputs(images: list[Path], work: Path) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for name, flags in CONFIGS.items():
        for image in images[: IMAGES[name]]:
            out = work / name / image.stem
            zsris("segment", str(image), *EXPRESSIONS, "-o", str(out), *flags)
            for record_path in sorted(out.glob("*.json")):
                record = json.loads(record_path.read_text())
                record.pop("settings")
                record.pop("files", None)  # named with the settings' hash, as the file itself
                found[f"{name}/{_untagged(record_path.name)}"] = {k: repr(v) if isinstance(v, float) else v
                                                                  for k, v in record.items()}
    return found


def _exact(value):
    """``value`` with every float written by ``repr`` (nested lists and dicts too)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return [_exact(v) for v in value]
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items() if k not in ("settings", "elapsed_s", "files")}
    return value


def batch_outputs(images: list[Path], work: Path) -> dict[str, list]:
    """A manifest batch (two expressions per image, a bad row, COCO export) with and without workers."""
    manifest = work / "pairs.jsonl"
    rows = [{"image": str(image), "expression": expression} for image in images[:3] for expression in EXPRESSIONS[:2]]
    rows.append({"image": str(images[0])})
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    found: dict[str, list] = {}
    for workers in ("0", "2"):
        out = work / f"batch-{workers}"
        subprocess.run([sys.executable, "-m", "zsris.cli", "batch", str(manifest), "-o", str(out), "--format", "coco",
                        "--top-k", "3", "--max-proposals", "30", "--proposal-workers", workers, "--weights", "random"],
                       stdout=subprocess.DEVNULL)
        for name in ("results.jsonl", "errors.jsonl"):
            found[f"{workers}/{name}"] = [_exact(json.loads(line)) for line in (out / name).read_text().splitlines()]
        found[f"{workers}/coco_results.json"] = _exact(json.loads((out / "coco_results.json").read_text()))
        found[f"{workers}/coco_images.json"] = _exact(json.loads((out / "coco_images.json").read_text()))
    return found


def eval_outputs(data: Path, work: Path) -> list:
    zsris("eval", "--data", str(data), "--dataset", "refcoco", "--split", "train", "--limit", "4", "--no-cache",
          "--max-proposals", "30", "--out", str(work / "eval"))
    with sqlite3.connect(work / "eval" / "predictions.sqlite") as db:
        rows = db.execute("SELECT * FROM predictions ORDER BY 1").fetchall()
    return [[repr(v) if isinstance(v, float) else v for v in row] for row in rows]


def service_outputs(images: list[Path]) -> dict[str, dict]:
    """The API's JSON answers for two images, as `zsris serve` gives them."""
    import warnings

    from fastapi.testclient import TestClient

    from zsris import create_segmenter
    from zsris.service import SegmentationService, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = create_segmenter(weights="random", max_proposals=30)
    found = {}
    with TestClient(create_app(SegmentationService(segmenter))) as client:
        for image in images[:2]:
            answer = client.post("/api/segment", files={"image": (image.name, image.read_bytes(), "image/jpeg")},
                                 data={"expressions": EXPRESSIONS, "top_k": "3"})
            found[image.name] = {"status": answer.status_code, **_exact(answer.json())}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="refcoco-mini folder")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    images = sorted((args.data / "images" / "train2014").glob("*.jpg"))[:6]
    with tempfile.TemporaryDirectory() as work:
        fingerprint = {"segment": segment_outputs(images, Path(work)), "batch": batch_outputs(images, Path(work)),
                       "eval": eval_outputs(args.data, Path(work)), "service": service_outputs(images)}
    args.out.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
    print(f"wrote {args.out}: {len(fingerprint['segment'])} segment records, "
          f"{sum(len(v) for v in fingerprint['batch'].values())} batch entries, {len(fingerprint['eval'])} eval rows, "
          f"{len(fingerprint['service'])} API answers")


if __name__ == "__main__":
    main()
