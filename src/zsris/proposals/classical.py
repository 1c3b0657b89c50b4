"""Weights-free mask proposals: multi-scale graph-based segmentation with hierarchical grouping.

Selective-search style (Uijlings et al., IJCV 2013): Felzenszwalb-Huttenlocher superpixels at
several scales and colour spaces, then greedy merging of the most similar adjacent regions
(colour, texture, size and fill similarity) until one region is left. Every region of every
hierarchy is a candidate mask; duplicates are removed and the best-ranked ``max_proposals``
kept. It runs on a downscaled copy of the image and maps the labels back to full resolution.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image
from skimage.color import rgb2hsv, rgb2lab
from skimage.segmentation import felzenszwalb

from .base import Proposals

COLOUR_BINS = 25
TEXTURE_BINS = 10
ORIENTATIONS = 8


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of the classical generator; defaults are the library's, not tuned per dataset."""

    max_proposals: int = 100
    work_size: int = 256
    scales: tuple[int, ...] = (50, 100, 200, 400)
    colour_spaces: tuple[str, ...] = ("hsv", "lab")
    sigma: float = 0.8
    min_area: float = 0.002
    nms_iou: float = 0.6
    seed: int = 0


def _colour_image(image: np.ndarray, space: str) -> np.ndarray:
    if space == "rgb":
        return image.astype(np.float32) / 255.0
    if space == "hsv":
        return rgb2hsv(image).astype(np.float32)
    if space == "lab":
        lab = rgb2lab(image).astype(np.float32)
        return (lab - np.array([0, -128, -128], np.float32)) / np.array([100, 255, 255], np.float32)
    raise ValueError(f"unknown colour space {space!r}")


def _histograms(values: np.ndarray, labels: np.ndarray, count: int, bins: int) -> np.ndarray:
    """Per-region, per-channel histograms of ``values`` in [0, 1], L1-normalised: ``[count, C*bins]``."""
    flat = labels.ravel()
    channels = values.reshape(-1, values.shape[-1])
    hist = np.zeros((count, channels.shape[1] * bins), dtype=np.float32)
    for c in range(channels.shape[1]):
        b = np.clip((channels[:, c] * bins).astype(np.int64), 0, bins - 1)
        np.add.at(hist, (flat, c * bins + b), 1.0)
    return hist / np.maximum(hist.sum(1, keepdims=True), 1e-9)


def _texture_values(colour: np.ndarray) -> np.ndarray:
    """Gradient orientation (binned) and magnitude per channel, as selective search's texture."""
    out = []
    for c in range(colour.shape[-1]):
        gy, gx = np.gradient(colour[..., c])
        angle = (np.arctan2(gy, gx) + np.pi) / (2 * np.pi)
        magnitude = np.hypot(gx, gy)
        magnitude = magnitude / (magnitude.max() + 1e-9)
        out.append(np.clip(np.floor(angle * ORIENTATIONS), 0, ORIENTATIONS - 1) / ORIENTATIONS + magnitude / ORIENTATIONS)
    return np.stack(out, axis=-1)


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    pairs = np.concatenate(
        [
            np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
            np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1),
        ]
    )
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0)


