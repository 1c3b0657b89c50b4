"""Weights-free mask proposals: multi-scale graph-based segmentation with hierarchical grouping.

Selective-search style (Uijlings et al., IJCV 2013): Felzenszwalb-Huttenlocher superpixels at
several scales and colour spaces, then greedy merging of the most similar adjacent regions until
one region is left. Every region of every hierarchy is a candidate mask. As in selective search,
diversity comes from running several grouping strategies on the same superpixels: an *appearance*
similarity (colour, texture, size and fill) and two colour-blind ones, *shape* (size and fill) and
*fill* alone, which group differently coloured parts of one object (a shirt, trousers and a face)
that colour similarity keeps apart.
Candidates are ranked, near-duplicates suppressed and the best ``max_proposals`` kept. Grouping
runs on a downscaled copy of the image; the kept masks are brought back to full resolution by
snapping their boundaries to fine superpixels of the image at (up to) ``refine_size``, so that
edges follow the photo rather than the coarse grid of the working copy.
"""
from __future__ import annotations

import heapq
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image
from scipy.ndimage import find_objects
from scipy.sparse import csr_matrix
from skimage.color import rgb2hsv, rgb2lab
from skimage.segmentation import felzenszwalb

from ..errors import ZsrisWarning
from ..masks import iou_matrix, nms_by_iou
from .base import Proposals, check_max_proposals, config_key
from .configs import ClassicalConfig
from .registry import Configured, ProposalSpec, config_of

COLOUR_BINS = 25
TEXTURE_BINS = 10
ORIENTATIONS = 8
MAX_AREA = 0.95
MIN_SIDE = 8
#: Bytes the full-size masks of one image may take (bool, a byte a pixel); a larger image keeps
#: fewer proposals rather than needing gigabytes (100 masks of 36 MP: 3.6 GB).
MASK_BYTES = 2 << 30
SAMPLE_POINTS = 64

# Weights of the (colour, texture, size, fill) similarity terms of each grouping strategy.
SIMILARITIES: dict[str, tuple[float, float, float, float]] = {
    "appearance": (1.0, 1.0, 1.0, 1.0),
    "shape": (0.0, 0.0, 1.0, 1.0),
    "fill": (0.0, 0.0, 0.0, 1.0),
}


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
    channels = values.reshape(-1, values.shape[-1])
    width = channels.shape[1] * bins
    index = labels.ravel()[:, None] * width + np.arange(channels.shape[1]) * bins
    index = index + np.clip((channels * bins).astype(np.int64), 0, bins - 1)
    hist = np.bincount(index.ravel(), minlength=count * width).reshape(count, width).astype(np.float32)
    return hist / np.maximum(hist.sum(1, keepdims=True), 1e-9)


