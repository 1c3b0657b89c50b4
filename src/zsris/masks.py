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
    100000 x 100000 mask), and the counts, a list or COCO's compressed text, non-negative and
    covering the mask exactly (pycocotools leaves the pixels past short counts uninitialised:
    the same record would decode differently on every call). Raises ValueError with the reason.
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
        try:
            text = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
        except UnicodeEncodeError:
            raise ValueError("compressed RLE counts must be ASCII text") from None
        runs = compressed_counts(text)
        if any(run < 0 for run in runs) or sum(runs) != height * width:
            raise ValueError(f"RLE counts cover {sum(runs)} pixels, the mask has {height * width}"
                             if all(run >= 0 for run in runs) else "RLE counts decode to a negative run")
        encoded = {"size": [height, width], "counts": text}
    else:
        raise ValueError(f"RLE counts must be a list or a string, not {type(counts).__name__}")
    try:
        return mask_utils.decode(encoded).astype(bool)
    except Exception as error:  # noqa: BLE001 - pycocotools raises bare exceptions on bad counts
        raise ValueError(f"undecodable RLE counts ({error})") from None


def compressed_counts(text: bytes) -> list[int]:
    """The run lengths that COCO's compressed RLE text stands for, read as pycocotools' own
    ``rleFrString`` reads them (6-bit groups from ``'0'``, a continuation bit, a sign bit, and
    from the third run on a difference to the run two before), to check them before decoding."""
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("compressed RLE counts end inside a number")
            chunk = text[position] - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


#: Below this many masks on one side, IoU loops over them, counting only inside each one's box.
FEW_MASKS = 32


def iou_matrix(a: np.ndarray, b: np.ndarray, areas_a: Optional[np.ndarray] = None) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of two stacks of boolean masks of one size (``[N, H, W]``
    or flattened ``[N, P]``); ``areas_a``, when known, saves counting ``a``'s pixels again.

    Many against many (proposals against proposals) is one float32 matrix product; many against
    a few (proposals against an image's annotated objects) counts each of the few's overlaps
    inside its box instead, skipping the float copy of every mask (100 masks of 640 x 480: 85
    ms). The counts are exact either way, so the two give the same numbers."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    if min(len(a), len(b)) <= FEW_MASKS:
        a, b = (m.reshape(len(m), 1, -1) if m.ndim == 2 else m for m in (a, b))
        inter = _box_intersections(a, b) if len(b) <= len(a) else _box_intersections(b, a).T
        area_a = (np.count_nonzero(a.reshape(len(a), -1), axis=1) if areas_a is None else areas_a).astype(np.float32)
        area_b = np.count_nonzero(b.reshape(len(b), -1), axis=1).astype(np.float32)
    else:
        fa = a.reshape(len(a), -1).astype(np.float32)
        # a @ a.T: BLAS's symmetric product, 1.7x faster
        fb = fa if b is a else b.reshape(len(b), -1).astype(np.float32)
        inter, area_a, area_b = fa @ fb.T, fa.sum(1), fb.sum(1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _box_intersections(many: np.ndarray, few: np.ndarray) -> np.ndarray:
    """``[len(many), len(few)]`` float32 pixel counts of ``many[i] & few[j]``, each ``few[j]``
    compared only inside its own tight box."""
    inter = np.zeros((len(many), len(few)), dtype=np.float32)
    for j, (x1, y1, x2, y2) in enumerate(masks_boxes(few)):
        if x2 > x1:
            window = many[:, y1:y2, x1:x2] & few[j, y1:y2, x1:x2]
            inter[:, j] = np.count_nonzero(window.reshape(len(many), -1), axis=1)
    return inter


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