def _hierarchy(labels: np.ndarray, colour: np.ndarray, texture: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy hierarchical grouping; returns every region as the tuple of superpixels it holds,
    in creation order (superpixels first, the whole image last)."""
    count = int(labels.max()) + 1
    height, width = labels.shape
    image_area = float(height * width)
    sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
    colour_hist = _histograms(colour, labels, count, COLOUR_BINS)
    texture_hist = _histograms(texture, labels, count, TEXTURE_BINS)
    ys, xs = np.indices(labels.shape)
    boxes = np.stack(
        [
            np.full(count, width), np.full(count, height), np.zeros(count), np.zeros(count),
        ],
        1,
    ).astype(np.float64)
    np.minimum.at(boxes[:, 0], labels.ravel(), xs.ravel())
    np.minimum.at(boxes[:, 1], labels.ravel(), ys.ravel())
    np.maximum.at(boxes[:, 2], labels.ravel(), xs.ravel() + 1)
    np.maximum.at(boxes[:, 3], labels.ravel(), ys.ravel() + 1)

    size = list(sizes)
    chist = list(colour_hist)
    thist = list(texture_hist)
    box = [tuple(b) for b in boxes]
    members: list[tuple[int, ...]] = [(i,) for i in range(count)]
    neighbours: list[set[int]] = [set() for _ in range(count)]
    for a, b in _adjacent_pairs(labels):
        neighbours[a].add(int(b))
        neighbours[b].add(int(a))
    alive = [True] * count

    def similarity(i: int, j: int) -> float:
        bx = (min(box[i][0], box[j][0]), min(box[i][1], box[j][1]), max(box[i][2], box[j][2]), max(box[i][3], box[j][3]))
        box_area = (bx[2] - bx[0]) * (bx[3] - bx[1])
        return float(
            np.minimum(chist[i], chist[j]).sum()
            + np.minimum(thist[i], thist[j]).sum()
            + (1.0 - (size[i] + size[j]) / image_area)
            + (1.0 - (box_area - size[i] - size[j]) / image_area)
        )

    heap = [(-similarity(i, j), i, j) for i in range(count) for j in neighbours[i] if i < j]
    heapq.heapify(heap)
    while heap:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        new = len(size)
        total = size[i] + size[j]
        size.append(total)
        chist.append((chist[i] * size[i] + chist[j] * size[j]) / total)
        thist.append((thist[i] * size[i] + thist[j] * size[j]) / total)
        box.append((min(box[i][0], box[j][0]), min(box[i][1], box[j][1]), max(box[i][2], box[j][2]), max(box[i][3], box[j][3])))
        members.append(members[i] + members[j])
        alive[i] = alive[j] = False
        alive.append(True)
        joined = (neighbours[i] | neighbours[j]) - {i, j}
        neighbours.append(joined)
        for n in joined:
            neighbours[n].discard(i)
            neighbours[n].discard(j)
            neighbours[n].add(new)
            heapq.heappush(heap, (-similarity(new, n), min(new, n), max(new, n)))
    return members


def _cell_counts(labels: np.ndarray, grid: int) -> np.ndarray:
    """``[R, grid*grid]``: how many pixels of each superpixel fall in each cell of a coarse grid."""
    height, width = labels.shape
    cy = (np.arange(height) * grid) // height
    cx = (np.arange(width) * grid) // width
    cells = (cy[:, None] * grid + cx[None, :]).ravel()
    count = int(labels.max()) + 1
    return np.bincount(labels.ravel() * grid * grid + cells, minlength=count * grid * grid).reshape(count, -1).astype(np.float32)


class ClassicalProposals:
    """Selective-search-style mask proposals that need no weights and run on any CPU.

    Ranking: a region that several independent segmentations (other scales, colour spaces)
    also produce is more likely an object than an accident of one merge order, so each
    candidate is scored by its agreement (approximate IoU on a coarse grid) with the best
    match of every strategy, then duplicates are suppressed and the top ``max_proposals`` kept.
    """

    name = "classical"

    def __init__(self, config: Optional[ClassicalConfig] = None, **overrides) -> None:
        base = config or ClassicalConfig()
        self.config = ClassicalConfig(**{**base.__dict__, **overrides})

    @property
    def cache_key(self) -> str:
        c = self.config
        return (
            f"classical-v1-n{c.max_proposals}-w{c.work_size}-s{'_'.join(map(str, c.scales))}-"
            f"c{'_'.join(c.colour_spaces)}-g{c.sigma}-a{c.min_area}-nms{c.nms_iou}"
        )

    def __call__(self, image: np.ndarray, image_id: Optional[str] = None) -> Proposals:
        config = self.config
        height, width = image.shape[:2]
        if min(height, width) < MIN_SIDE:
            # Too small to segment: the whole image is the only sensible candidate.
            return Proposals(np.ones((1, height, width), dtype=bool), np.ones(1))
        factor = min(1.0, config.work_size / max(height, width))
        small_size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = np.asarray(Image.fromarray(image).resize(small_size, Image.BILINEAR)) if factor < 1 else image
        small_area = float(small.shape[0] * small.shape[1])

        regions: list[np.ndarray] = []
        owner: list[int] = []
        signatures: list[np.ndarray] = []
        label_maps: list[np.ndarray] = []
        for space in config.colour_spaces:
            colour = _colour_image(small, space)
            texture = _texture_values(colour)
            for scale in config.scales:
                labels = felzenszwalb(colour, scale=scale, sigma=config.sigma, min_size=scale)
                counts = _cell_counts(labels, GRID)
                for region in _hierarchy(labels, colour, texture):
                    members = np.fromiter(region, dtype=np.int64)
                    signature = counts[members].sum(0)
                    area = signature.sum()
                    if area < config.min_area * small_area or area > MAX_AREA * small_area:
                        continue
                    regions.append(members)
                    owner.append(len(label_maps))
                    signatures.append(signature)
                label_maps.append(labels)
        if not regions:
            return Proposals.empty(height, width)
        iou = _approximate_iou(np.stack(signatures))
        scores = _agreement(iou, np.asarray(owner), len(label_maps))
        keep = _greedy_nms(iou, scores, config.nms_iou, config.max_proposals)
        masks = []
        for index in keep:
            labels = label_maps[owner[index]]
            lookup = np.zeros(int(labels.max()) + 1, dtype=bool)
            lookup[regions[index]] = True
            masks.append(lookup[labels])
        return self._full_size(np.stack(masks), scores[keep], (height, width))

    @staticmethod
    def _full_size(stack: np.ndarray, kept_scores: np.ndarray, full_shape: tuple[int, int]) -> Proposals:
        if stack.shape[1:] != tuple(full_shape):
            stack = np.stack(
                [
                    np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(full_shape[::-1], Image.BILINEAR)) >= 128
                    for m in stack
                ]
            )
        return Proposals(stack, kept_scores).non_empty()


GRID = 16
MAX_AREA = 0.95
MIN_SIDE = 8


def _approximate_iou(signatures: np.ndarray) -> np.ndarray:
    """Pairwise IoU of regions from their per-cell pixel counts.

    The intersection is estimated as the cosine similarity of the count vectors times the
    geometric mean of the areas: exact for identical regions whatever their size, where a plain
    dot product would under-count small regions that fill only part of their cells.
    """
    areas = signatures.sum(1)
    norms = np.linalg.norm(signatures, axis=1)
    cosine = (signatures @ signatures.T) / np.maximum(norms[:, None] * norms[None, :], 1e-9)
    inter = np.minimum(cosine * np.sqrt(areas[:, None] * areas[None, :]), np.minimum(areas[:, None], areas[None, :]))
    return inter / (areas[:, None] + areas[None, :] - inter)


def _greedy_nms(iou: np.ndarray, scores: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    keep: list[int] = []
    suppressed = np.zeros(len(scores), dtype=bool)
    for index in np.argsort(-scores, kind="stable"):
        if suppressed[index]:
            continue
        keep.append(int(index))
        if len(keep) == limit:
            break
        suppressed |= iou[index] > threshold
    return np.asarray(keep, dtype=np.int64)


def _agreement(iou: np.ndarray, owner: np.ndarray, strategies: int) -> np.ndarray:
    """Mean over strategies of each candidate's best approximate IoU with that strategy's regions."""
    best = np.zeros((len(iou), strategies), dtype=np.float32)
    for s in range(strategies):
        columns = owner == s
        if columns.any():
            best[:, s] = iou[:, columns].max(1)
    return best.mean(1)
