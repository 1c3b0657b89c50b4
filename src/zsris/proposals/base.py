"""The proposal interface: an RGB image in, boolean masks at the image's size with scores out
(:class:`~zsris.types.Proposals`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import ProposalError
from ..types import Proposals


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
    proposals cached on disk are reused only by an identical generator. ``spec``, where there
    is one (a :class:`~zsris.config.ProposalSpec` attribute), rebuilds the same generator in a
    worker process; the segmenter's settings are taken from it, so the object and the record
    of how it was made cannot disagree.
    """

    name: str

    @property
    def cache_key(self) -> str: ...

    def __call__(self, image: np.ndarray, image_id: Optional[str] = None) -> Proposals: ...


@dataclass(frozen=True)
class Candidates:
    """The proposals one expression chooses among: ``rows`` of the image's proposals (None:
    every one); ``refusal``, the generator's reason why nothing answers whatever the scores
    (SAM 3: its phrase is absent); ``record``, what the generator was told and found, for the
    result's record."""

    rows: Optional[np.ndarray] = None
    refusal: Optional[str] = None
    record: Optional[dict[str, Any]] = None


class Prompting(Protocol):
    """How a generator's proposals relate to the expressions: whether they depend on them
    (``prompted``), how an image's class-agnostic proposals are completed for its expressions'
    noun phrases, and which proposals each expression chooses among."""

    prompted: bool

    def complete(self, image: np.ndarray, proposals: Proposals, phrases: Sequence[str]) -> Proposals: ...

    def candidates(self, phrase: Optional[str], proposals: Proposals) -> Candidates: ...


class ClassAgnostic:
    """The strategy of every generator whose proposals serve each expression alike."""

    prompted = False

    def complete(self, image: np.ndarray, proposals: Proposals, phrases: Sequence[str]) -> Proposals:
        return proposals

    def candidates(self, phrase: Optional[str], proposals: Proposals) -> Candidates:
        return Candidates()


CLASS_AGNOSTIC = ClassAgnostic()


def prompting(generator: Any) -> Prompting:
    """``generator``'s :class:`Prompting` (its ``prompting`` attribute; class-agnostic where it has none)."""
    return getattr(generator, "prompting", None) or CLASS_AGNOSTIC


def is_prompted(generator: Any) -> bool:
    """Whether ``generator``'s proposals depend on the expressions (SAM 3: each expression's noun
    phrase is its prompt), so that they are completed where the expressions are known."""
    return prompting(generator).prompted


__all__ = ["CLASS_AGNOSTIC", "Candidates", "ClassAgnostic", "ProposalGenerator", "Prompting", "Proposals",
           "check_max_proposals", "config_key", "is_prompted", "prompting"]
