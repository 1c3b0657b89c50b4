"""RefCOCO, RefCOCO+ and RefCOCOg in the REFER toolkit's layout, and gRefCOCO in its own.

    DATA/refcoco/refs(unc).p        DATA/refcoco+/refs(unc).p      DATA/refcocog/refs(umd).p
    DATA/<dataset>/instances.json   COCO train2014 images in DATA/images/train2014 (or --images)
    DATA/grefcoco/grefs(unc).json   (gRefCOCO, Liu et al., CVPR 2023: a JSON list of refs whose
                                    ann_id is a list, [-1] for a no-target expression)

The refs files are pickles; they are read with an unpickler that admits only plain containers
and scalars, so a tampered file cannot run code. Ground-truth masks are the annotation's
polygons (or RLE) rasterised with pycocotools at the image's size, on the stored pixel grid
(COCO annotations ignore EXIF orientation).

Where an annotation's polygons overlap, two readings exist. ``refer`` (default) is how the
authors' code reads REFER's ``getMask``: the polygons' masks are summed and only pixels where
the sum is exactly 1 are kept, so overlaps drop out. ``union`` keeps every pixel any polygon
covers. They differ for about 1% of sentences; ``refer`` reproduces the paper's numbers.
"""
from __future__ import annotations

import importlib
import io
import json
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pycocotools import mask as mask_utils

from .errors import DatasetError
from .images import file_problem
from .masks import decode_rle

#: Each dataset's default splitBy (PhraseCut's: its subset, see :mod:`zsris.phrasecut`).
DATASETS = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "grefcoco": "unc", "phrasecut": "all"}
SPLIT_BYS = {"refcoco": ("unc", "google"), "refcoco+": ("unc",), "refcocog": ("umd", "google"), "grefcoco": ("unc",),
             "phrasecut": ("all", "unseen", "seen")}
#: Datasets with no-target and multi-target expressions, evaluated with gIoU, cIoU, N-acc, T-acc.
GENERALIZED = ("grefcoco",)
SPLITS = ("val", "testA", "testB", "test", "train", "miniv")
GT_MASKS = ("refer", "union")
#: Datasets in a layout of their own, read by a ReferDataset subclass imported when asked for.
OTHER_LAYOUTS = {"phrasecut": "zsris.phrasecut:PhraseCutDataset"}
IMAGE_FOLDERS = ("images/train2014", "images/mscoco/images/train2014", "train2014", "images")
#: The largest refs or instances file read: each is read whole (COCO's train2014 instances, the
#: largest in use, are a few hundred MB).
MAX_DATASET_FILE_BYTES = 2 << 30


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes build (dict, list, tuple, str, bytes, numbers, bools,
    None); any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise DatasetError(f"refuses to load {module}.{name}: refs files may hold only plain data")


def read_dataset_file(path: Path, what: str) -> bytes:
    """The bytes of a dataset's ``what`` file (refs, instances ...), or one line saying why not: a
    pipe would block for ever, a link to /dev/zero or an oversized file fill the memory."""
    problem = file_problem(path, MAX_DATASET_FILE_BYTES)
    if problem is not None:
        raise DatasetError(f"{path}: no such {what} file" if problem == "no such file" else
                           f"{path}: {problem} (the dataset's {what} file)")
    try:
        return path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({error.strerror or error})") from None


def load_plain_pickle(path: Path) -> Any:
    data = read_dataset_file(path, "refs")
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except DatasetError as error:
        raise DatasetError(f"{path}: {error}") from None
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DatasetError(f"{path}: not a valid refs pickle ({type(error).__name__}: {error})") from None


@dataclass(frozen=True)
class Sentence:
    sent_id: int
    text: str


