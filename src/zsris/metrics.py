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
    generalized = gres_metrics(records) if any("no_target" in r for r in records) else {}
    if generalized:  # the RefCOCO metrics below are over the expressions that name something
        records = [r for r in records if not r.get("no_target")] or [{"iou": 0.0, "intersection": 0, "union": 0}]
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
    if any("pure_iou" in r for r in records):  # HybridGL's answer without spatial guidance, as its
        # script reports it beside; a sentence without one (its image failed) counts as a miss
        p_union = sum(int(r.get("pure_union", r["union"])) for r in records)
        p_inter = sum(int(r.get("pure_intersection", 0)) for r in records)
        summary["oIoU (pure HybridGL)"] = _percent(p_inter / p_union if p_union else 0.0)
        summary["mIoU (pure HybridGL)"] = _percent(float(np.mean([r.get("pure_iou", 0.0) for r in records])))
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
    return {**generalized, **summary} if generalized else summary


def authors_accounting(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """oIoU and mIoU as the authors' loop counts them: an image without proposals is skipped
    (``continue``), so its sentences count nowhere. zsris's own figures count them as misses."""
    kept = [r for r in records if int(r.get("num_proposals", 1)) > 0 and not r.get("no_target")]
    inter = sum(int(r["intersection"]) for r in kept)
    union = sum(int(r["union"]) for r in kept)
    return {"sentences (authors' accounting)": len(kept),
            "oIoU (authors' accounting)": _percent(inter / union if union else 0.0),
            "mIoU (authors' accounting)": _percent(float(np.mean([r["iou"] for r in kept])) if kept else 0.0)}


def gres_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """gRefCOCO's metrics, defined as in ReLA's evaluation (Liu et al., CVPR 2023).

    Per expression, with an empty prediction (``found`` false) for "no such object":
    - a no-target expression counts 1 in gIoU when the prediction is empty (a true positive of
      N-acc) and 0 otherwise (a false negative; its predicted pixels join cIoU's union);
    - an expression with targets counts its IoU in gIoU and its intersection and union in cIoU;
      a non-empty prediction is a true negative of T-acc, an empty one a false positive.
    gIoU = mean over expressions, cIoU = total intersection / total union,
    N-acc = TP / (TP + FN), T-acc = TN / (TN + FP). Percentages."""
    g_ious, inter, union = [], 0, 0
    tp = fn = tn = fp = 0
    for r in records:
        empty = not r.get("found", True) or int(r["intersection"]) + int(r["union"]) == 0
        if r["no_target"]:
            predicted = 0 if empty else int(r["union"])  # the target is empty: the union is the prediction
            tp, fn = tp + (predicted == 0), fn + (predicted > 0)
            g_ious.append(1.0 if predicted == 0 else 0.0)
            union += predicted
        else:
            tn, fp = tn + (not empty), fp + empty
            g_ious.append(iou(int(r["intersection"]), int(r["union"])))
            inter, union = inter + int(r["intersection"]), union + int(r["union"])
    no_target = tp + fn
    return {
        "gIoU": _percent(float(np.mean(g_ious))) if g_ious else 0.0,
        "cIoU": _percent(inter / union) if union else 0.0,
        "N-acc": _percent(tp / no_target) if no_target else None,
        "T-acc": _percent(tn / (tn + fp)) if tn + fp else None,
        "no-target sentences": no_target,
    }


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
