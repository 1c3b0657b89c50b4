"""Spatial words: parse position, order and size words of the target, and re-rank by geometry.

CLIP barely sees where an object is, so "the left lion" often gets the wrong lion. Following
the training-free spatial rectifier of TAS (Suo et al., EMNLP 2023), the words that place the
*target* are read from the dependency parse and decide among the candidates that the noun
phrase alone scores highest. The paper's method is unchanged where no such word is found, and
the whole step is off by default (``spatial="off"``) so that evaluations stay comparable.

Parsing (:func:`spatial_cues`). A word is a cue of the target when, walking up the dependency
tree from it, the first noun reached (skipping nouns that only name a place: side, corner,
part ...) is the target's root, or when no noun lies above it (it governs the expression, as
"left" parsed as a verb in "left woman"). The target is the noun phrase's root, or where that
is a word of place itself ("arm bottom right"), the expression's first noun naming an object.
So "the man next to the woman on the left" leaves "left" to the woman; and a position word
with an object of its own ("left of the laptop", "to the right of the plate", "under the
table") relates the target to another object and is left alone (relations are not handled). The words:

- sides: left, right, top, bottom and their synonyms (upper, lower, western, above ...);
  superlatives (leftmost, lowest, uppermost ...) or a side after "far", "very", "most" or
  "extreme" mean the one at that end;
- middle, center, centre, central;
- ordinals counted from a side: "second from the left", "third one from right";
- size: big, large, huge, small, tiny, little (positive), and their comparatives and
  superlatives (biggest, smaller ...), which mean the extreme.

Geometry (:func:`rectify`). The candidates are the proposals in order of the noun phrase's own
score, one per object (a proposal overlapping an earlier candidate at IoU >= 0.5 is the same
object seen again), at most eight: enough for a row of objects, few enough that background
pieces do not count as objects. Then, in the order the words come:

- a plain side word keeps the candidates strictly on that side of the candidates' median
  centroid (TAS's median split), a plain size word those whose area lies strictly on that
  side of the median area: with two candidates, one; with three, one; with four, two;
- an extreme (superlative side or size) keeps the one with the smallest or largest centroid
  coordinate or area; an ordinal the n-th counted from its side; "middle" the one nearest the
  candidates' median centroid along the axis on which they spread most;
- the answer is the remaining candidate with the best fused score (the paper's score).

A word that would keep nothing (a single candidate, an ordinal past the count) is not applied,
and the decision says so. No threshold here is fitted to data: none could be measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

#: side words -> (axis, direction): axis 0 is x (left -1, right +1), 1 is y (top -1, bottom +1)
SIDES = {
    "left": (0, -1), "lefthand": (0, -1), "west": (0, -1), "western": (0, -1),
    "right": (0, 1), "righthand": (0, 1), "east": (0, 1), "eastern": (0, 1),
    "leftside": (0, -1), "lft": (0, -1), "rightside": (0, 1), "rt": (0, 1),
    "top": (1, -1), "upper": (1, -1), "above": (1, -1),
    "bottom": (1, 1), "lower": (1, 1), "below": (1, 1), "under": (1, 1), "underneath": (1, 1), "beneath": (1, 1),
}
#: superlatives of side words: the one at that end
SIDE_EXTREMES = {
    "leftmost": (0, -1), "rightmost": (0, 1), "topmost": (1, -1), "uppermost": (1, -1), "highest": (1, -1),
    "bottommost": (1, 1), "lowermost": (1, 1), "lowest": (1, 1), "westernmost": (0, -1), "easternmost": (0, 1),
}
#: words that make the side word after them an extreme: "far left", "very top"
INTENSIFIERS = frozenset(("far", "very", "most", "extreme", "furthest", "farthest", "way"))  # "all the way left"
MIDDLE = frozenset(("middle", "center", "centre", "central", "centered", "centred", "mid"))
#: size words -> (direction, extreme): +1 larger, -1 smaller
SIZES = {
    "big": (1, False), "large": (1, False), "huge": (1, False), "giant": (1, False),
    "bigger": (1, True), "biggest": (1, True), "larger": (1, True), "largest": (1, True),
    "small": (-1, False), "tiny": (-1, False), "little": (-1, False),
    "smaller": (-1, True), "smallest": (-1, True), "tinier": (-1, True), "tiniest": (-1, True),
    "littlest": (-1, True),
}
ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
            "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5, "6th": 6}
#: nouns that name a place rather than an object ("on the left side", "in the top corner")
PLACE_NOUNS = frozenset(("side", "corner", "part", "end", "edge", "half", "area", "section", "portion", "row",
                         "column", "back", "front", "bottom", "top", "middle", "center", "centre", "left", "right"))
#: what "of the ..." may name without making a side word relational ("left of the picture")
SCENE_NOUNS = frozenset(("picture", "photo", "image", "pic", "photograph", "frame", "screen", "shot", "scene",
                         "view", "pict", "pics", "photos", "pictures"))
MAX_CANDIDATES = 8
SAME_OBJECT_IOU = 0.5


@dataclass(frozen=True)
class SpatialCue:
    """One word (or phrase) that places the target. ``kind``: ``side`` (a median split),
    ``extreme`` (the end of an axis), ``ordinal`` (n-th from a side), ``middle``, ``size``
    (median split by area) or ``size-extreme``. ``axis`` 0 is x, 1 y, 2 area; ``direction``
    -1 towards left / top / smaller, +1 the other way."""

    words: str
    kind: str
    axis: int = 0
    direction: int = 0
    rank: int = 0


@dataclass(frozen=True)
class ParsedSpatial:
    """The cues of the target, and the spatial words left alone, with the reason."""

    cues: tuple[SpatialCue, ...] = ()
    ignored: tuple[str, ...] = ()


def _is_nounish(token) -> bool:
    return token.pos_ in ("NOUN", "PROPN", "PRON") or (token.pos_ == "NUM" and token.lower_ == "one")


def _owner(token):
    """The noun a spatial word describes: the first noun up the tree that is not a place noun."""
    current = token
    for _ in range(len(token.doc)):
        if current.head.i == current.i:
            named = _is_nounish(current) and current.lower_ not in PLACE_NOUNS
            return current if named and current.i != token.i else None
        current = current.head
        if _is_nounish(current) and current.lower_ not in PLACE_NOUNS:
            return current
    return None


def _object_of(token) -> Optional[str]:
    """The noun a position word relates to ("left of the laptop" -> laptop), scene nouns excluded."""
    for child in token.children:
        if child.dep_ == "prep" and child.lower_ in ("of", "to", "from"):
            for grandchild in child.children:
                if grandchild.dep_ == "pobj" and _is_nounish(grandchild) and grandchild.lower_ not in SCENE_NOUNS \
                        and grandchild.lower_ not in SIDES and grandchild.lower_ not in PLACE_NOUNS - {"back"}:
                    return grandchild.text
    if token.lower_ in ("above", "below", "under", "underneath", "beneath"):
        for child in token.children:
            if child.dep_ == "pobj":
                return child.text
    return None


def _side_of_from(token):
    """The side word of "from the right" (or "on the left": "first person on left") hanging
    below ``token`` (an ordinal or the target)."""
    for child in token.children:
        if child.dep_ == "prep" and child.lower_ in ("from", "on", "at", "in"):
            for grandchild in child.children:
                if grandchild.lower_ in SIDES:
                    return grandchild
    return None


def _side_after(ordinal):
    """The side word of a "from (the) right" within four words after ``ordinal``, whatever the
    parse made of it ("2nd from bottom case")."""
    doc = ordinal.doc
    for j in range(ordinal.i + 1, min(len(doc) - 1, ordinal.i + 5)):
        if doc[j].lower_ == "from":
            following = doc[j + 2] if doc[j + 1].lower_ == "the" and j + 2 < len(doc) else doc[j + 1]
            return following if following.lower_ in SIDES else None
    return None


def _object_noun(doc, target):
    """The noun that the spatial words place: the target phrase's root, unless that is itself a
    word of place or no noun ("arm bottom right", "bear on right" parsed without a noun chunk);
    then the first noun of the expression that names an object. None if there is none."""
    def names_object(token) -> bool:
        return _is_nounish(token) and names_object_word(token.lower_)
    if target is not None and names_object(target):
        return target
    noun = next((token for token in doc if names_object(token) and token.pos_ != "PRON"), None)
    if noun is not None:
        return noun
    # no noun at all: a noun the tagger took for a verb ("bear on right") is still the object
    return next((token for token in doc if token.pos_ in ("VERB", "X") and names_object_word(token.lower_)), None)


def names_object_word(word: str) -> bool:
    """Whether ``word`` may name an object: it is none of the spatial words."""
    groups = (SIDES, MIDDLE, PLACE_NOUNS, SIDE_EXTREMES, ORDINALS, SIZES, INTENSIFIERS)
    return not any(word in group for group in groups)


def spatial_cues(doc, target) -> ParsedSpatial:
    """The cues of ``target`` (the target noun phrase's root token) in the parsed ``doc``."""
    words = [t for t in doc if t.lower_ in SIDES or t.lower_ in SIDE_EXTREMES or t.lower_ in MIDDLE
             or t.lower_ in SIZES or t.lower_ in ORDINALS]
    if not words:
        return ParsedSpatial()
    target = _object_noun(doc, target)
    if target is None:
        return ParsedSpatial(ignored=tuple(f"{t.text} (no target noun)" for t in words))
    cues: list[SpatialCue] = []
    ignored: list[str] = []
    used: set[int] = set()
    for token in words:
        if token.i in used:
            continue
        word = token.lower_
        if word in ORDINALS:
            side = _side_of_from(token) or _side_after(token) or _side_of_from(target)
            if side is None:
                ignored.append(f"{token.text} (no side to count from)")
                continue
            owner = _owner(token)
            if owner is not None and owner.i != target.i and token.head.i != target.i:
                ignored.append(f"{token.text} (describes another object)")
                continue
            axis, direction = SIDES[side.lower_]
            cues.append(SpatialCue(f"{token.text} from {side.text}", "ordinal", axis, direction, ORDINALS[word]))
            used.add(side.i)
            continue
        owner = _owner(token)
        if owner is not None and owner.i != target.i:  # no noun above it: it governs the whole expression
            ignored.append(f"{token.text} (describes '{owner.text}')")
            continue
        other = _object_of(token)
        if other is not None:
            ignored.append(f"{token.text} (relates to '{other}')")
            continue
        if word in SIZES:
            direction, extreme = SIZES[word]
            cues.append(SpatialCue(token.text, "size-extreme" if extreme else "size", 2, direction))
        elif word in MIDDLE:
            cues.append(SpatialCue(token.text, "middle"))
        elif word in SIDE_EXTREMES:
            axis, direction = SIDE_EXTREMES[word]
            cues.append(SpatialCue(token.text, "extreme", axis, direction))
        else:
            axis, direction = SIDES[word]
            intensifier = next((c for c in token.children if c.lower_ in INTENSIFIERS), None)
            if intensifier is None and token.i > 0 and doc[token.i - 1].lower_ in INTENSIFIERS:
                intensifier = doc[token.i - 1]
            if intensifier is not None:
                cues.append(SpatialCue(f"{intensifier.text} {token.text}", "extreme", axis, direction))
            elif token.i + 1 < len(doc) and doc[token.i + 1].lower_ == "most":  # "right most"
                cues.append(SpatialCue(f"{token.text} most", "extreme", axis, direction))
            else:
                cues.append(SpatialCue(token.text, "side", axis, direction))
    return ParsedSpatial(tuple(cues), tuple(ignored))


@dataclass
class SpatialDecision:
    """What the spatial words did to one answer: the candidates, each word's effect, the choice."""

    candidates: list[int]
    kept: list[int]
    chosen: int
    paper_choice: int
    steps: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.chosen != self.paper_choice

    def summary(self) -> str:
        """One line for people: "left: 3 of 7 candidates kept; changed the answer"."""
        parts = list(self.steps) + [f"ignored {word}" for word in self.ignored]
        if not self.steps and not self.ignored:
            return "no spatial words"
        outcome = "changed the answer" if self.changed else "the answer stays the paper's"
        return "; ".join(parts + [outcome]) if self.steps else "; ".join(parts)

    def record(self) -> dict:
        return {"applied": self.steps, "ignored": self.ignored, "candidates": self.candidates, "kept": self.kept,
                "chosen": self.chosen, "paper_choice": self.paper_choice, "changed": self.changed,
                "summary": self.summary()}


def candidates(masks: np.ndarray, phrase_scores: np.ndarray, limit: int = MAX_CANDIDATES,
               same_object_iou: float = SAME_OBJECT_IOU) -> list[int]:
    """Proposals in order of the noun phrase's score, one per object (see the module's docstring)."""
    from .masks import iou_matrix

    kept: list[int] = []
    for index in np.argsort(-phrase_scores, kind="stable"):
        if kept and iou_matrix(masks[[index]], masks[kept])[0].max() >= same_object_iou:
            continue
        kept.append(int(index))
        if len(kept) == limit:
            break
    return kept


def _centroids(masks: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """``[n, 3]``: centroid x, centroid y and area of each proposal."""
    rows = []
    for index in indices:
        ys, xs = np.nonzero(masks[index])
        rows.append((xs.mean(), ys.mean(), float(len(xs))) if len(xs) else (np.nan, np.nan, 0.0))
    return np.array(rows, dtype=np.float64).reshape(len(indices), 3)


def _apply(cue: SpatialCue, kept: list[int], geometry: dict[int, np.ndarray]) -> tuple[list[int], str]:
    """The candidates that ``cue`` keeps, and a line saying so (the same list if it cannot apply)."""
    values = np.array([geometry[i][cue.axis] for i in kept])
    name = cue.words
    if cue.kind in ("side", "size"):
        median = float(np.median(values))
        chosen = [i for i, v in zip(kept, values) if (v - median) * cue.direction > 0]
    elif cue.kind in ("extreme", "size-extreme"):
        chosen = [kept[int(np.argmin(values * cue.direction * -1))]]
    elif cue.kind == "ordinal":
        if cue.rank > len(kept):
            return kept, f"{name}: not applied (only {len(kept)} candidates)"
        order = np.argsort(values * -cue.direction, kind="stable")  # from the named side inwards
        chosen = [kept[int(order[cue.rank - 1])]]
    else:  # middle: along the axis on which the candidates spread most
        points = np.array([geometry[i][:2] for i in kept])
        axis = int(np.argmax(points.std(axis=0))) if len(kept) > 1 else 0
        distance = np.abs(points[:, axis] - np.median(points[:, axis]))
        chosen = [i for i, d in zip(kept, distance) if d == distance.min()]
    if not chosen or len(kept) < 2:
        return kept, f"{name}: not applied ({len(kept)} candidate{'s' if len(kept) != 1 else ''})"
    return chosen, f"{name}: {len(chosen)} of {len(kept)} candidates kept"


def rectify(parsed: ParsedSpatial, masks: np.ndarray, phrase_scores: np.ndarray,
            scores: np.ndarray) -> SpatialDecision:
    """The proposal that ``parsed``'s cues choose: among the noun phrase's candidates, those the
    cues keep, the best by ``scores`` (the paper's fused score). Without cues, the paper's choice."""
    paper = int(np.argmax(scores))
    if not parsed.cues:
        return SpatialDecision([], [], paper, paper, ignored=list(parsed.ignored))
    pool = candidates(masks, phrase_scores)
    geometry = dict(zip(pool, _centroids(masks, pool)))
    kept, steps = list(pool), []
    order = sorted(parsed.cues, key=lambda c: c.kind not in ("side", "size"))  # splits first, then choices
    for cue in order:
        kept, step = _apply(cue, kept, geometry)
        steps.append(step)
    chosen = max(kept, key=lambda i: (scores[i], -i))
    return SpatialDecision(pool, kept, int(chosen), paper, steps, list(parsed.ignored))
