"""Records: what `zsris segment` and `zsris batch` write, the HTTP API returns and an evaluation
stores per sentence, as typed objects with machine keys, and their JSON form.

The JSON forms are those zsris has always written (the stores of earlier runs still read):
:func:`result_record` for an answer, :class:`PairRecord` for a batch pair, and
:class:`SentenceRecord` for an evaluated sentence. Display labels are :mod:`zsris.report`'s.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .types import DEFAULT_TOP_K, SegmentResult

if TYPE_CHECKING:
    from .config import SegmenterConfig
    from .segmenter import Segmenter


class _Absent:
    """The value of a record field that its JSON form leaves out (not the same as null)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


class NamedTwice(ValueError):
    """A JSON object names a key twice; the exception's text is the key, quoted."""


def once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for JSON that people write (a manifest row, a proposals file): the
    object :mod:`json` would make, but a key named twice raises :class:`NamedTwice`, where
    :mod:`json` keeps the last value in silence and the file would mean whichever came last."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise NamedTwice(repr(key))
        found[key] = value
    return found


def settings(segmenter: "Segmenter", config: Optional["SegmenterConfig"] = None) -> dict[str, Any]:
    """The settings that produced a result, so a record says how to reproduce it: the config's
    (:meth:`SegmenterConfig.settings`; ``config``, where a server's request changed some of the
    segmenter's), with what was actually loaded where the config leaves it open: the backbone's
    canonical name, the weights it resolved to, the proposal generator's cache key (its settings
    and version) and the spaCy pipeline that parsed the expressions."""
    return {
        **(config or segmenter.config).settings(),
        "backbone": segmenter.backbone.name,
        "weights": segmenter.backbone.weights,
        "proposal_generator": getattr(segmenter.proposals, "cache_key", type(segmenter.proposals).__name__),
        "parser": segmenter.parser.info,
    }


def result_record(result: SegmentResult, image: str | None = None,
                  top_k: Optional[int] = DEFAULT_TOP_K) -> dict[str, Any]:
    """A result's JSON record (:meth:`SegmentResult.to_dict`): COCO RLE mask, box (x1, y1, x2,
    y2), score and the ``top_k`` best proposals."""
    return result.to_dict(image, top_k)


@dataclass
class PairRecord:
    """A batch pair's record: its answer (:func:`result_record`), or why there is none."""

    id: str
    image: str
    expression: Any
    result: Optional[dict[str, Any]] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.ok:
            return {"id": self.id, **(self.result or {})}
        return {"id": self.id, "image": self.image, "expression": self.expression, "error": self.error}


@dataclass
class SentenceRecord:
    """One evaluated sentence: what was chosen and how it overlaps the target.

    ``intersection``/``union``/``iou`` are the chosen mask's against the target;
    ``oracle_*`` the best proposal's (the method's ceiling; absent for a failed image);
    ``error`` says why an image could not be processed (its sentences count with IoU 0);
    ``no_target``, ``ann_ids``, ``found`` and ``margin_iu`` (the union of the proposals within
    each calibration margin of the best, as intersection and union) exist for gRefCOCO only;
    ``pure_*`` for a method that keeps a second answer (HybridGL without spatial guidance).
    Fields left :data:`ABSENT` are left out of the JSON form."""

    sent_id: int
    ref_id: int
    ann_id: Any
    image_id: int
    expression: str
    gt_category: Optional[int]
    num_proposals: int
    oracle_iou: Any = ABSENT
    oracle_intersection: Any = ABSENT
    oracle_union: Any = ABSENT
    proposal_index: int = -1
    score: Optional[float] = None
    noun_phrase: Optional[str] = None
    chosen_category: Optional[int] = None
    intersection: int = 0
    union: int = 0
    iou: float = 0.0
    error: Any = ABSENT
    no_target: Any = ABSENT
    ann_ids: Any = ABSENT
    found: Any = ABSENT
    margin_iu: Any = ABSENT
    pure_intersection: Any = ABSENT
    pure_union: Any = ABSENT
    pure_iou: Any = ABSENT

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not ABSENT}
