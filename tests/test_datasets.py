"""The REFER loader on real refcoco-mini, and clear errors for malformed or hostile files."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from zsris.datasets import ReferDataset, load_plain_pickle, segmentation_to_mask
from zsris.errors import DatasetError


@pytest.fixture(scope="module")
def dataset(refcoco_mini) -> ReferDataset:
    return ReferDataset(refcoco_mini, "refcoco")


def test_counts_match_the_readme(dataset):
    groups = dataset.refs_by_image("train")
    assert len(dataset.refs) == 655 and len(groups) == 645
    assert sum(len(ref.sentences) for ref in dataset.refs) == 1847
    assert dataset.split_by == "unc" and dataset.image_dir.name == "train2014"


def test_limit_and_missing_split(dataset):
    assert len(dataset.refs_by_image("train", limit=10)) == 10
    with pytest.raises(DatasetError, match="no refs in split 'val'.*present: train"):
        dataset.split("val")


def test_ground_truth_mask_is_the_rasterised_polygons(dataset):
    ref = dataset.refs[0]
    ann = dataset.annotations[ref.ann_id]
    info = dataset.images[ref.image_id]
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], info.height,
                                                                        info.width))).astype(bool)
    mask = dataset.annotation_mask(ref.ann_id)
    assert mask.shape == (info.height, info.width)
    np.testing.assert_array_equal(mask, expected)
    assert abs(int(mask.sum()) - ann["area"]) / ann["area"] < 0.05
    assert dataset.image_path(ref.image_id).is_file()


def test_rle_segmentations(dataset):
    mask = dataset.annotation_mask(dataset.refs[1].ann_id)
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode()
    np.testing.assert_array_equal(segmentation_to_mask(compressed, *mask.shape), mask)
    with pytest.raises(DatasetError, match="malformed segmentation"):
        segmentation_to_mask("nonsense", 10, 10)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo owned > /tmp/zsris-owned",))


def test_hostile_pickle_is_refused(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([_Exploit()]))
    with pytest.raises(DatasetError, match="refuses to load .*system"):
        load_plain_pickle(path)
    assert not os.path.exists("/tmp/zsris-owned")


def _copy_layout(refcoco_mini, tmp_path):
    root = tmp_path / "data"
    (root / "refcoco").mkdir(parents=True)
    shutil.copy(refcoco_mini / "refcoco" / "refs(unc).p", root / "refcoco")
    shutil.copy(refcoco_mini / "refcoco" / "instances.json", root / "refcoco")
    (root / "images").mkdir()
    os.symlink(refcoco_mini / "images" / "train2014", root / "images" / "train2014")
    return root


def test_malformed_files_name_the_file(refcoco_mini, tmp_path):
    root = _copy_layout(refcoco_mini, tmp_path)
    ReferDataset(root, "refcoco")  # intact copy loads
    refs = root / "refcoco" / "refs(unc).p"
    refs.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"refs\(unc\).p: not a valid refs pickle"):
        ReferDataset(root, "refcoco")
    refs.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(DatasetError, match="expected a list of refs"):
        ReferDataset(root, "refcoco")
    refs.write_bytes(pickle.dumps([{"ref_id": 1}]))
    with pytest.raises(DatasetError, match="ref #0 lacks"):
        ReferDataset(root, "refcoco")
    refs.unlink()
    with pytest.raises(DatasetError, match=r"refs\(unc\).p: no such refs file"):
        ReferDataset(root, "refcoco")
    shutil.copy(refcoco_mini / "refcoco" / "refs(unc).p", refs)
    instances = root / "refcoco" / "instances.json"
    instances.write_text("{broken")
    with pytest.raises(DatasetError, match="instances.json: not readable JSON"):
        ReferDataset(root, "refcoco")
    instances.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="which instances.json does not hold"):
        ReferDataset(root, "refcoco")
    instances.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(DatasetError, match="malformed COCO instances"):
        ReferDataset(root, "refcoco")


def test_unknown_dataset_split_and_folders(refcoco_mini, tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        ReferDataset(refcoco_mini, "coco")
    with pytest.raises(DatasetError, match="no such dataset folder"):
        ReferDataset(refcoco_mini, "refcocog")
    with pytest.raises(DatasetError, match="has no splitBy"):
        ReferDataset(refcoco_mini, "refcoco+", split_by="umd")
    with pytest.raises(DatasetError, match="unknown split"):
        ReferDataset(refcoco_mini, "refcoco").split("dev")
    with pytest.raises(DatasetError, match="no such image folder"):
        ReferDataset(refcoco_mini, "refcoco", images=tmp_path / "none")
