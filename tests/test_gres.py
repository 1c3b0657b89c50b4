"""Absent and multiple objects: gRefCOCO's layout and metrics, the threshold, multi-target, calibrate.

The metrics are checked on hand-computed cases; the loader, `eval` and `calibrate` on a small
gRefCOCO-format dataset built here from refcoco-mini: its own expressions (one target each),
no-target rows that name a category the image does not hold, and multi-target rows that name
every annotated object of an image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zsris.calibration import calibrate, read_calibration
from zsris.cli import main
from zsris.datasets import GRefDataset, open_dataset
from zsris.errors import DatasetError, ZsrisError
from zsris.metrics import gres_metrics, summarize
from zsris.proposals import Proposals, create_proposals
from zsris.segmenter import Segmenter

FAST = ["--weights", "random", "--max-proposals", "8", "--no-cache", "--proposal-workers", "0"]


def _row(no_target: bool, inter: int, union: int, found: bool = True) -> dict:
    return {"no_target": no_target, "intersection": inter, "union": union, "found": found,
            "iou": inter / union if union else 0.0}


# -- metrics ---------------------------------------------------------------------------------
def test_gres_metrics_on_hand_computed_cases():
    records = [
        _row(True, 0, 0, found=False),   # no target, empty answer: TP, gIoU 1
        _row(True, 0, 50, found=True),   # no target, 50 pixels answered: FN, gIoU 0, union += 50
        _row(False, 30, 60),             # target, IoU 0.5: TN
        _row(False, 0, 40, found=False),  # target, empty answer: FP, IoU 0
        _row(False, 90, 100),            # target, IoU 0.9: TN
    ]
    metrics = gres_metrics(records)
    assert metrics["gIoU"] == round(100 * (1 + 0 + 0.5 + 0 + 0.9) / 5, 2)
    assert metrics["cIoU"] == round(100 * (30 + 0 + 90) / (50 + 60 + 40 + 100), 2)
    assert metrics["N-acc"] == 50.0 and metrics["T-acc"] == round(100 * 2 / 3, 2)
    assert metrics["no-target sentences"] == 2


def test_an_empty_answer_to_a_no_target_expression_scores_one():
    assert gres_metrics([_row(True, 0, 0, found=False)])["gIoU"] == 100.0
    assert gres_metrics([_row(True, 0, 10, found=True)])["gIoU"] == 0.0


def test_summary_keeps_refcoco_metrics_over_the_expressions_that_name_something():
    records = [{**_row(True, 0, 0, found=False), "image_id": 1}, {**_row(False, 30, 60), "image_id": 1}]
    summary = summarize(records)
    assert summary["gIoU"] == 75.0 and summary["mIoU"] == 50.0 and summary["sentences"] == 1


# -- threshold and multi-target --------------------------------------------------------------
@pytest.fixture(scope="module")
def scene():
    masks = np.zeros((3, 60, 90), bool)
    masks[0, 10:30, 5:25] = True
    masks[1, 10:30, 35:55] = True
    masks[2, 35:55, 60:85] = True
    image = np.full((60, 90, 3), 30, np.uint8)
    for mask, colour in zip(masks, ((250, 40, 40), (40, 250, 40), (40, 40, 250))):
        image[mask] = colour
    return image, Proposals(masks, np.ones(3))


def test_threshold_and_multi_target(tiny_vit, scene):
    image, proposals = scene
    plain = Segmenter(tiny_vit, create_proposals("classical"))
    features = plain.image_features(image, proposals=proposals)
    best = plain.score(features, ["a square"])[0]
    assert best.found and best.proposal_indices == [best.proposal_index]
    below = Segmenter(tiny_vit, create_proposals("classical"), no_target_threshold=min(1.0, best.score + 1e-4))
    none = below.score(features, ["a square"])[0]
    assert not none.found and not none.mask.any() and none.proposal_index == -1 and none.score == best.score
    above = Segmenter(tiny_vit, create_proposals("classical"), no_target_threshold=best.score - 1e-4)
    assert above.score(features, ["a square"])[0].found
    every = Segmenter(tiny_vit, create_proposals("classical"), multi_target=True, multi_target_margin=2.0)
    union = every.score(features, ["all the squares"])[0]
    np.testing.assert_array_equal(union.mask, proposals.masks.any(0))
    assert sorted(union.proposal_indices) == [0, 1, 2] and union.box == (5, 10, 85, 55)
    one = Segmenter(tiny_vit, create_proposals("classical"), multi_target=True, multi_target_margin=0.0)
    assert one.score(features, ["all the squares"])[0].proposal_indices == [best.proposal_index]


@pytest.mark.parametrize("flags, message", [
    (["--no-target-threshold", "1.5"], "outside the range of scores (-1.0 to 1.0"),
    (["--multi-target-margin", "-0.1"], "multi-target margin must lie in"),
])
def test_settings_outside_the_score_range_are_one_line(tmp_path, capsys, flags, message):
    from zsris import EXAMPLE_IMAGE

    code = main(["segment", str(EXAMPLE_IMAGE), "a circle", "-o", str(tmp_path), "--weights", "random", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_no_target_answer_in_segment_json_and_message(tmp_path, capsys):
    from zsris import EXAMPLE_IMAGE

    code = main(["segment", str(EXAMPLE_IMAGE), "a unicorn", "-o", str(tmp_path), "--weights", "random",
                 "--max-proposals", "6", "--no-target-threshold", "1.0"])
    out = capsys.readouterr().out
    assert code == 0 and "'a unicorn' -> no such object" in out
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["found"] is False and record["box"] is None and record["proposal_index"] == -1
    assert record["settings"]["no_target_threshold"] == 1.0


# -- gRefCOCO layout -------------------------------------------------------------------------
def _build_grefcoco(refcoco_mini: Path, root: Path, images: int = 6) -> Path:
    """gRefCOCO's layout from refcoco-mini's first images: each image's own refs, a no-target row
    naming a category the image lacks, and, where an image has several objects, a multi-target row."""
    from zsris.datasets import ReferDataset

    refer = ReferDataset(refcoco_mini, "refcoco")
    every = refer.refs_by_image("train")
    several = [i for i in every if len(refer.annotation_ids(i)) > 1][:2]  # for multi-target rows
    chosen = [i for i in every if i not in several][:images - len(several)] + several
    groups = {image_id: every[image_id] for image_id in chosen}
    instances = json.loads((refcoco_mini / "refcoco" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    refs, sent_id, ref_id = [], 10**7, 10**7
    for image_id, image_refs in groups.items():
        for ref in image_refs:
            refs.append({"ref_id": ref.ref_id, "ann_id": [ref.ann_id], "image_id": image_id, "split": "val",
                         "category_id": [ref.category_id], "no_target": False,
                         "sentences": [{"sent_id": s.sent_id, "sent": s.text} for s in ref.sentences]})
        present = {int(refer.annotations[a]["category_id"]) for a in refer.annotation_ids(image_id)}
        absent = next(c for c in sorted(names) if c not in present and c != 1)
        ref_id, sent_id = ref_id + 1, sent_id + 1
        refs.append({"ref_id": ref_id, "ann_id": [-1], "image_id": image_id, "split": "val", "category_id": [],
                     "no_target": True, "sentences": [{"sent_id": sent_id, "sent": f"the {names[absent]}"}]})
        ann_ids = refer.annotation_ids(image_id)
        if len(ann_ids) > 1:
            ref_id, sent_id = ref_id + 1, sent_id + 1
            text = " and ".join(f"the {names[int(refer.annotations[a]['category_id'])]}" for a in ann_ids)
            refs.append({"ref_id": ref_id, "ann_id": ann_ids, "image_id": image_id, "split": "val",
                         "category_id": [int(refer.annotations[a]["category_id"]) for a in ann_ids],
                         "no_target": False, "sentences": [{"sent_id": sent_id, "sent": text}]})
    folder = root / "grefcoco"
    folder.mkdir(parents=True)
    (folder / "grefs(unc).json").write_text(json.dumps(refs))
    kept = set(groups)
    (folder / "instances.json").write_text(json.dumps({
        "images": [i for i in instances["images"] if i["id"] in kept],
        "annotations": [a for a in instances["annotations"] if a["image_id"] in kept],
        "categories": instances["categories"]}))
    (root / "images").symlink_to(refcoco_mini / "images")
    return root


@pytest.fixture(scope="module")
def grefcoco(refcoco_mini, tmp_path_factory) -> Path:
    return _build_grefcoco(refcoco_mini, tmp_path_factory.mktemp("gref"))


def test_the_loader_reads_no_target_and_multi_target_rows(grefcoco):
    dataset = open_dataset(grefcoco, "grefcoco")
    assert isinstance(dataset, GRefDataset) and dataset.gt_mask == "union"
    refs = [ref for refs in dataset.refs_by_image("val").values() for ref in refs]
    empty = [r for r in refs if r.no_target]
    multi = [r for r in refs if len(r.ann_ids) > 1]
    assert len(empty) == 6 and all(r.ann_ids == () and r.ann_id == -1 for r in empty)
    assert not dataset.target_mask(empty[0]).any()
    assert len(multi) == 2
    union = np.logical_or.reduce([dataset.annotation_mask(a) for a in multi[0].ann_ids])
    np.testing.assert_array_equal(dataset.target_mask(multi[0]), union)
    assert union.sum() > dataset.annotation_mask(multi[0].ann_ids[0]).sum()


@pytest.mark.parametrize("change, field", [
    (lambda r: r.pop("ann_id"), "no field 'ann_id'"),
    (lambda r: r.update(ann_id=["x"]), "field 'ann_id' must hold annotation ids"),
    (lambda r: r.update(no_target="yes"), "field 'no_target' must be true or false"),
    (lambda r: r.update(no_target=True), "field 'no_target' is true but field 'ann_id' is"),
    (lambda r: r.update(sentences=[]), "field 'sentences' must be a non-empty list"),
    (lambda r: r.update(sentences=[{"sent": "x"}]), "field 'sentences' is malformed"),
])
def test_a_malformed_grefs_file_names_the_field(grefcoco, tmp_path, change, field):
    root = tmp_path / "copy"
    (root / "grefcoco").mkdir(parents=True)
    (root / "images").symlink_to((grefcoco / "images").resolve())
    refs = json.loads((grefcoco / "grefcoco" / "grefs(unc).json").read_text())
    change(refs[0])
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(refs))
    (root / "grefcoco" / "instances.json").write_text((grefcoco / "grefcoco" / "instances.json").read_text())
    with pytest.raises(DatasetError, match="ref #0.*" + field.replace("(", r"\(").replace("'", ".")):
        GRefDataset(root)


def _gref_eval(grefcoco: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--data", str(grefcoco), "--dataset", "grefcoco", "--split", "val", "--out", str(out),
            *FAST, *extra]


@pytest.mark.slow
def test_eval_reports_the_gres_metrics(grefcoco, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_gref_eval(grefcoco, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["no-target sentences"] == 6 and metrics["N-acc"] == 0.0 and metrics["T-acc"] == 100.0
    assert 0 <= metrics["gIoU"] <= 100 and "cIoU" in metrics
    report = (out / "report.md").read_text()
    assert "gIoU" in report and "N-acc" in report and "T-acc" in report
    always_none = tmp_path / "none"
    assert main(_gref_eval(grefcoco, always_none, "--no-target-threshold", "1.0")) == 0
    none = json.loads((always_none / "metrics.json").read_text())["metrics"]
    sentences = none["no-target sentences"] + none["sentences"]
    assert none["N-acc"] == 100.0 and none["T-acc"] == 0.0 and none["gIoU"] == round(100 * 6 / sentences, 2)


@pytest.mark.slow
def test_calibrate_picks_the_best_threshold_and_segment_uses_it(grefcoco, tmp_path, capsys):
    out = tmp_path / "cal"
    assert main(["calibrate", "--data", str(grefcoco), "--dataset", "grefcoco", "--split", "val", "--out", str(out),
                 *FAST]) == 0
    printed = capsys.readouterr().out
    assert "threshold" in printed and "calibration on grefcoco val" in printed
    calibration = read_calibration(out / "calibration.json")
    import sqlite3

    with sqlite3.connect(out / "predictions.sqlite") as connection:
        records = [json.loads(r[0]) for r in connection.execute("SELECT record FROM predictions")]
    _, curve = calibrate(records)
    assert calibration.gIoU == max(point["gIoU"] for point in curve)
    assert calibration.gIoU >= curve[0]["gIoU"] and calibration.gIoU >= curve[-1]["gIoU"]
    assert calibration.multi_target_margin is not None and calibration.multi_target_gIoU >= 0
    # the file drives segment: the best score decides found or not, as the threshold says
    image = grefcoco / "images" / "train2014" / "COCO_train2014_000000000312.jpg"
    assert main(["segment", str(image), "a zebra", "-o", str(tmp_path / "seg"), "--weights", "random",
                 "--max-proposals", "8", "--calibration", str(out / "calibration.json")]) == 0
    record = json.loads(next((tmp_path / "seg").glob("*.json")).read_text())
    assert record["settings"]["no_target_threshold"] == calibration.no_target_threshold
    assert record["found"] == (record["score"] >= calibration.no_target_threshold)


def test_calibrate_refusals(grefcoco, tmp_path, capsys):
    base = ["calibrate", "--data", str(grefcoco), "--split", "val", "--out", str(tmp_path / "x"), *FAST]
    assert main(base + ["--dataset", "grefcoco", "--no-target-threshold", "0.1"]) == 1
    assert "leave out --no-target-threshold" in capsys.readouterr().err
    assert main(base + ["--dataset", "refcoco"]) == 1
    assert "needs a dataset with no-target expressions" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("{}", "field 'no_target_threshold' must be a number"),
    ('{"no_target_threshold": 3}', "field 'no_target_threshold' is 3, outside the range"),
    ('{"no_target_threshold": 0.2, "multi_target_margin": "x"}', "field 'multi_target_margin' must be a number"),
    ('{"no_target_threshold": 0.2, "multi_target_margin": 0.01}', "go together"),
    ("[", "not a calibration file"),
])
def test_a_bad_calibration_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ZsrisError, match=message.replace("(", r"\(")):
        read_calibration(path)


def test_a_calibration_file_sets_the_threshold_and_with_multi_target_the_pair(tmp_path):
    from zsris.cli import make_parser
    from zsris.cli.flags import config_from_args

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"no_target_threshold": 0.21, "multi_target_threshold": 0.23,
                                "multi_target_margin": 0.02}))
    base = ["segment", "x.png", "a cat", "--calibration", str(path)]
    single = config_from_args(make_parser().parse_args(base))
    assert single.no_target_threshold == 0.21 and not single.multi_target
    multi = config_from_args(make_parser().parse_args(base + ["--multi-target"]))
    assert (multi.no_target_threshold, multi.multi_target_margin, multi.multi_target) == (0.23, 0.02, True)
    path.write_text(json.dumps({"no_target_threshold": 0.21, "multi_target_margin": 0.02}))
    with pytest.raises(ZsrisError, match="go together"):
        read_calibration(path)
