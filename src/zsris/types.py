"""The data that flows between the stages: proposals, an image's features, an expression's result.

Plain dataclasses over NumPy arrays (and, in :class:`ImageFeatures`, tensors made elsewhere):
nothing here imports torch, so the engine, the proposal cache, the job layer and the records
can use them without loading a model library.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .errors import ProposalError
from .masks import encode_rle, masks_boxes

if TYPE_CHECKING:
    from torch import Tensor

    from .spatial import SpatialDecision

#: How many ranked proposals a record, a page or an API answer lists when not told otherwise.
DEFAULT_TOP_K = 5


@dataclass
class Proposals:
    """Class-agnostic mask proposals of one image.

    ``masks`` is ``[N, H, W]`` bool at the image's resolution, ``scores`` ``[N]`` (higher is
    better, generator-specific), ``boxes`` ``[N, 4]`` tight ``x1, y1, x2, y2`` (exclusive ends),
    ``areas`` ``[N]`` pixels per mask: counted once, where the proposals are made (a worker
    process), since scoring and evaluation both need them (100 masks: 10-30 ms a count).

    A prompted generator (SAM 3) also says which noun phrase each proposal was found for:
    ``prompts`` ``[N]`` (``""`` for a class-agnostic one, which every expression may choose),
    and ``presence``, its confidence that each phrase's concept is in the image at all.

    ``packed``, where the proposals crossed processes, is ``masks`` packed 8 pixels a byte along
    each row (``np.packbits(masks, axis=-1)``): what a GPU model stage uploads, an eighth of the
    bytes, and unpacks on the device (:func:`zsris.visual.masks_on`).
    """

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray = field(default=None)  # type: ignore[assignment]
    areas: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    prompts: Optional[np.ndarray] = field(default=None, repr=False)
    presence: Optional[dict[str, float]] = field(default=None, repr=False)
    packed: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.masks.ndim != 3:
            raise ProposalError(f"proposal masks must be [N, H, W], got shape {self.masks.shape}")
        # one layout whatever made them (pycocotools decodes column-major): torch's matrix products on
        # the masks then sum in one order, and a worker's masks score as those made here, to the bit
        self.masks = np.ascontiguousarray(self.masks)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.scores) != len(self.masks):
            raise ProposalError(f"{len(self.masks)} masks but {len(self.scores)} scores")
        if self.boxes is None:
            self.boxes = masks_boxes(self.masks)
        if self.areas is None:
            self.areas = np.count_nonzero(self.masks, axis=(1, 2))
        if self.prompts is not None:
            self.prompts = np.asarray(self.prompts, dtype=object).reshape(-1)
            if len(self.prompts) != len(self.masks):
                raise ProposalError(f"{len(self.masks)} masks but {len(self.prompts)} prompts")
        if self.packed is not None:
            count, height, width = self.masks.shape
            if self.packed.dtype != np.uint8 or self.packed.shape != (count, height, (width + 7) // 8):
                raise ProposalError(f"packed masks of {self.packed.dtype} {self.packed.shape} do not pack "
                                    f"{count} masks of {height}x{width}")

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def select(self, index: np.ndarray) -> "Proposals":
        return Proposals(self.masks[index], self.scores[index], self.boxes[index], self.areas[index],
                         None if self.prompts is None else self.prompts[index], self.presence,
                         None if self.packed is None else self.packed[index])

    def packed_bits(self) -> np.ndarray:
        """``packed``, or the masks packed now where they never crossed processes."""
        return self.packed if self.packed is not None else np.packbits(self.masks, axis=-1)

    def candidates(self, phrase: Optional[str]) -> np.ndarray:
        """The proposals an expression with the noun phrase ``phrase`` may choose: all of them,
        or with a prompted generator the phrase's own instances and the class-agnostic ones
        (those alone for an expression without a noun phrase, ``None``)."""
        if self.prompts is None:
            return np.arange(len(self))
        return np.flatnonzero((self.prompts == phrase) | (self.prompts == ""))

    def non_empty(self) -> "Proposals":
        return self.select(np.flatnonzero(self.areas))

    @classmethod
    def empty(cls, height: int, width: int) -> "Proposals":
        return cls(np.zeros((0, height, width), dtype=bool), np.zeros(0, dtype=np.float32))


@dataclass
class ImageFeatures:
    """Everything about an image that does not depend on the expression."""

    proposals: Proposals
    global_features: "Tensor"
    local_features: "Tensor"
    visual_features: "Tensor"  # fused, L2-normalised


@dataclass
class RankedProposal:
    """One proposal's scores against one expression (cosine similarities)."""

    index: int
    score: float
    global_score: Optional[float]  # None for a method without a global part (the baselines)
    local_score: Optional[float]
    box: tuple[int, int, int, int]
    area: int