@dataclass(frozen=True)
class Ref:
    """A referred object (or, in gRefCOCO, several objects or none) and its sentences.
    ``ann_ids`` are all the annotations referred to (RefCOCO: one; gRefCOCO: any number, none
    for a ``no_target`` expression); ``ann_id`` is the first, -1 where there is none."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    sentences: tuple[Sentence, ...]
    ann_ids: tuple[int, ...] = ()
    no_target: bool = False

    def __post_init__(self) -> None:
        if not self.ann_ids and self.ann_id >= 0 and not self.no_target:
            object.__setattr__(self, "ann_ids", (self.ann_id,))


@dataclass(frozen=True)
class ImageInfo:
    image_id: int
    file_name: str
    height: int
    width: int


REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


class ReferDataset:
    """One REFER dataset (e.g. refcoco, splitBy unc): refs, images, annotations and categories."""

    def __init__(self, data_root: str | Path, dataset: str = "refcoco", split_by: Optional[str] = None,
                 images: Optional[str | Path] = None, gt_mask: str = "refer") -> None:
        if dataset not in DATASETS:
            raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        if gt_mask not in GT_MASKS:
            raise DatasetError(f"unknown ground-truth mask reading {gt_mask!r}; choose one of {', '.join(GT_MASKS)}")
        self.gt_mask = gt_mask
        self.root = Path(data_root).expanduser()
        self.name = dataset
        self.split_by = split_by or DATASETS[dataset]
        if self.split_by not in SPLIT_BYS[dataset]:
            raise DatasetError(f"{dataset} has no splitBy {self.split_by!r} (it has {', '.join(SPLIT_BYS[dataset])})")
        folder = self.root / dataset
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such dataset folder (expected the REFER layout under {self.root})")
        self.refs_path = folder / self.refs_file()
        self.instances_path = folder / "instances.json"
        self.image_dir = self._find_images(images)
        self.refs = self._read_refs()
        self.images, self.annotations, self.categories = self._read_instances()
        sentences: dict[int, int] = {}
        for ref in self.refs:
            missing = [a for a in ref.ann_ids if a not in self.annotations]
            if ref.image_id not in self.images or missing:
                raise DatasetError(
                    f"{self.refs_path}: ref {ref.ref_id} names image {ref.image_id} / annotation "
                    f"{missing[0] if missing else ref.ann_id}, which {self.instances_path.name} does not hold"
                )
            elsewhere = [a for a in ref.ann_ids if int(self.annotations[a]["image_id"]) != ref.image_id]
            if elsewhere:
                other = self.annotations[elsewhere[0]]["image_id"]
                raise DatasetError(f"{self.refs_path}: ref {ref.ref_id} is about image {ref.image_id}, but its "
                                   f"annotation {elsewhere[0]} is of image {other}")
            for sentence in ref.sentences:  # predictions are stored by sentence id: one id, one sentence
                if sentence.sent_id in sentences:
                    raise DatasetError(f"{self.refs_path}: sentence id {sentence.sent_id} is given twice (ref "
                                       f"{sentences[sentence.sent_id]} and ref {ref.ref_id}); each sentence needs "
                                       f"its own id")
                sentences[sentence.sent_id] = ref.ref_id
        self._anns_by_image: dict[int, list[int]] = defaultdict(list)
        for ann_id, ann in self.annotations.items():
            self._anns_by_image[int(ann["image_id"])].append(ann_id)

    def refs_file(self) -> str:
        return f"refs({self.split_by}).p"

    def _find_images(self, images: Optional[str | Path]) -> Path:
        if images is not None:
            path = Path(images).expanduser()
            if not path.is_dir():
                raise DatasetError(f"{path}: no such image folder")
            return path
        for candidate in IMAGE_FOLDERS:
            if (self.root / candidate).is_dir():
                return self.root / candidate
        raise DatasetError(f"no COCO train2014 image folder under {self.root}; pass --images DIR")

    def _read_refs(self) -> list[Ref]:
        raw = load_plain_pickle(self.refs_path)
        if not isinstance(raw, list):
            raise DatasetError(f"{self.refs_path}: expected a list of refs, found {type(raw).__name__}")
        refs = []
        for index, item in enumerate(raw):
            if not isinstance(item, dict) or any(key not in item for key in REF_KEYS):
                raise DatasetError(f"{self.refs_path}: ref #{index} lacks one of {', '.join(REF_KEYS)}")
            try:
                sentences = tuple(Sentence(int(s["sent_id"]), str(s.get("raw") or s["sent"]))
                                  for s in item["sentences"])
                refs.append(Ref(int(item["ref_id"]), int(item["ann_id"]), int(item["image_id"]),
                                int(item.get("category_id", -1)), str(item["split"]), sentences))
            except (KeyError, TypeError, ValueError) as error:
                raise DatasetError(f"{self.refs_path}: ref #{index} is malformed ({error})") from None
        return refs

    def _read_instances(self):
        raw = read_dataset_file(self.instances_path, "instances")
        try:
            data = json.loads(raw)
            images = {int(i["id"]): ImageInfo(int(i["id"]), str(i["file_name"]), int(i["height"]), int(i["width"]))
                      for i in data["images"]}
            annotations = {int(a["id"]): a for a in data["annotations"]}
            for ann in annotations.values():  # a missing field is a KeyError here, not deep in a run
                for required in ("image_id", "category_id", "segmentation"):
                    ann[required]
            categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(f"{self.instances_path}: not readable JSON ({error})") from None
        except RecursionError:
            raise DatasetError(f"{self.instances_path}: not COCO instances (nested too deeply to read)") from None
        except (KeyError, TypeError, ValueError) as error:
            raise DatasetError(f"{self.instances_path}: malformed COCO instances (missing or bad {error})") from None
        return images, annotations, categories

    # -- queries ----------------------------------------------------------------------------
    def split(self, split: str) -> list[Ref]:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        refs = [ref for ref in self.refs if ref.split == split]
        if not refs:
            present = sorted({ref.split for ref in self.refs})
            raise DatasetError(f"{self.refs_path}: no refs in split {split!r} (present: {', '.join(present)})")
        return refs

    def refs_by_image(self, split: str, limit: Optional[int] = None) -> dict[int, list[Ref]]:
        """Refs of ``split`` grouped by image, in first-seen order; ``limit`` caps the images."""
        grouped: dict[int, list[Ref]] = {}
        for ref in self.split(split):
            if ref.image_id not in grouped and limit is not None and len(grouped) >= limit:
                continue
            grouped.setdefault(ref.image_id, []).append(ref)
        return grouped

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.images[image_id].file_name

    def annotation_ids(self, image_id: int) -> list[int]:
        return list(self._anns_by_image.get(image_id, []))

    def target_mask(self, ref: Ref) -> np.ndarray:
        """Everything ``ref`` refers to, as one mask: the union of its annotations (empty for a
        no-target expression)."""
        info = self.images[ref.image_id]
        target = np.zeros((info.height, info.width), dtype=bool)
        for ann_id in ref.ann_ids:
            target |= self.annotation_mask(ann_id)
        return target

    def annotation_mask(self, ann_id: int, gt_mask: Optional[str] = None) -> np.ndarray:
        """The annotation's mask at its image's full resolution (polygons or RLE), read the
        dataset's way (``gt_mask``, see the module docstring) unless another is named."""
        ann = self.annotations[ann_id]
        info = self.images[int(ann["image_id"])]
        return segmentation_to_mask(ann["segmentation"], info.height, info.width, f"annotation {ann_id}",
                                    gt_mask or self.gt_mask)


