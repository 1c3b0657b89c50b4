"""The fourth stage: a method's scores to one result per expression.

A method scores every expression against every proposal of an image (:class:`ScoreTable`); what
each expression may choose among is its generator's (:func:`zsris.proposals.prompting`: every
proposal, or with SAM 3 its noun phrase's instances and the class-agnostic ones, or nothing when
the phrase is absent), and what it answers is :func:`zsris.decide.decide`'s. This module joins
the three, the same for every method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .decide import Policy, decide, segment_result
from .errors import ZsrisError
from .proposals.base import Prompting
from .text import ParsedExpression
from .types import Answer, Proposals, Scores, SegmentResult


@dataclass
class ScoreTable:
    """Every expression (rows) against every proposal (columns), on the CPU: ``fused`` ranks
    them; ``global_`` and ``local`` are the parts a record shows (None for a method without
    them); ``phrase`` (the noun phrase alone, where asked for) picks the spatial rule's candidates.
    A method with its own rule of choice (HybridGL's spatial guidance) gives each row's answer as
    ``choice`` (a proposal index, in place of the best fused score) and what its record should
    keep of it as ``records``."""

    fused: Tensor
    global_: Optional[Tensor] = None
    local: Optional[Tensor] = None
    phrase: Optional[Tensor] = None
    choice: Optional[list[int]] = None
    records: Optional[list[dict]] = None

    def parts(self, row: int, index: Optional[Tensor] = None) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """Row ``row``'s global and local scores (of the proposals ``index``), None where absent."""
        def part(table: Optional[Tensor]) -> Optional[np.ndarray]:
            if table is None:
                return None
            return (table[row] if index is None else table[row][index]).numpy()

        return part(self.global_), part(self.local)


def results(table: ScoreTable, parsed: Sequence[ParsedExpression], proposals: Proposals, policy: Policy,
            prompting: Prompting) -> list[SegmentResult]:
    """One result per expression, each keeping all its candidates' scores and the answer the
    ``policy`` gives among them."""
    order = torch.argsort(table.fused, dim=1, descending=True, stable=True)
    phrase_scores = None if table.phrase is None else table.phrase.numpy()
    answers = []
    for row, parse in enumerate(parsed):
        phrase = None if phrase_scores is None else phrase_scores[row]
        candidates = prompting.candidates(parse.noun_phrase if parse.has_noun_phrase else None, proposals)
        if candidates.rows is None:
            scores = Scores(table.fused[row].numpy(), *table.parts(row), order[row].numpy())
            chosen = None if table.choice is None else table.choice[row]
            answers.append(segment_result(parse, scores, proposals, decide(scores, proposals, policy, parse.spatial,
                                                                           phrase, chosen)))
            if table.records is not None:
                answers[-1].method_record = table.records[row]
            continue
        if table.choice is not None:
            raise ZsrisError("a method that makes its own choice chooses among every proposal; "
                             "a prompted generator's candidates are not for it")
        answers.append(_among(table, row, parse, proposals, policy, candidates.rows, candidates.refusal,
                              candidates.record, phrase))
    return answers


def _among(table: ScoreTable, row: int, parse: ParsedExpression, proposals: Proposals, policy: Policy,
           rows: np.ndarray, refusal: Optional[str], record: dict, phrase_scores: Optional[np.ndarray]
           ) -> SegmentResult:
    """One expression's answer among its own candidates ``rows``; a ``refusal`` (the generator's
    reason, such as a phrase's absence) answers "no such object" whatever the scores. The result's
    indices are the candidates'; its ``prompt`` record says what the generator was told and what
    decided."""
    index = torch.from_numpy(rows)
    fused = table.fused[row][index]
    scores = Scores(fused.numpy(), *table.parts(row, index), torch.argsort(fused, descending=True, stable=True).numpy())
    candidates = proposals.select(rows)
    best = float(fused.max()) if len(rows) else -1.0
    record = dict(record)
    if refusal is not None:
        answer, record["decided_by"] = Answer(-1, best, found=False), refusal
    else:
        answer = decide(scores, candidates, policy, parse.spatial,
                        None if phrase_scores is None else phrase_scores[rows])
        record["decided_by"] = "clip" if answer.found else "no_target_threshold"
    result = segment_result(parse, scores, candidates, answer)
    result.prompt, result.candidates = record, rows.tolist()
    return result
