"""On-disk cache of mask proposals (COCO RLE), keyed by image content and generator settings.

Proposals are the slow, model-independent part of an evaluation; caching them makes a second
run with other CLIP settings skip that work. Files are written atomically (temp + rename), so a
crash never leaves a half-written entry.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .masks import decode_rle, encode_rle
from .proposals import Proposals

DEFAULT_CACHE = Path(os.environ.get("ZSRIS_CACHE", Path.home() / ".cache" / "zsris")) / "proposals"


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read a megabyte at a time. A pipe, socket or device is
    refused (OSError) rather than read: one may block for ever, another never end."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise OSError(errno.EINVAL, "not a regular file (a folder, pipe, socket or device)", str(path))
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_key(path: str | Path) -> str:
    """``<stem>-<sha256 of the file's bytes, 16 hex digits>``: two images that share a file name
    in different folders get different entries, and an edited image never meets its old ones."""
    return f"{Path(path).stem}-{file_digest(path)[:16]}"


class ProposalCache:
    """``root/<hash of generator settings>/<image key>.json``, the image key from :func:`image_key`."""

    def __init__(self, root: str | Path, generator_key: str) -> None:
        self.generator_key = generator_key
        digest = hashlib.sha1(generator_key.encode()).hexdigest()[:16]
        self.folder = Path(root).expanduser() / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "generator.txt").write_text(generator_key + "\n")

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str, size: Optional[tuple[int, int]] = None) -> Optional[tuple[Proposals, float]]:
        """Cached proposals of the image with ``key`` and the seconds it took to make them, or None
        where there is no usable entry: none, another generator's, or one that does not hold
        together (masks of mixed sizes or of another size than ``size``, the image's; scores
        missing, of another count or not finite; boxes of another count). Such an entry is made
        anew rather than trusted: its sentences would count as misses on every run."""
        path = self._path(key)
        try:
            entry = json.loads(path.read_text())
            if entry.get("generator") != self.generator_key:
                return None
            height, width = (int(v) for v in entry["size"])
            masks = [decode_rle(rle) for rle in entry["masks"]]
            stack = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
            scores = np.asarray(entry["scores"], dtype=np.float32).reshape(-1)
            boxes = entry.get("boxes")  # a generator's own boxes (FreeSOLO's are not tight); else the masks'
            boxes = None if boxes is None else np.asarray(boxes, dtype=np.float32).reshape(len(stack), 4)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):  # not an entry of ours
            return None
        if stack.shape[1:] != (height, width) or (size is not None and (height, width) != tuple(size)):
            return None
        if len(scores) != len(stack) or not np.isfinite(scores).all():
            return None
        return Proposals(stack, scores, boxes), float(entry.get("seconds", 0.0))

    def put(self, key: str, proposals: Proposals, seconds: float) -> None:
        entry = {
            "generator": self.generator_key,
            "size": list(proposals.image_size),
            "seconds": seconds,
            "scores": [float(s) for s in proposals.scores],
            "masks": [encode_rle(m) for m in proposals.masks],
            "boxes": np.asarray(proposals.boxes, dtype=np.float64).tolist(),
        }
        handle, temp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(handle, "w") as stream:
            json.dump(entry, stream)
        os.replace(temp, self._path(key))

    def get_or_make(self, image_path: str | Path, make: Callable[[], Proposals],
                    size: Optional[tuple[int, int]] = None) -> tuple[Proposals, float]:
        """The cached proposals of the image file at ``image_path`` (whose pixels are ``size``,
        where known), or ``make()``'s, then cached."""
        key = image_key(image_path)
        cached = self.get(key, size)
        if cached is not None:
            return cached
        start = time.perf_counter()
        proposals = make()
        seconds = time.perf_counter() - start
        self.put(key, proposals, seconds)
        return proposals, seconds