def read_json_list(path: Path, what: str) -> list[Any]:
    """The JSON list of ``what`` (refs, tasks, images ...) in ``path``, or one line saying why not."""
    raw = read_dataset_file(path, what)
    try:
        data = json.loads(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: not readable JSON ({error})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not a list of {what} (nested too deeply to read)") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of {what}, found {type(data).__name__}")
    return data


def segmentation_to_mask(segmentation: Any, height: int, width: int, what: str = "segmentation",
                         overlaps: str = "union") -> np.ndarray:
    """Rasterise COCO polygons, uncompressed RLE or compressed RLE into a boolean mask.

    ``overlaps="refer"`` keeps only the pixels covered by exactly one polygon (the authors'
    reading of REFER's summed masks); ``"union"`` every pixel any polygon covers.
    """
    try:
        if isinstance(segmentation, list):
            rles = mask_utils.frPyObjects(segmentation, height, width)
            if overlaps == "refer":
                coverage = mask_utils.decode(rles).reshape(height, width, -1).sum(axis=2, dtype=np.int64)
                mask = coverage == 1
            else:
                mask = mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles).astype(bool)
        elif isinstance(segmentation, dict):
            mask = decode_rle(segmentation, (height, width))
        else:
            raise TypeError(type(segmentation).__name__)
    except Exception as error:  # noqa: BLE001 - pycocotools raises bare exceptions on bad input
        raise DatasetError(f"{what}: malformed segmentation ({error})") from None
    if mask.shape != (height, width):
        raise DatasetError(f"{what}: mask is {mask.shape}, the image is {(height, width)}")
    return mask


