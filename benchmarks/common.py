"""What the benchmark scripts share: where the refcoco-mini data is, and a one-line exit without it."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DATA_ENV = "ZSRIS_TEST_DATA"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "refcoco-mini"


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(DATA_ENV) or DEFAULT_DATA),
                        help=f"refcoco-mini (or any REFER data) folder (default: ${DATA_ENV}, else %(default)s)")


def require_data(data: Path, dataset: str = "refcoco") -> Path:
    """``data`` if it holds REFER refs and COCO images; else exit with one line saying what to pass."""
    refs = sorted((data / dataset).glob("refs(*).p"))
    images = data / "images" / "train2014"
    if not refs or not images.is_dir() or not any(images.glob("*.jpg")):
        sys.exit(f"{Path(sys.argv[0]).name}: no REFER data at {data} (need {dataset}/refs(...).p and "
                 f"images/train2014/*.jpg); pass --data DIR or set ${DATA_ENV}")
    return data
