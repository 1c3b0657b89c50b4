"""Write a `zsris batch` manifest (CSV: id, image, expression) from REFER data: every sentence of
a split's first images, with the sentence id as the pair id and absolute image paths.

    python scripts/refcoco_manifest.py --data ../shared/data/refcoco-mini --pairs 1000 -o pairs.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from zsris.datasets import ReferDataset

from common import add_data_flag, require_data


def manifest_rows(data: Path, split: str, pairs: int, dataset: str = "refcoco") -> list[dict[str, str]]:
    """Sentences of ``split``, whole images at a time, until at least ``pairs`` rows."""
    refer = ReferDataset(data, dataset)
    rows: list[dict[str, str]] = []
    for image_id, refs in refer.refs_by_image(split).items():
        if len(rows) >= pairs:
            break
        path = str(refer.image_path(image_id).resolve())
        rows += [{"id": str(s.sent_id), "image": path, "expression": s.text} for ref in refs for s in ref.sentences]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flag(parser)
    parser.add_argument("--split", default="train")
    parser.add_argument("--pairs", type=int, default=1000, help="at least this many rows (whole images)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    rows = manifest_rows(require_data(args.data), args.split, args.pairs)
    with open(args.out, "w", newline="") as stream:
        writer = csv.DictWriter(stream, ["id", "image", "expression"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"{args.out}: {len(rows)} pairs over {len({r['image'] for r in rows})} images")


if __name__ == "__main__":
    main()
