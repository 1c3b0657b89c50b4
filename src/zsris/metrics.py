"""Referring-segmentation metrics over per-sentence records.

oIoU = sum of intersections / sum of unions; mIoU = mean per-sentence IoU; precision at IoU
thresholds; the paper's mask-category accuracy (mc-acc) and category-correct oIoU (cc-oIoU);
and the proposal oracle (the best proposal's IoU per sentence: the method's ceiling).
All percentages (x100).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(prediction: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Pixel counts of the intersection and the union of two boolean masks."""
    if prediction.shape != target.shape:
        raise ValueError(f"mask shapes differ: {prediction.shape} vs {target.shape}")
    return int(np.logical_and(prediction, target).sum()), int(np.logical_or(prediction, target).sum())


def iou(intersection: int, union: int) -> float:
    """IoU of two masks; two empty masks agree perfectly only if the target is empty too (IoU 0
    is the reference's convention for an empty union, which never happens with real targets)."""
    return intersection / union if union > 0 else 0.0


def _percent(value: float) -> float:
    return round(100.0 * value, 2)


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The metrics table from per-sentence records.

    Each record holds ``intersection``, ``union`` and ``iou`` of the chosen mask; optionally
    ``oracle_intersection``/``oracle_union``/``oracle_iou`` (best proposal), ``chosen_category``
    and ``gt_category`` (mc-acc), ``num_proposals``, ``image_id``, and ``error`` where the
    image could not be processed (its sentences then count with IoU 0).
    """
    records = list(records)
    if not records:
        return {"sentences": 0}
    ious = np.array([r["iou"] for r in records], dtype=np.float64)
    inter = sum(int(r["intersection"]) for r in records)
    union = sum(int(r["union"]) for r in records)
    summary: dict[str, Any] = {
        "sentences": len(records),
        "images": len({r.get("image_id") for r in records}),
        "oIoU": _percent(inter / union if union else 0.0),
        "mIoU": _percent(float(ious.mean())),
    }
    for threshold in THRESHOLDS:
        summary[f"P@{threshold}"] = _percent(float((ious >= threshold).mean()))
    with_category = [r for r in records if r.get("gt_category") is not None]
    if with_category:
        correct = [r for r in with_category if r.get("chosen_category") == r["gt_category"]]
        summary["mc-acc"] = _percent(len(correct) / len(with_category))
        cc_union = sum(int(r["union"]) for r in correct)
        summary["cc-oIoU"] = _percent(sum(int(r["intersection"]) for r in correct) / cc_union if cc_union else 0.0)
    with_oracle = [r for r in records if r.get("oracle_iou") is not None]
    if with_oracle:
        summary["oracle mIoU"] = _percent(float(np.mean([r["oracle_iou"] for r in with_oracle])))
        o_union = sum(int(r["oracle_union"]) for r in with_oracle)
        summary["oracle oIoU"] = _percent(sum(int(r["oracle_intersection"]) for r in with_oracle) / o_union
                                          if o_union else 0.0)
    per_image: dict[Any, int] = {}
    for r in records:
        if "num_proposals" in r:
            per_image[r.get("image_id")] = int(r["num_proposals"])
    if per_image:
        summary["proposals/image"] = round(float(np.mean(list(per_image.values()))), 1)
        summary["images without proposals"] = sum(1 for n in per_image.values() if n == 0)
    summary["images failed"] = len({r.get("image_id") for r in records if r.get("error")})
    return summary


def proposal_quality(best_ious: Iterable[float], intersections: Iterable[int], unions: Iterable[int],
                     counts: Iterable[int], seconds: Iterable[float]) -> dict[str, Any]:
    """Proposal quality alone: oracle mIoU/oIoU, recall at IoU 0.5 and 0.7, proposals and seconds per image."""
    best = np.asarray(list(best_ious), dtype=np.float64)
    inter, union = sum(intersections), sum(unions)
    counts, seconds = list(counts), list(seconds)
    return {
        "objects": int(len(best)),
        "images": len(counts),
        "oracle mIoU": _percent(float(best.mean())) if len(best) else 0.0,
        "oracle oIoU": _percent(inter / union) if union else 0.0,
        "recall@0.5": _percent(float((best >= 0.5).mean())) if len(best) else 0.0,
        "recall@0.7": _percent(float((best >= 0.7).mean())) if len(best) else 0.0,
        "proposals/image": round(float(np.mean(counts)), 1) if counts else 0.0,
        "seconds/image": round(float(np.mean(seconds)), 3) if seconds else 0.0,
    }
