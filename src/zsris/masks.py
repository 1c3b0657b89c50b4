"""Mask utilities shared by proposals, the segmenter and evaluation: boxes, RLE, IoU, NMS."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from pycocotools import mask as mask_utils


def masks_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes ``[N, 4]`` ``(x1, y1, x2, y2)``, x2/y2 exclusive, of a stack of boolean masks;
    zeros for an empty mask. No loop over the masks: the first and last occupied row and column
    come from ``argmax`` from each side."""
    masks = np.asarray(masks, dtype=bool)
    if len(masks) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    height, width = rows.shape[1], cols.shape[1]
    boxes = np.stack([
        cols.argmax(1), rows.argmax(1), width - cols[:, ::-1].argmax(1), height - rows[:, ::-1].argmax(1),
    ], axis=1).astype(np.int64)
    boxes[~rows.any(1)] = 0
    return boxes


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE with ``counts`` as text, ready for JSON."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any], expected_size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Boolean mask from a COCO RLE (compressed text/bytes counts or uncompressed list counts).

    The RLE is validated before pycocotools allocates anything: ``size`` must be two positive
    integers (equal to ``expected_size`` when given, so a 100-byte file cannot ask for a
    100000 x 100000 mask), and list counts non-negative integers that cover the mask exactly.
    Raises ValueError with the reason.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE is an object with 'size' and 'counts'")
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"RLE size must be [height, width] of positive integers, not {size!r}")
    height, width = size
    if expected_size is not None and (height, width) != tuple(expected_size):
        raise ValueError(f"RLE size {height}x{width} differs from the image's {expected_size[0]}x{expected_size[1]}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError("RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise ValueError(f"RLE counts cover {sum(counts)} pixels, the mask has {height * width}")
        encoded = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, (str, bytes)):
        encoded = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"RLE counts must be a list or a string, not {type(counts).__name__}")
    try:
        return mask_utils.decode(encoded).astype(bool)
    except Exception as error:  # noqa: BLE001 - pycocotools raises bare exceptions on bad counts
        raise ValueError(f"undecodable RLE counts ({error})") from None


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of two stacks of boolean masks of one size."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def nms_by_iou(ious: np.ndarray, scores: np.ndarray, threshold: float, limit: Optional[int] = None) -> np.ndarray:
    """Greedy NMS on a precomputed IoU matrix: indices kept, best score first, at most ``limit``."""
    keep: list[int] = []
    suppressed = np.zeros(len(scores), dtype=bool)
    for index in np.argsort(-scores, kind="stable"):
        if suppressed[index]:
            continue
        keep.append(int(index))
        if len(keep) == limit:
            break
        suppressed |= ious[index] > threshold
    return np.asarray(keep, dtype=np.int64)


def mask_nms(masks: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS on mask IoU, best score first."""
    return nms_by_iou(iou_matrix(masks, masks), scores, threshold)
