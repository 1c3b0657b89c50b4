"""PhraseCut (VGPhraseCut_v0, Wu et al., CVPR 2020) as its toolkit lays it out, read like a REFER
dataset so that ``zsris eval --dataset phrasecut`` runs it unchanged.

    DATA/refer_{train,val,test,miniv}.json   tasks: task_id, image_id, phrase, phrase_structure
                                             (name, attributes, ...), instance_boxes, Polygons
    DATA/image_data_split.json               images: image_id, width, height, split
    DATA/images/<image_id>.jpg

(``DATA`` may also be the toolkit's checkout, holding ``data/VGPhraseCut_v0``.) A task is a
phrase and the instances it refers to; its target is the union of their polygons, drawn as the
authors' PhraseCut loader draws them (PIL polygons over integer-truncated points, outline
included). Subsets, as the authors' loader decides them: ``unseen`` keeps the tasks whose
category (``phrase_structure.name``) is not one of COCO's 80 class names, ``seen`` those whose
is, ``all`` every task; the paper reports oIoU on val, unseen. Each task becomes a
:class:`~zsris.datasets.Ref` with one sentence, each instance an annotation; ids are numbered
in file order, per split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageDraw

from .datasets import ImageInfo, Ref, ReferDataset, Sentence, read_json_list
from .errors import DatasetError

PHRASECUT_SPLITS = ("train", "val", "test", "miniv")
SUBSETS = ("all", "unseen", "seen")
#: Ids are numbered per split; the split's code keeps them apart across splits.
_ID_BLOCK = 10 ** 8
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def polygons_mask(polygons: list[Any], height: int, width: int) -> np.ndarray:
    """The union of ``polygons`` (each a list of ``[x, y]`` points), drawn with PIL over points
    truncated to integers, outline included; a polygon of fewer than two points is skipped."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) < 2:
            continue
        draw.polygon([(int(x), int(y)) for x, y in polygon], outline=1, fill=1)
    return np.asarray(canvas) > 0


