"""The proposal interface: an RGB image in, boolean masks at the image's size with scores out."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np

from ..errors import ProposalError
from ..masks import masks_boxes


@dataclass
class Proposals:
    """Class-agnostic mask proposals of one image.

    ``masks`` is ``[N, H, W]`` bool at the image's resolution, ``scores`` ``[N]`` (higher is
    better, generator-specific), ``boxes`` ``[N, 4]`` tight ``x1, y1, x2, y2`` (exclusive ends),
    ``areas`` ``[N]`` pixels per mask: counted once, where the proposals are made (a worker
    process), since scoring and evaluation both need them (100 masks: 10-30 ms a count).
    """

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray = field(default=None)  # type: ignore[assignment]
    areas: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim != 3:
            raise ProposalError(f"proposal masks must be [N, H, W], got shape {self.masks.shape}")
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.scores) != len(self.masks):
            raise ProposalError(f"{len(self.masks)} masks but {len(self.scores)} scores")
        if self.boxes is None:
            self.boxes = masks_boxes(self.masks)
        if self.areas is None:
            self.areas = np.count_nonzero(self.masks, axis=(1, 2))

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def select(self, index: np.ndarray) -> "Proposals":
        return Proposals(self.masks[index], self.scores[index], self.boxes[index], self.areas[index])

    def non_empty(self) -> "Proposals":
        return self.select(np.flatnonzero(self.areas))

    @classmethod
    def empty(cls, height: int, width: int) -> "Proposals":
        return cls(np.zeros((0, height, width), dtype=bool), np.zeros(0, dtype=np.float32))


def check_max_proposals(value: Optional[int]) -> Optional[int]:
    """A cap on proposals per image is a positive count, or None for no cap. Zero or a negative
    number is refused rather than read as "no cap", which would silently cost 5-10x the time."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ProposalError(f"max_proposals must be a positive count or None (no cap), not {value!r}")
    return int(value)


def config_key(name: str, version: int, config: Any = None, **extra: Any) -> str:
    """A generator's cache key, derived from its settings: ``name-vVERSION-field=value-...``.

    Every field of the ``config`` dataclass and every ``extra`` item appears, so a setting added
    later changes the key by itself; ``version`` changes when the algorithm does."""
    items = {**(dataclasses.asdict(config) if config is not None else {}), **extra}

    def text(value: Any) -> str:
        return "_".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)

    return "-".join([f"{name}-v{version}", *(f"{key}={text(value)}" for key, value in items.items())])


@runtime_checkable
class ProposalGenerator(Protocol):
    """Anything that turns an image into :class:`Proposals`.

    ``image_id`` names the image for generators that look proposals up (precomputed files);
    others ignore it. ``cache_key`` identifies the generator and its settings, so that
    proposals cached on disk are reused only by an identical generator.
    """

    name: str

    @property
    def cache_key(self) -> str: ...

    def __call__(self, image: np.ndarray, image_id: Optional[str] = None) -> Proposals: ...
