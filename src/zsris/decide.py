"""From scores to an answer: one pure function over every proposal's scores.

The model scores every proposal against an expression (:class:`~zsris.types.Scores`); what
is done with those scores is decided here, apart from the scoring, so that each rule can be
read, tested and changed alone. In order:

1. the paper: the best fused score wins;
2. ``spatial``: the target's position, order and size words choose among the noun phrase's
   candidates instead (:func:`zsris.spatial.rectify`);
3. ``no_target_threshold``: a chosen score below it answers "no such object";
4. ``multi_target``: the proposals within ``multi_target_margin`` of the chosen score join it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from .config import DEFAULT_MULTI_TARGET_MARGIN
from .masks import masks_boxes
from .spatial import ParsedSpatial, rectify
from .types import Answer, Proposals, Scores, SegmentResult

if TYPE_CHECKING:
    from .config import SegmenterConfig
    from .text import ParsedExpression


@dataclass(frozen=True)
class Policy:
    """The decision rules in force (all off: the paper's answer, always one mask)."""

    spatial: bool = False
    no_target_threshold: Optional[float] = None
    multi_target: bool = False
    multi_target_margin: float = DEFAULT_MULTI_TARGET_MARGIN

    @classmethod
    def from_config(cls, config: "SegmenterConfig") -> "Policy":
        return cls(config.spatial == "on", config.no_target_threshold, config.multi_target,
                   config.multi_target_margin)


def decide(scores: Scores, proposals: Proposals, policy: Policy, cues: Optional[ParsedSpatial] = None,
           phrase_scores: Optional[np.ndarray] = None, chosen: Optional[int] = None) -> Answer:
    """The answer the ``policy`` gives for one expression. ``cues`` and ``phrase_scores`` (the
    noun phrase alone against each proposal) serve the spatial rule and are needed only with it.
    ``chosen``: the method's own choice (HybridGL's), which takes the place of the best score and
    of the spatial rule; the threshold and multi-target rules apply to it as to any."""
    best, spatial = (int(scores.order[0]) if chosen is None else int(chosen)), None
    if policy.spatial and chosen is None:
        if phrase_scores is None:
            raise ValueError("the spatial rule needs the noun phrase's scores")
        spatial = rectify(cues or ParsedSpatial(), proposals.masks, phrase_scores, scores.fused)
        best = spatial.chosen
    score = float(scores.fused[best])
    threshold = policy.no_target_threshold
    if threshold is not None and score < threshold:
        return Answer(-1, score, found=False, spatial=spatial)
    members = [best]
    if policy.multi_target:
        # compared in the scores' own precision (float32), as the scores were made
        within = np.flatnonzero(scores.fused >= np.float32(score - policy.multi_target_margin))
        members += [int(i) for i in within if int(i) != best]
    return Answer(best, score, members=members, spatial=spatial)


def segment_result(parse: "ParsedExpression", scores: Scores, proposals: Proposals, answer: Answer) -> SegmentResult:
    """The result of ``answer``: an empty mask where nothing was found, else the chosen proposal's
    mask (the union of the members' with several, and its tight box)."""
    if not answer.found:
        empty = np.zeros(proposals.image_size, dtype=bool)
        return SegmentResult(parse.raw, parse.noun_phrase, empty, answer.score, (0, 0, 0, 0), -1, scores, proposals,
                             answer.spatial, found=False)
    best = answer.index
    mask, box = proposals.masks[best], proposals.boxes[best]
    if len(answer.members) > 1:
        mask = proposals.masks[answer.members].any(axis=0)
        box = masks_boxes(mask[None])[0]
    return SegmentResult(parse.raw, parse.noun_phrase, mask, answer.score, tuple(int(v) for v in box), best,
                         scores, proposals, answer.spatial, proposal_indices=list(answer.members))