class PhraseCutDataset(ReferDataset):
    """VGPhraseCut_v0 behind :class:`ReferDataset`'s queries; ``split_by`` is the subset
    (``all``, ``unseen`` or ``seen``). A split's tasks are read when first asked for."""

    def __init__(self, data_root: str | Path, dataset: str = "phrasecut", split_by: Optional[str] = None,
                 images: Optional[str | Path] = None, gt_mask: str = "union") -> None:
        self.name, self.gt_mask = dataset, gt_mask
        self.split_by = split_by or "all"
        if self.split_by not in SUBSETS:
            raise DatasetError(f"phrasecut has no subset {self.split_by!r} (it has {', '.join(SUBSETS)})")
        root = Path(data_root).expanduser()
        for candidate in (root / "data" / "VGPhraseCut_v0", root / "VGPhraseCut_v0", root):
            if (candidate / "image_data_split.json").is_file():
                root = candidate
                break
        else:
            raise DatasetError(f"{root}: no image_data_split.json here or in VGPhraseCut_v0/ (expected "
                               f"PhraseCut's layout: refer_<split>.json, image_data_split.json, images/)")
        self.root = root
        self.refs_path = root / "refer_val.json"
        self.image_dir = Path(images).expanduser() if images else root / "images"
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: no such image folder")
        self.images, self._split_of = self._read_images(root / "image_data_split.json")
        self.refs: list[Ref] = []
        self.annotations: dict[int, dict[str, Any]] = {}
        self.categories: dict[int, str] = {}
        self._anns_by_image: dict[int, list[int]] = {}
        self._loaded: set[str] = set()

    @staticmethod
    def _read_images(path: Path) -> tuple[dict[int, ImageInfo], dict[int, str]]:
        entries = read_json_list(path, "images")
        images, splits = {}, {}
        for index, entry in enumerate(entries):
            for key in ("image_id", "width", "height", "split"):
                if not isinstance(entry, dict) or key not in entry:
                    raise DatasetError(f"{path}: image #{index} has no field '{key}'")
            try:
                image_id = int(entry["image_id"])
                images[image_id] = ImageInfo(image_id, f"{image_id}.jpg", int(entry["height"]), int(entry["width"]))
            except (TypeError, ValueError, OverflowError) as error:
                raise DatasetError(f"{path}: image #{index}: field 'image_id', 'width' or 'height' is malformed "
                                   f"({error})") from None
            if images[image_id].height < 1 or images[image_id].width < 1:  # no mask can be drawn on it
                raise DatasetError(f"{path}: image #{index} is {entry['width']}x{entry['height']}; a width and "
                                   f"height are positive")
            splits[image_id] = str(entry["split"])
        return images, splits

    def _load(self, split: str) -> None:
        """Read ``refer_{split}.json``: its tasks become refs (those of the subset) and its
        instances annotations."""
        if split in self._loaded:
            return
        if split not in PHRASECUT_SPLITS:
            raise DatasetError(f"phrasecut has no split {split!r}; choose one of {', '.join(PHRASECUT_SPLITS)}")
        path = self.root / f"refer_{split}.json"
        tasks = read_json_list(path, "PhraseCut tasks")
        base = (PHRASECUT_SPLITS.index(split) + 1) * _ID_BLOCK
        names = {name: index for index, name in self.categories.items()}
        next_ann = base
        for index, task in enumerate(tasks):
            where = f"{path}: task #{index}"
            image_id, phrase, category, polygons = self._task_fields(task, where)
            if image_id not in self.images:
                raise DatasetError(f"{where}: field 'image_id' {image_id} is not in image_data_split.json")
            category_id = names.setdefault(category, len(names) + 1)
            self.categories[category_id] = category
            ann_ids = []
            for instance in polygons:
                self.annotations[next_ann] = {"image_id": image_id, "category_id": category_id,
                                              "segmentation": instance}
                self._anns_by_image.setdefault(image_id, []).append(next_ann)
                ann_ids.append(next_ann)
                next_ann += 1
            if self._in_subset(category):
                self.refs.append(Ref(base + index, ann_ids[0], image_id, category_id, split,
                                     (Sentence(base + index, phrase),), tuple(ann_ids)))
        self._loaded.add(split)

    @staticmethod
    def _task_fields(task: Any, where: str) -> tuple[int, str, str, list[Any]]:
        if not isinstance(task, dict):
            raise DatasetError(f"{where} is not an object")
        for key in ("image_id", "phrase", "phrase_structure", "Polygons", "instance_boxes"):
            if key not in task:
                raise DatasetError(f"{where} has no field '{key}'")
        structure = task["phrase_structure"]
        if not isinstance(structure, dict) or not isinstance(structure.get("name"), str):
            raise DatasetError(f"{where}: field 'phrase_structure' has no category 'name'")
        polygons, boxes = task["Polygons"], task["instance_boxes"]
        if not isinstance(polygons, list) or not polygons or not isinstance(boxes, list) or len(boxes) != len(polygons):
            raise DatasetError(f"{where}: field 'Polygons' must hold one list of polygons per instance "
                               f"('instance_boxes' has {len(boxes) if isinstance(boxes, list) else 'no list'})")
        for instance in polygons:
            if not isinstance(instance, list) or not all(
                    isinstance(p, list) and all(isinstance(pt, list) and len(pt) == 2 for pt in p) for p in instance):
                raise DatasetError(f"{where}: field 'Polygons' must hold polygons of [x, y] points")
        if not isinstance(task["phrase"], str):
            raise DatasetError(f"{where}: field 'phrase' must be text")
        try:
            return int(task["image_id"]), task["phrase"], structure["name"], polygons
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: field 'image_id' must be an image id, not {task['image_id']!r}") from None

    def _in_subset(self, category: str) -> bool:
        if self.split_by == "unseen":
            return category not in COCO_CLASSES
        if self.split_by == "seen":
            return category in COCO_CLASSES
        return True

    # -- queries (ReferDataset's) -------------------------------------------------------------------
    def split(self, split: str) -> list[Ref]:
        self._load(split)
        refs = [ref for ref in self.refs if ref.split == split]
        if not refs:
            raise DatasetError(f"{self.root / f'refer_{split}.json'}: no tasks in the {self.split_by} subset")
        return refs

    def annotation_ids(self, image_id: int) -> list[int]:
        if image_id in self._split_of:
            self._load(self._split_of[image_id])
        return list(self._anns_by_image.get(image_id, []))

    def annotation_mask(self, ann_id: int, gt_mask: Optional[str] = None) -> np.ndarray:
        ann = self.annotations[ann_id]
        info = self.images[int(ann["image_id"])]
        try:
            return polygons_mask(ann["segmentation"], info.height, info.width)
        except (TypeError, ValueError) as error:
            raise DatasetError(f"annotation {ann_id}: malformed polygon ({error})") from None
