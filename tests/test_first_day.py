"""A newcomer's first day (#25): output names that never collide or overwrite, a predictor-style
Python API that pays for an image once, and the small edges of the command line."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsris import EXAMPLE_IMAGE, Predictor, overlay, save_result
from zsris.cli import main
from zsris.names import claim_stem, slug
from zsris.proposals import ClassicalProposals
from zsris.render import OUTLINE_COLOUR, draw_overlay
from zsris.segmenter import Segmenter

FAST = ["--weights", "random", "--max-proposals", "4"]


@pytest.fixture(scope="module")
def segmenter(tiny_vit) -> Segmenter:
    with pytest.warns(Warning):
        return Segmenter(tiny_vit, ClassicalProposals(max_proposals=6))


def test_a_folder_batch_keeps_the_overlays_of_images_that_share_a_stem(tmp_path, capsys):
    folder = tmp_path / "coll"
    folder.mkdir()
    Image.open(EXAMPLE_IMAGE).convert("RGB").save(folder / "bars.jpg")
    Image.open(EXAMPLE_IMAGE).transpose(Image.FLIP_LEFT_RIGHT).save(folder / "bars.png")
    out = tmp_path / "out"
    assert main(["batch", str(folder), "-e", "the red dot", "--save-overlays", "--save-masks", "-o", str(out),
                 *FAST]) == 0
    for kind in ("overlays", "masks"):
        assert sorted(p.name for p in (out / kind).iterdir()) == ["bars.jpg--e1.png", "bars.png--e1.png"]
    printed = capsys.readouterr().out
    assert "time (this run)" not in printed and "-v" in printed  # two images: no 11-row timing table


def test_segment_names_say_the_run_and_never_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(EXAMPLE_IMAGE), "the blue square", "the blue square", "-o", str(out), *FAST]) == 0
    assert main(["segment", str(EXAMPLE_IMAGE), "the blue square", "-o", str(out), "--backbone", "RN50",
                 *FAST]) == 0
    records = sorted(out.glob("*.json"))
    assert len(records) == 3 and len(list(out.glob("*.mask.png"))) == 3 and len(list(out.glob("*.overlay.png"))) == 3
    names = [p.name for p in records]
    assert all(name.startswith("shapes.png--the-blue-square--") for name in names)
    runs = {name.split("--")[2][:8] for name in names}
    assert len(runs) == 2  # ViT-B/32 and RN50 runs are told apart by name
    backbones = sorted(json.loads(p.read_text())["settings"]["backbone"] for p in records)
    assert backbones == ["RN50", "ViT-B-32", "ViT-B-32"]
    assert any(name.endswith("-2.json") for name in names)  # the repeated expression added, not overwrote
    printed = capsys.readouterr().out
    assert all(str(path)[:-len(".json")] in printed for path in records)


def test_slugs_keep_expressions_apart_and_names_are_claimed(tmp_path):
    assert slug("the blue square") == "the-blue-square"
    assert len({slug("the dog!"), slug("the dog?"), slug("the dog")}) == 3
    assert len(slug("a " * 100)) <= 48
    first = claim_stem(tmp_path, "x", (".json", ".png"))
    second = claim_stem(tmp_path, "x", (".json", ".png"))
    assert first.name == "x" and second.name == "x-2" and Path(f"{first}.json").exists()


def test_the_example_image_command_prints_a_path_that_exists(capsys):
    assert main(["example-image"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == EXAMPLE_IMAGE and path.is_file()


def test_segment_takes_a_list_and_a_segmenter_is_callable(segmenter):
    image = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB"))
    results = segmenter.segment(image, ["the red circle", "the blue square"])
    assert [r.expression for r in results] == ["the red circle", "the blue square"]
    one = segmenter(image, "the blue square")
    assert one.expression == "the blue square" and one.proposal_index == results[1].proposal_index
    np.testing.assert_array_equal(one.mask, results[1].mask)


def test_the_last_images_features_are_kept_by_content(segmenter, monkeypatch):
    image = np.array(Image.open(EXAMPLE_IMAGE).convert("RGB"))
    image[0, 0] = (1, 2, 3)  # pixels no other test gave this segmenter
    calls = []
    real = segmenter.image_features
    monkeypatch.setattr(segmenter, "image_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    segmenter.segment(image.copy(), "the red circle")
    segmenter.segment(image.copy(), "the blue square")  # another array, the same pixels: no visual work
    assert len(calls) == 1
    segmenter.segment(image[::-1].copy(), "the blue square")  # other pixels: computed again
    assert len(calls) == 2


def test_the_predictor_pays_for_the_image_once(segmenter):
    predictor = Predictor(segmenter)
    with pytest.raises(Exception, match="set_image"):
        predictor.predict("the red circle")
    started = time.perf_counter()
    features = predictor.set_image(EXAMPLE_IMAGE)
    visual = time.perf_counter() - started
    started = time.perf_counter()
    answer = predictor.predict("the red circle")
    answers = predictor.predict(["the red circle", "the blue square"])
    assert len(answers) == 2 and answers[0].proposal_index == answer.proposal_index
    assert features.proposals is answer.proposals
    direct = segmenter.score(segmenter.image_features(EXAMPLE_IMAGE), ["the blue square"])[0]
    np.testing.assert_allclose(direct.scores.fused, answers[1].scores.fused, atol=1e-6)  # text batches differ
    assert time.perf_counter() - started < visual + 5  # text only (a loose bound: the point is no visual work)


def test_a_result_is_saved_and_drawn_by_the_module_functions(segmenter, tmp_path):
    result = segmenter.segment(EXAMPLE_IMAGE, "the red circle")
    base = save_result(result, tmp_path, image=EXAMPLE_IMAGE)
    assert base.name == "the-red-circle"
    record = json.loads(Path(f"{base}.json").read_text())
    assert record["expression"] == "the red circle" and record["image"] == str(EXAMPLE_IMAGE)
    assert np.array_equal(np.asarray(Image.open(f"{base}.mask.png")) > 0, result.mask)
    assert Image.open(f"{base}.overlay.png").width == result.mask.shape[1]
    assert save_result(result, tmp_path).name == "the-red-circle-2"  # a second save adds
    assert overlay(result, EXAMPLE_IMAGE).height > result.mask.shape[0]


def test_the_overlay_outlines_the_mask_so_a_red_object_keeps_it_visible():
    image = np.zeros((60, 60, 3), np.uint8)
    image[...] = (255, 64, 64)  # a red object under a red tint
    mask = np.zeros((60, 60), bool)
    mask[10:50, 10:50] = True
    drawn = np.asarray(draw_overlay(image, mask, (0, 0, 0, 0), "x"))[:60]  # no box over the outline
    assert (drawn[10, 25] == OUTLINE_COLOUR).all() and (drawn[30, 30] == (255, 64, 64)).all()


def test_eval_says_random_weights_in_its_table_and_its_bar_says_it_is_starting(refcoco_mini, tmp_path, capsys):
    from zsris.jobs.run import STARTING, progress_bar

    out = tmp_path / "eval"
    args = ["eval", "--data", str(refcoco_mini), "--split", "train", "--out", str(out), "--limit", "1"]
    assert main([*args, *FAST]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().out
    assert "RANDOM WEIGHTS" in (out / "report.md").read_text()
    with progress_bar(3, 0, "eval", True, lambda: "") as bar:
        assert bar.postfix == STARTING
        bar.update(1)
        assert not bar.postfix