GREF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


class GRefDataset(ReferDataset):
    """gRefCOCO (ReLA's layout): ``grefcoco/grefs(unc).json``, a JSON list of refs whose
    ``ann_id`` is a list of annotation ids (``[-1]`` and ``no_target: true`` for an expression
    that names nothing in its image), with ``grefcoco/instances.json``. A target is the union of
    its annotations, each read as the union of its polygons (as ReLA's ``getMask`` merges them)."""

    def __init__(self, data_root: str | Path, dataset: str = "grefcoco", split_by: Optional[str] = None,
                 images: Optional[str | Path] = None, gt_mask: str = "union") -> None:
        super().__init__(data_root, dataset, split_by, images, gt_mask)

    def refs_file(self) -> str:
        return f"grefs({self.split_by}).json"

    def _read_refs(self) -> list[Ref]:
        return [self._ref(item, index) for index, item in enumerate(read_json_list(self.refs_path, "refs"))]

    def _ref(self, item: Any, index: int) -> Ref:
        where = f"{self.refs_path}: ref #{index}"
        if not isinstance(item, dict):
            raise DatasetError(f"{where} is not an object")
        for key in GREF_KEYS:
            if key not in item:
                raise DatasetError(f"{where} has no field '{key}'")
        ann_ids = item["ann_id"] if isinstance(item["ann_id"], list) else [item["ann_id"]]
        try:
            ann_ids = [int(a) for a in ann_ids]
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: field 'ann_id' must hold annotation ids, not {item['ann_id']!r}") from None
        no_target = item.get("no_target", ann_ids == [-1])
        if not isinstance(no_target, bool):
            raise DatasetError(f"{where}: field 'no_target' must be true or false, not {no_target!r}")
        targets = tuple(a for a in ann_ids if a != -1)
        if no_target == bool(targets):
            raise DatasetError(f"{where}: field 'no_target' is {str(no_target).lower()} but field 'ann_id' is "
                               f"{ann_ids}")
        if not isinstance(item["sentences"], list) or not item["sentences"]:
            raise DatasetError(f"{where}: field 'sentences' must be a non-empty list")
        try:
            sentences = tuple(Sentence(int(s["sent_id"]), str(s.get("raw") or s["sent"])) for s in item["sentences"])
        except (KeyError, TypeError, ValueError) as error:
            raise DatasetError(f"{where}: field 'sentences' is malformed (missing or bad {error})") from None
        categories = item.get("category_id", -1)
        category = (categories[0] if categories else -1) if isinstance(categories, list) else categories
        try:
            return Ref(int(item["ref_id"]), targets[0] if targets else -1, int(item["image_id"]), int(category),
                       str(item["split"]), sentences, targets, no_target)
        except (TypeError, ValueError) as error:
            raise DatasetError(f"{where}: field 'ref_id', 'image_id' or 'category_id' is malformed ({error})") from None


def open_dataset(data_root: str | Path, dataset: str = "refcoco", split_by: Optional[str] = None,
                 images: Optional[str | Path] = None, gt_mask: Optional[str] = None) -> ReferDataset:
    """The dataset ``dataset`` names, in its own layout (gRefCOCO's, PhraseCut's or REFER's)."""
    if dataset in OTHER_LAYOUTS:
        module, _, name = OTHER_LAYOUTS[dataset].partition(":")
        return getattr(importlib.import_module(module), name)(data_root, dataset, split_by, images, gt_mask or "union")
    if dataset in GENERALIZED:
        return GRefDataset(data_root, dataset, split_by, images, gt_mask or "union")
    return ReferDataset(data_root, dataset, split_by, images, gt_mask or "refer")
