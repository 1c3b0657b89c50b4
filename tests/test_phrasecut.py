"""PhraseCut read in its toolkit's exact layout, on a fixture built from refcoco-mini's images and
polygons: subsets as the authors decide them, targets as they draw them, malformed files named."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from zsris.datasets import open_dataset
from zsris.errors import DatasetError
from zsris.phrasecut import COCO_CLASSES


def _polygons(segmentation) -> list[list[list[float]]]:
    """COCO's flat polygon lists as PhraseCut's lists of [x, y] points."""
    return [[[p[i], p[i + 1]] for i in range(0, len(p), 2)] for p in segmentation]


def build_phrasecut(refcoco_mini: Path, root: Path, images: int = 3) -> Path:
    """VGPhraseCut_v0 as the toolkit lays it out: every referred object of the first ``images``
    refcoco-mini images becomes a task named by its COCO category (seen), and a second task
    with the same instance under a non-COCO name (unseen); one task has two instances."""
    from zsris.datasets import ReferDataset

    dataset = ReferDataset(refcoco_mini, "refcoco")
    every = dataset.refs_by_image("train")
    several = next(i for i, refs in every.items() if len(refs) > 1)  # for a task of two instances
    groups = {i: every[i] for i in [several, *[i for i in every if i != several][: images - 1]]}
    folder = root / "VGPhraseCut_v0"
    (folder / "images").mkdir(parents=True)
    infos, tasks = [], []
    for image_id, refs in groups.items():
        info = dataset.images[image_id]
        shutil.copy(dataset.image_path(image_id), folder / "images" / f"{image_id}.jpg")
        infos.append({"image_id": image_id, "width": info.width, "height": info.height, "split": "val",
                      "url": f"https://example.org/{image_id}.jpg"})
        instances = []
        for ref in refs:
            ann = dataset.annotations[ref.ann_id]
            x, y, w, h = ann["bbox"]
            instance = (_polygons(ann["segmentation"]), [x, y, w, h])
            instances.append(instance)
            name = dataset.categories[int(ann["category_id"])]
            for phrase, category in ((ref.sentences[0].text, name), (f"striped {name} thing", "thing")):
                tasks.append({"task_id": f"{image_id}__{len(tasks)}", "image_id": image_id, "phrase": phrase,
                              "phrase_structure": {"name": category, "attributes": [], "relation_descriptions": []},
                              "instance_boxes": [instance[1]], "Polygons": [instance[0]], "ann_ids": [len(tasks)]})
        if len(instances) > 1:
            tasks.append({"task_id": f"{image_id}__{len(tasks)}", "image_id": image_id, "phrase": "both things",
                          "phrase_structure": {"name": "group", "attributes": [], "relation_descriptions": []},
                          "instance_boxes": [i[1] for i in instances[:2]], "Polygons": [i[0] for i in instances[:2]],
                          "ann_ids": []})
    (folder / "image_data_split.json").write_text(json.dumps(infos))
    (folder / "refer_val.json").write_text(json.dumps(tasks))
    return folder


@pytest.fixture(scope="module")
def phrasecut(refcoco_mini, tmp_path_factory) -> Path:
    return build_phrasecut(refcoco_mini, tmp_path_factory.mktemp("phrasecut"))


def test_subsets_are_decided_by_category_as_the_authors_loader_does(phrasecut):
    tasks = json.loads((phrasecut / "refer_val.json").read_text())
    every = open_dataset(phrasecut, "phrasecut", "all").split("val")
    unseen = open_dataset(phrasecut, "phrasecut", "unseen").split("val")
    seen = open_dataset(phrasecut, "phrasecut", "seen").split("val")
    assert len(every) == len(tasks) == len(unseen) + len(seen)
    names = [t["phrase_structure"]["name"] for t in tasks]
    assert len(unseen) == sum(n not in COCO_CLASSES for n in names) and len(seen) == sum(n in COCO_CLASSES
                                                                                          for n in names)
    assert [r.sentences[0].text for r in every] == [t["phrase"] for t in tasks]
    assert open_dataset(phrasecut.parent, "phrasecut").root == phrasecut  # the folder above is found too


def test_a_targets_mask_is_the_union_of_its_instances_polygons_drawn_with_pil(phrasecut):
    dataset = open_dataset(phrasecut, "phrasecut")
    tasks = json.loads((phrasecut / "refer_val.json").read_text())
    refs = dataset.split("val")
    group = next(i for i, t in enumerate(tasks) if len(t["Polygons"]) == 2)
    for index in (0, group):
        info = dataset.images[refs[index].image_id]
        canvas = Image.new("L", (info.width, info.height), 0)
        for instance in tasks[index]["Polygons"]:
            for polygon in instance:
                ImageDraw.Draw(canvas).polygon([(int(x), int(y)) for x, y in polygon], outline=1, fill=1)
        expected = np.asarray(canvas) > 0
        assert np.array_equal(dataset.target_mask(refs[index]), expected)
        assert expected.sum() > 100
    assert len(refs[group].ann_ids) == 2


@pytest.mark.parametrize("change, message", [
    (lambda tasks, infos: tasks[0].pop("Polygons"), "task #0 has no field 'Polygons'"),
    (lambda tasks, infos: tasks[1]["phrase_structure"].pop("name"), "task #1: field 'phrase_structure' has no"),
    (lambda tasks, infos: tasks[0]["instance_boxes"].append([0, 0, 1, 1]), "task #0: field 'Polygons' must hold one"),
    (lambda tasks, infos: tasks[2].update(image_id=999), "task #2: field 'image_id' 999 is not in"),
    (lambda tasks, infos: infos[0].pop("height"), "image #0 has no field 'height'"),
    (lambda tasks, infos: infos[0].update(width=-5), r"image #0 is -5x\d+; a width and height are positive"),
])
def test_malformed_files_name_the_field(phrasecut, tmp_path, change, message):
    broken = tmp_path / "VGPhraseCut_v0"
    shutil.copytree(phrasecut, broken, ignore=shutil.ignore_patterns("images"))
    (broken / "images").mkdir()
    tasks = json.loads((broken / "refer_val.json").read_text())
    infos = json.loads((broken / "image_data_split.json").read_text())
    change(tasks, infos)
    (broken / "refer_val.json").write_text(json.dumps(tasks))
    (broken / "image_data_split.json").write_text(json.dumps(infos))
    with pytest.raises(DatasetError, match=message):
        open_dataset(broken, "phrasecut").split("val")


def test_eval_on_phrasecut_counts_every_unseen_phrase(phrasecut, tmp_path):
    unseen = open_dataset(phrasecut, "phrasecut", "unseen").split("val")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "zsris.cli", "eval", "--data", str(phrasecut), "--dataset",
                           "phrasecut", "--split", "val", "--phrasecut-subset", "unseen", "--weights", "random",
                           "--max-proposals", "8", "--proposal-workers", "0", "--no-cache", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics.get("metrics", metrics)
    assert summary["sentences"] == len(unseen) and summary["images failed"] == 0
    assert 0 < summary["oracle mIoU"] <= 100
