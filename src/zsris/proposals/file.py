"""Precomputed proposals: COCO RLE JSON or folders of PNG masks, so FreeSOLO's (or any other
generator's) output plugs in unchanged.

JSON: either a list of COCO result records (``image_id``, ``segmentation`` as RLE, ``score``,
and optionally ``box``: ``x1, y1, x2, y2`` of the local crop, as ``zsris proposals`` writes
FreeSOLO's boxes, which are not tight; without it, the mask's tight box) or an object mapping
an image key to such a list. Folders: ``DIR/<image key>/*.png``, or PNGs
directly in ``DIR`` (then used for every image). The image key is the image id, else the
file name without extension.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from ..errors import ProposalError, ZsrisError
from ..images import file_problem
from ..masks import decode_rle
from ..records import NamedTwice, once_each
from .base import Proposals, check_max_proposals, config_key
from .configs import FileConfig
from .registry import Configured, ProposalSpec, config_of

#: The largest proposals JSON read: it is read whole, and parsed it takes several times its size.
MAX_PROPOSALS_FILE_BYTES = 2 << 30


class FileProposals(Configured):
    """Look proposals up by image key in a JSON file or a folder of PNG masks.

    ``max_proposals`` keeps the image's best that many (by the records' ``score``, else the
    first; a folder's first in name order), chosen before any mask is decoded, so a file of
    thousands of masks per image costs what the cap does. The kept keep the file's order."""

    name = "file"

    def __init__(self, path: str | Path, max_proposals: Optional[int] = None) -> None:
        self.config = FileConfig(str(path), check_max_proposals(max_proposals))
        self.path = Path(path).expanduser()
        self._records: Optional[dict[str, list[dict[str, Any]]]] = None
        if not self.path.is_dir():  # a pipe would block for ever, a link to /dev/zero fill the memory
            problem = file_problem(self.path, MAX_PROPOSALS_FILE_BYTES)
            if problem is not None:
                raise ProposalError(f"{self.path}: no such proposals file or folder" if problem == "no such file"
                                    else f"{self.path}: {problem}, not a proposals file or folder")
            self._records = self._read_json(self.path)

    @property
    def cache_key(self) -> str:
        """The file's path and modification time; a folder's, a digest of every mask PNG in it and
        in its image folders (name, size, modification time): a folder's own time does not change
        when a file inside it is edited."""
        if self.path.is_file():
            return config_key(self.name, 3, path=self.path.resolve(), mtime_ns=self.path.stat().st_mtime_ns,
                              max_proposals=self.config.max_proposals)
        digest = hashlib.sha1()
        for file in sorted([*self.path.glob("*.png"), *self.path.glob("*/*.png")]):
            status = file.stat()
            digest.update(f"{file.relative_to(self.path)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
        return config_key(self.name, 3, path=self.path.resolve(), contents=digest.hexdigest()[:16],
                          max_proposals=self.config.max_proposals)

    @staticmethod
    def _read_json(path: Path) -> dict[str, list[dict[str, Any]]]:
        try:
            data = json.loads(path.read_text(), object_pairs_hook=once_each)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ProposalError(f"{path}: not a readable JSON proposals file ({error})") from None
        except NamedTwice as twice:
            raise ProposalError(f"{path}: {twice} is named twice in one object (which one is meant?)") from None
        except RecursionError:
            raise ProposalError(f"{path}: not a proposals file (nested too deeply to read)") from None
        grouped: dict[str, list[dict[str, Any]]] = {}
        if isinstance(data, dict):
            for key, records in data.items():
                if not isinstance(records, list):
                    raise ProposalError(f"{path}: the entry for {key!r} must be a list of records")
                grouped[str(key)] = records
        elif isinstance(data, list):
            for record in data:
                if not isinstance(record, dict) or "image_id" not in record:
                    raise ProposalError(f"{path}: a list of records needs an image_id in each record")
                grouped.setdefault(str(record["image_id"]), []).append(record)
        else:
            raise ProposalError(f"{path}: expected a list or an object of proposal records")
        return grouped

    def _from_records(self, records: list[dict[str, Any]], shape: tuple[int, int], key: str) -> Proposals:
        try:
            scores = [float(record.get("score", 1.0)) for record in records]
        except (TypeError, ValueError, OverflowError, AttributeError) as error:
            raise ProposalError(f"{self.path}: malformed proposal for image {key!r} ({error})") from None
        unranked = next((i for i, score in enumerate(scores) if not math.isfinite(score)), None)
        if unranked is not None:  # the cap would keep an arbitrary few
            raise ProposalError(f"{self.path}: proposal {unranked} of image {key!r} has the score "
                                f"{scores[unranked]}; scores are finite numbers")
        kept = range(len(records))
        if self.config.max_proposals is not None and len(records) > self.config.max_proposals:
            kept = sorted(sorted(kept, key=lambda i: -scores[i])[: self.config.max_proposals])
        masks, boxes = [], []
        for index in kept:
            try:
                masks.append(decode_rle(records[index]["segmentation"], shape))
                if "box" in records[index]:
                    boxes.append([float(v) for v in records[index]["box"]])
                    if len(boxes[-1]) != 4 or not boxes[-1][0] <= boxes[-1][2] or not boxes[-1][1] <= boxes[-1][3]:
                        raise ValueError(f"box must be x1, y1, x2, y2 with x1 <= x2 and y1 <= y2, not {boxes[-1]}")
                    _check_box(boxes[-1], shape)
            except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as error:
                raise ProposalError(f"{self.path}: malformed proposal for image {key!r} ({error})") from None
        if not masks:
            return Proposals.empty(*shape)
        if boxes and len(boxes) != len(masks):
            raise ProposalError(f"{self.path}: image {key!r} has a box in some records, not all")
        return Proposals(np.stack(masks), np.asarray([scores[i] for i in kept]),
                         np.asarray(boxes, dtype=np.float32) if boxes else None)

    def _from_folder(self, folder: Path, shape: tuple[int, int], key: str) -> Proposals:
        files = sorted(folder.glob("*.png"))[: self.config.max_proposals]
        masks = []
        for file in files:
            try:
                with Image.open(file) as image:
                    if (image.height, image.width) != shape:  # from the header, before decoding
                        raise ProposalError(f"{file}: mask is {(image.height, image.width)}, the image {key!r} "
                                            f"is {shape}")
                    mask = np.asarray(image.convert("L")) > 0
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise ProposalError(f"{file}: unreadable mask PNG ({error})") from None
            masks.append(mask)
        if not masks:
            return Proposals.empty(*shape)
        return Proposals(np.stack(masks), np.ones(len(masks)))

    def __call__(self, image: np.ndarray, image_id: Optional[str] = None) -> Proposals:
        shape = tuple(image.shape[:2])
        keys = [k for k in ([image_id, Path(image_id).stem] if image_id else []) if k]
        if self._records is not None:
            for key in keys:
                if key in self._records:
                    return self._from_records(self._records[key], shape, key).non_empty()
            if len(self._records) == 1 and not keys:
                return self._from_records(next(iter(self._records.values())), shape, "").non_empty()
            raise ProposalError(f"{self.path}: no proposals for image {image_id!r}")
        for key in keys:
            if key not in (".", "..") and Path(key).name == key and (self.path / key).is_dir():  # below path only
                return self._from_folder(self.path / key, shape, key).non_empty()
        if any(self.path.glob("*.png")):
            return self._from_folder(self.path, shape, image_id or "").non_empty()
        raise ProposalError(f"{self.path}: no proposal masks for image {image_id!r}")


def _check_box(box: list[float], shape: tuple[int, int]) -> None:
    """A box's crop is read from the image: finite, and within one image size of it (FreeSOLO's
    boxes may leave the image a little; one a million pixels out would be a crop of terabytes)."""
    height, width = shape
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"box {box} is not finite")
    if box[0] < -width or box[2] > 2 * width or box[1] < -height or box[3] > 2 * height:
        raise ValueError(f"box {box} lies far outside the {width}x{height} image")


def from_spec(spec: ProposalSpec, device: object = None) -> FileProposals:
    """The registry's factory: the masks in the spec's ``path`` option."""
    config = config_of(FileConfig, spec)
    if not config.path:
        raise ZsrisError("--proposals file needs --proposals-path (a COCO RLE JSON or a folder of PNG masks)")
    return FileProposals(config.path, config.max_proposals)