def _texture_values(colour: np.ndarray) -> np.ndarray:
    """Gradient orientation (binned) and magnitude per channel, as selective search's texture."""
    out = []
    for c in range(colour.shape[-1]):
        gy, gx = np.gradient(colour[..., c])
        angle = (np.arctan2(gy, gx) + np.pi) / (2 * np.pi)
        magnitude = np.hypot(gx, gy)
        magnitude = magnitude / (magnitude.max() + 1e-9)
        bins = np.clip(np.floor(angle * ORIENTATIONS), 0, ORIENTATIONS - 1)
        out.append(bins / ORIENTATIONS + magnitude / ORIENTATIONS)
    return np.stack(out, axis=-1)


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Sorted unique ``(a, b)`` label pairs, ``a < b``, of 4-adjacent pixels. Each pair is one
    integer ``a * count + b`` while sorting, ten times faster than ``np.unique`` over rows."""
    count = int(labels.max()) + 1
    first = np.concatenate([labels[:, :-1].ravel(), labels[:-1].ravel()]).astype(np.int64)
    second = np.concatenate([labels[:, 1:].ravel(), labels[1:].ravel()]).astype(np.int64)
    differ = first != second
    first, second = first[differ], second[differ]
    codes = np.unique(np.minimum(first, second) * count + np.maximum(first, second))
    return np.stack([codes // count, codes % count], axis=1).astype(labels.dtype)


@dataclass
class _Superpixels:
    """One Felzenszwalb segmentation and what every grouping strategy needs of its regions."""

    labels: np.ndarray
    sizes: np.ndarray
    boxes: np.ndarray
    pairs: np.ndarray
    colour_hist: np.ndarray
    texture_hist: np.ndarray

    @classmethod
    def compute(cls, labels: np.ndarray, colour: np.ndarray, texture: np.ndarray) -> "_Superpixels":
        count = int(labels.max()) + 1
        slices = find_objects(labels + 1)
        boxes = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices], dtype=np.float64)
        return cls(
            labels=labels,
            sizes=np.bincount(labels.ravel(), minlength=count).astype(np.float64),
            boxes=boxes,
            pairs=_adjacent_pairs(labels),
            colour_hist=_histograms(colour, labels, count, COLOUR_BINS),
            texture_hist=_histograms(texture, labels, count, TEXTURE_BINS),
        )


def _hierarchy(superpixels: _Superpixels, weights: tuple[float, float, float, float]) -> list[tuple[int, ...]]:
    """Greedy hierarchical grouping; returns every region as the tuple of superpixels it holds,
    in creation order (superpixels first, the whole image last)."""
    w_colour, w_texture, w_size, w_fill = weights
    count = len(superpixels.sizes)
    height, width = superpixels.labels.shape
    image_area = float(height * width)
    size = list(superpixels.sizes)
    chist = list(superpixels.colour_hist)
    thist = list(superpixels.texture_hist)
    box = [tuple(b) for b in superpixels.boxes]
    members: list[tuple[int, ...]] = [(i,) for i in range(count)]
    neighbours: list[set[int]] = [set() for _ in range(count)]
    for a, b in superpixels.pairs:
        neighbours[a].add(int(b))
        neighbours[b].add(int(a))
    alive = [True] * count

    def similarity(i: int, j: int) -> float:
        bx = _union_box(box[i], box[j])
        box_area = (bx[2] - bx[0]) * (bx[3] - bx[1])
        value = (w_size * (1.0 - (size[i] + size[j]) / image_area)
                 + w_fill * (1.0 - (box_area - size[i] - size[j]) / image_area))
        if w_colour:
            value += w_colour * float(np.minimum(chist[i], chist[j]).sum())
        if w_texture:
            value += w_texture * float(np.minimum(thist[i], thist[j]).sum())
        return value

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
        box.append(_union_box(box[i], box[j]))
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


def _union_box(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The smallest box holding boxes ``a`` and ``b``."""
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _sample_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of an (at most) ``SAMPLE_POINTS``-square grid of pixels, for comparing masks."""
    rows = np.unique(np.linspace(0, height - 1, min(height, SAMPLE_POINTS)).round().astype(np.int64))
    cols = np.unique(np.linspace(0, width - 1, min(width, SAMPLE_POINTS)).round().astype(np.int64))
    return rows, cols


class ClassicalProposals(Configured):
    """Selective-search-style mask proposals that need no weights and run on any CPU.

    Ranking: a region that several independent segmentations (other scales, colour spaces,
    grouping strategies) also produce is more likely an object than an accident of one merge
    order, so each candidate's agreement is the mean, over strategies, of its best IoU with that
    strategy's regions (on a grid of sampled pixels). The score adds ``size_prior`` times the log
    of the candidate's area fraction; duplicates are suppressed greedily by the same IoU.
    """

    name = "classical"

    def __init__(self, config: Optional[ClassicalConfig] = None, **overrides) -> None:
        base = config or ClassicalConfig()
        self.config = ClassicalConfig(**{**base.__dict__, **overrides})
        check_max_proposals(self.config.max_proposals)
        unknown = set(self.config.similarities) - set(SIMILARITIES)
        if unknown:
            raise ValueError(f"unknown similarity {sorted(unknown)}; choose from {sorted(SIMILARITIES)}")

    @property
    def cache_key(self) -> str:
        return config_key(self.name, 3, self.config)

    def __call__(self, image: np.ndarray, image_id: Optional[str] = None) -> Proposals:
        config = self.config
        height, width = image.shape[:2]
        if min(height, width) < MIN_SIDE:
            # Too small to segment: the whole image is the only sensible candidate.
            return Proposals(np.ones((1, height, width), dtype=bool), np.ones(1))
        small = _downscale(image, config.work_size)
        small_area = float(small.shape[0] * small.shape[1])
        rows, cols = _sample_grid(*small.shape[:2])

        regions: list[np.ndarray] = []
        made_by: list[tuple[int, int]] = []  # each region's label map and strategy
        areas: list[np.ndarray] = []
        samples: list[np.ndarray] = []
        label_maps: list[np.ndarray] = []
        strategies = 0
        for space in config.colour_spaces:
            colour = _colour_image(small, space)
            texture = _texture_values(colour)
            for scale in config.scales:
                labels = felzenszwalb(colour, scale=scale, sigma=config.sigma, min_size=scale)
                superpixels = _Superpixels.compute(labels, colour, texture)
                sampled = labels[np.ix_(rows, cols)].ravel()
                label_maps.append(labels)
                for similarity in config.similarities:
                    hierarchy = _hierarchy(superpixels, SIMILARITIES[similarity])
                    membership = np.zeros((len(hierarchy), len(superpixels.sizes)), dtype=bool)
                    for index, region in enumerate(hierarchy):
                        membership[index, list(region)] = True
                    area = membership @ superpixels.sizes
                    valid = np.flatnonzero((area >= config.min_area * small_area) & (area <= MAX_AREA * small_area))
                    regions.extend(np.flatnonzero(membership[index]) for index in valid)
                    made_by.extend([(len(label_maps) - 1, strategies)] * len(valid))
                    areas.append(area[valid] / small_area)
                    samples.append(membership[valid][:, sampled])
                    strategies += 1
        if not regions:
            return Proposals.empty(height, width)
        sources = np.asarray(made_by)
        iou = _self_iou(np.concatenate(samples))
        scores = _agreement(iou, sources[:, 1], strategies) + config.size_prior * np.log(np.concatenate(areas))
        keep = _within_mask_budget(nms_by_iou(iou, scores, config.nms_iou, config.max_proposals), height, width)
        masks = []
        for index in keep:
            labels = label_maps[sources[index, 0]]
            lookup = np.zeros(int(labels.max()) + 1, dtype=bool)
            lookup[regions[index]] = True
            masks.append(lookup[labels])
        stack = np.stack(masks)
        if config.refine_size:
            stack = _snap_to_superpixels(stack, image, config.refine_size, config.refine_scale, config.sigma)
        return Proposals(_resize_masks(stack, (height, width)), scores[keep]).non_empty()


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (bilinear) so that its longer side is at most ``max_side``; never enlarged."""
    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    if factor == 1:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _within_mask_budget(keep: np.ndarray, height: int, width: int) -> np.ndarray:
    """The best of ``keep`` (in score order) whose full-size masks fit in :data:`MASK_BYTES` (a
    byte a pixel): a 36 MP image keeps its best 59 of 100 masks (3.6 GB), and says so."""
    fits = max(1, MASK_BYTES // max(height * width, 1))
    if len(keep) > fits:
        warnings.warn(f"zsris: a {height * width / 1e6:.0f} MP image keeps its best {fits} of {len(keep)} "
                      f"proposals, so that their masks fit in {MASK_BYTES >> 30} GB; downscale it for more",
                      ZsrisWarning, stacklevel=3)
    return keep[:fits]


def _resize_masks(stack: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Low-resolution masks brought to ``shape``, written into one array (no second full-size copy)."""
    if stack.shape[1:] == tuple(shape):
        return stack
    out = np.empty((len(stack), *shape), dtype=bool)
    for index, mask in enumerate(stack):
        out[index] = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shape[::-1], Image.BILINEAR)) >= 128
    return out


def _boundary_band(stack: np.ndarray) -> np.ndarray:
    """Cells of each mask whose 3 x 3 neighbourhood holds both mask and background."""
    height, width = stack.shape[1:]
    padded = np.pad(stack, ((0, 0), (1, 1), (1, 1)), mode="edge")
    grow = np.zeros_like(stack)
    shrink = np.ones_like(stack)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, dy : dy + height, dx : dx + width]
            grow |= window
            shrink &= window
    return grow & ~shrink


def _snap_to_superpixels(stack: np.ndarray, image: np.ndarray, size: int, scale: int, sigma: float) -> np.ndarray:
    """Bring working-resolution masks to (up to) ``size`` pixels a side along the image's own edges.

    Only pixels within one working cell of a mask's boundary can change, where the coarse grid
    leaves the boundary uncertain: there each pixel takes the majority vote of its fine
    Felzenszwalb superpixel (does the mask, upsampled to the nearest cell, cover at least half of
    it?). Interiors stay as they were, so a superpixel that leaks far out of the object (a pale
    wall beside a pale shirt) cannot drag the whole mask along; a plain vote over whole
    superpixels also swallowed small objects (recall@0.5 fell by 1.3 points on refcoco-mini).
    """
    labels = felzenszwalb(_downscale(image, size), scale=scale, sigma=sigma, min_size=scale)
    count = int(labels.max()) + 1
    count_masks, small_h, small_w = stack.shape
    fine_h, fine_w = labels.shape
    rows = np.minimum(((np.arange(fine_h) + 0.5) * small_h / fine_h).astype(np.int64), small_h - 1)
    cols = np.minimum(((np.arange(fine_w) + 0.5) * small_w / fine_w).astype(np.int64), small_w - 1)
    cell = (rows[:, None] * small_w + cols[None, :]).ravel()
    # counts[s, c]: pixels of fine superpixel s that fall in working cell c.
    pixels = labels.ravel()
    counts = csr_matrix((np.ones(cell.size, np.float32), (pixels, cell)), shape=(count, small_h * small_w))
    flat = stack.reshape(count_masks, -1)
    covered = np.asarray(counts @ flat.T.astype(np.float32))
    sizes = np.asarray(counts.sum(1)).ravel()
    majority = np.ascontiguousarray((covered >= 0.5 * sizes[:, None]).T)
    snapped = np.take(flat, cell, axis=1)
    band = np.take(_boundary_band(stack).reshape(count_masks, -1), cell, axis=1)
    vote = np.take(majority, pixels, axis=1)
    np.copyto(snapped, vote, where=band)
    return snapped.reshape(count_masks, fine_h, fine_w)


def _self_iou(candidates: np.ndarray) -> np.ndarray:
    """Pairwise IoU of the sampled candidates, each distinct mask computed once: a third of the
    candidates repeat (every superpixel starts all three grouping strategies), so this does 40%
    of the work of the full product, with the same numbers."""
    first_seen: dict[bytes, int] = {}
    inverse = np.array([first_seen.setdefault(row.tobytes(), len(first_seen))
                        for row in np.packbits(candidates, axis=1)], dtype=np.int64)
    distinct = candidates[np.unique(inverse, return_index=True)[1]]
    return iou_matrix(distinct, distinct)[np.ix_(inverse, inverse)]


def _agreement(iou: np.ndarray, strategy_of: np.ndarray, strategies: int) -> np.ndarray:
    """Mean over strategies of each candidate's best IoU with that strategy's regions."""
    best = np.zeros((len(iou), strategies), dtype=np.float32)
    for s in range(strategies):
        columns = strategy_of == s
        if columns.any():
            best[:, s] = iou[:, columns].max(1)
    return best.mean(1)


def from_spec(spec: ProposalSpec, device: object = None) -> ClassicalProposals:
    """The registry's factory: classical proposals with the spec's settings and cap."""
    return ClassicalProposals(config_of(ClassicalConfig, spec))
