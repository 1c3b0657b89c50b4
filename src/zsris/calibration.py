"""Calibration of "no such object" and "all of them": the threshold and the margin, from data.

The paper always answers with one mask. On gRefCOCO, where some expressions name nothing in
their image and some name several objects, an answer is "none" when the best fused score falls
below a threshold T, and, with ``--multi-target``, the union of the proposals within a margin M
of the best. :func:`calibrate` picks T (and, for multi-target, T and M together) that maximise
gIoU over an evaluated split, from the records `zsris eval` keeps: each sentence's best score,
its answer's intersection and union, and the pixels of each margin's union
(:data:`zsris.jobs.evaluation.CALIBRATION_MARGINS`). Nothing is recomputed, so a calibration costs
a second once the split is evaluated.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from .config import SCORE_RANGE
from .errors import ZsrisError


@dataclass(frozen=True)
class Calibration:
    """The chosen settings and the gIoU they reached on the split they were chosen on."""

    no_target_threshold: float
    gIoU: Optional[float] = None  # informative: a file written by hand need not say it
    multi_target_threshold: Optional[float] = None
    multi_target_margin: Optional[float] = None
    multi_target_gIoU: Optional[float] = None
    dataset: str = ""
    split: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))


#: The largest calibration file read (zsris calibrate writes a few hundred bytes).
MAX_CALIBRATION_BYTES = 1 << 20


def read_calibration(path: str | Path) -> Calibration:
    """A calibration file, checked field by field (one line names the field that is wrong)."""
    if Path(path).exists() and not Path(path).is_file():  # a pipe may block for ever, a device never end
        raise ZsrisError(f"{path}: not a regular file (a folder, pipe, socket or device), not a calibration file")
    if Path(path).is_file() and Path(path).stat().st_size > MAX_CALIBRATION_BYTES:
        raise ZsrisError(f"{path}: not a calibration file (zsris calibrate writes a few hundred bytes, this holds "
                         f"{Path(path).stat().st_size:,})")
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ZsrisError(f"{path}: no such calibration file (write one with zsris calibrate)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ZsrisError(f"{path}: not a calibration file ({error})") from None
    except RecursionError:
        raise ZsrisError(f"{path}: not a calibration file (nested too deeply to read)") from None
    if not isinstance(data, dict):
        raise ZsrisError(f"{path}: not a calibration file (expected an object)")
    low, high = SCORE_RANGE
    for name, required in (("no_target_threshold", True), ("multi_target_threshold", False),
                           ("multi_target_margin", False)):
        value = data.get(name)
        if value is None and not required:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ZsrisError(f"{path}: field '{name}' must be a number, not {value!r}")
        if name.endswith("threshold") and not low <= value <= high:
            raise ZsrisError(f"{path}: field '{name}' is {value}, outside the range of scores ({low} to {high})")
        if name.endswith("margin") and not 0 <= value <= high - low:
            raise ZsrisError(f"{path}: field '{name}' is {value}, outside [0, {high - low}]")
    if (data.get("multi_target_margin") is None) != (data.get("multi_target_threshold") is None):
        raise ZsrisError(f"{path}: fields 'multi_target_threshold' and 'multi_target_margin' go together")
    known = {f for f in Calibration.__dataclass_fields__}
    return Calibration(**{k: v for k, v in data.items() if k in known})


def _sweep(scores: np.ndarray, no_target: np.ndarray, ious: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gIoU for every threshold that changes an answer: the thresholds (midpoints between
    consecutive scores, and the ends) and the gIoU at each. A sentence answers "none" when its
    score is below the threshold: a no-target sentence then scores 1, another 0; else a
    no-target sentence scores 0 and another its IoU."""
    order = np.argsort(scores, kind="stable")
    s, n, v = scores[order], no_target[order].astype(np.float64), ious[order]
    count = len(s)
    empty_gain = np.concatenate([[0.0], np.cumsum(n)])               # no-target rows below T
    kept_gain = np.concatenate([np.cumsum(((1 - n) * v)[::-1])[::-1], [0.0]])  # target rows at or above T
    finite = s[np.isfinite(s)]
    low, high = SCORE_RANGE
    cuts = [low] + [float((a + b) / 2) for a, b in zip(s[:-1], s[1:])] + [min(high, float(finite.max()) + 1e-6)
                                                                          if len(finite) else high]
    return np.array(cuts), (empty_gain + kept_gain) / max(count, 1)


def _rows(records: Iterable[Mapping[str, Any]], margin: Optional[str]) -> tuple[np.ndarray, ...]:
    scores, no_target, ious = [], [], []
    for r in records:
        scores.append(-np.inf if r.get("score") is None else float(r["score"]))
        no_target.append(bool(r["no_target"]))
        if margin is None or r.get("no_target") or r.get("score") is None:
            inter, union = int(r["intersection"]), int(r["union"])
        else:
            inter, union = r["margin_iu"][margin]
        ious.append(inter / union if union else 0.0)
    return np.array(scores), np.array(no_target), np.array(ious)


def calibrate(records: list[Mapping[str, Any]]) -> tuple[Calibration, list[dict[str, float]]]:
    """The threshold (and the multi-target threshold and margin) that maximise gIoU over the
    records of a gRefCOCO evaluation made with no threshold and no multi-target, and the curve
    of gIoU against the threshold for single answers (about a dozen points, the best included)."""
    if not records or any("no_target" not in r for r in records):
        raise ZsrisError("calibration needs the records of a gRefCOCO evaluation (expressions marked no_target)")
    cuts, gious = _sweep(*_rows(records, None))
    best = int(np.argmax(gious))
    margins = sorted({m for r in records for m in r.get("margin_iu", {})}, key=float)
    multi = None
    for margin in margins:
        m_cuts, m_gious = _sweep(*_rows(records, margin))
        k = int(np.argmax(m_gious))
        if multi is None or m_gious[k] > multi[2]:
            multi = (float(m_cuts[k]), float(margin), float(m_gious[k]))
    calibration = Calibration(
        no_target_threshold=round(float(cuts[best]), 6), gIoU=round(100 * float(gious[best]), 2),
        multi_target_threshold=round(multi[0], 6) if multi else None, multi_target_margin=multi[1] if multi else None,
        multi_target_gIoU=round(100 * multi[2], 2) if multi else None)
    picks = sorted(set(np.linspace(0, len(cuts) - 1, 11).round().astype(int).tolist()) | {best})
    curve = [{"threshold": round(float(cuts[k]), 4), "gIoU": round(100 * float(gious[k]), 2),
              "answered none": int(k)} for k in picks]
    return calibration, curve