@dataclass
class Scores:
    """Every proposal's scores against one expression: ``fused`` (what ranks them), ``global_``
    and ``local`` (``[N]`` float32 each; None for a method without these parts), and ``order``,
    the proposals by fused score, best first (ties in proposal order). Kept whole, so that a
    ranking of any length, a margin or a threshold can be asked of a result after the fact."""

    fused: np.ndarray
    global_: Optional[np.ndarray]
    local: Optional[np.ndarray]
    order: np.ndarray


def _part(scores: Optional[np.ndarray], index: int) -> Optional[float]:
    return None if scores is None else float(scores[index])


@dataclass
class Answer:
    """What the decision made of the scores (:func:`zsris.decide.decide`): the chosen proposal
    (-1 for none), the score it was judged by, whether an object was found, and the proposals
    united in the mask."""

    index: int
    score: float
    found: bool = True
    members: list[int] = field(default_factory=list)
    spatial: Optional["SpatialDecision"] = None


@dataclass
class SegmentResult:
    """The answer for one expression: the chosen proposal's mask, and every proposal's scores.

    ``ranked(k)`` lists the ``k`` best proposals by fused score; ``scores`` keeps all of them.
    Saving, drawing and explaining a result are :mod:`zsris.present`'s (``zsris.save_result``,
    ``zsris.overlay``, ``zsris.explain``)."""

    expression: str
    noun_phrase: str
    mask: np.ndarray
    score: float
    box: tuple[int, int, int, int]
    proposal_index: int
    scores: Scores
    proposals: Proposals = field(repr=False)
    spatial: Optional["SpatialDecision"] = None  # with spatial="on": what the position words did
    found: bool = True  # False: the best score fell below the no-target threshold; the mask is empty
    proposal_indices: list[int] = field(default_factory=list)  # the proposals united in the mask
    prompt: Optional[dict[str, Any]] = None  # with a prompted generator: what it was told, and what decided
    candidates: Optional[list[int]] = field(default=None, repr=False)  # prompted: the image proposals chosen among
    method_record: Optional[dict[str, Any]] = None  # a method's own account of its choice (HybridGL's two answers)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.mask.shape[0]), int(self.mask.shape[1])

    @property
    def image_proposal_index(self) -> int:
        """The chosen proposal's index among the image's proposals (``proposal_index`` counts
        among the expression's candidates, which with a prompted generator are fewer)."""
        if self.candidates is None or self.proposal_index < 0:
            return self.proposal_index
        return self.candidates[self.proposal_index]

    def ranked(self, k: Optional[int] = DEFAULT_TOP_K) -> list[RankedProposal]:
        """The ``k`` best proposals (all of them for None), best first."""
        scores, proposals = self.scores, self.proposals
        return [
            RankedProposal(int(i), float(scores.fused[i]), _part(scores.global_, i), _part(scores.local, i),
                           tuple(int(v) for v in proposals.boxes[i]), int(proposals.areas[i]))
            for i in scores.order[: None if k is None else max(k, 1)]
        ]

    def within(self, margin: float) -> list[int]:
        """The proposals whose fused score is within ``margin`` of the best, best first (compared
        in double precision)."""
        fused, order = self.scores.fused, self.scores.order
        best = float(fused[order[0]])
        return [int(i) for i in order if float(fused[i]) >= best - margin]

    def to_dict(self, image: Optional[str] = None, top_k: Optional[int] = DEFAULT_TOP_K) -> dict[str, Any]:
        """The JSON record (what `zsris segment` writes and the API returns): COCO RLE mask, box
        (x1, y1, x2, y2; null when nothing was found), score and the ``top_k`` best proposals."""
        height, width = self.image_size
        return {
            "image": image,
            "image_size": [height, width],
            "expression": self.expression,
            "noun_phrase": self.noun_phrase,
            "found": self.found,
            "score": self.score,
            "box": list(self.box) if self.found else None,
            "proposal_index": self.proposal_index,
            **({"proposal_indices": self.proposal_indices} if len(self.proposal_indices) > 1 else {}),
            "mask": encode_rle(self.mask),
            "top_proposals": [
                {"index": r.index, "score": r.score, "global_score": r.global_score, "local_score": r.local_score,
                 "box": list(r.box), "area": r.area}
                for r in self.ranked(top_k)
            ],
            **({"spatial": self.spatial.record()} if self.spatial is not None else {}),
            **({"prompt": self.prompt} if self.prompt is not None else {}),
            **({"method": self.method_record} if self.method_record is not None else {}),
        }
