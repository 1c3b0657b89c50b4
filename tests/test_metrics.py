"""Metrics on hand-computed cases, empty masks included."""
from __future__ import annotations

import numpy as np
import pytest

from zsris.metrics import intersection_union, iou, proposal_quality, summarize


def test_intersection_union_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[1:3, 1:3] = True  # 4 pixels, 1 shared
    assert intersection_union(a, b) == (1, 7)
    assert iou(1, 7) == pytest.approx(1 / 7)
    assert intersection_union(np.zeros((3, 3), bool), b[:3, :3]) == (0, 4)  # empty prediction
    assert intersection_union(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == (0, 0)
    assert iou(0, 0) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        intersection_union(a, b[:3])


def _record(inter, union, **extra):
    return {"intersection": inter, "union": union, "iou": inter / union if union else 0.0, **extra}


def test_summary_by_hand():
    records = [
        _record(50, 100, image_id=1, gt_category=1, chosen_category=1, num_proposals=3,
                oracle_iou=0.8, oracle_intersection=80, oracle_union=100),
        _record(90, 100, image_id=1, gt_category=1, chosen_category=2, num_proposals=3,
                oracle_iou=0.9, oracle_intersection=90, oracle_union=100),
        _record(0, 300, image_id=2, gt_category=5, chosen_category=None, num_proposals=0,
                oracle_iou=0.0, oracle_intersection=0, oracle_union=300),
    ]
    s = summarize(records)
    assert s["sentences"] == 3 and s["images"] == 2
    assert s["oIoU"] == pytest.approx(100 * 140 / 500)
    assert s["mIoU"] == pytest.approx(100 * (0.5 + 0.9 + 0.0) / 3, abs=0.01)
    assert s["P@0.5"] == pytest.approx(66.67) and s["P@0.6"] == pytest.approx(33.33) and s["P@0.9"] == 33.33
    assert s["mc-acc"] == pytest.approx(33.33)
    assert s["cc-oIoU"] == 50.0
    assert s["oracle mIoU"] == pytest.approx(100 * 1.7 / 3, abs=0.01)
    assert s["oracle oIoU"] == pytest.approx(100 * 170 / 500)
    assert s["proposals/image"] == 1.5 and s["images without proposals"] == 1


def test_empty_records():
    assert summarize([]) == {"sentences": 0}


def test_proposal_quality_by_hand():
    q = proposal_quality([0.4, 0.6, 0.8], [4, 6, 8], [10, 10, 10], [10, 30], [0.5, 1.5])
    assert q["oracle mIoU"] == 60.0 and q["oracle oIoU"] == 60.0
    assert q["recall@0.5"] == pytest.approx(66.67) and q["recall@0.7"] == pytest.approx(33.33)
    assert q["proposals/image"] == 20.0 and q["seconds/image"] == 1.0
