"""A batch job's input: (image, expression) pairs from a folder, a manifest or Python.

The pairs come from a folder (every image under it against every expression) or from a
manifest (CSV, TSV or JSONL with ``image``, ``expression`` and optionally ``id``). A row that
cannot be done (a missing column, a path outside the manifest's folder) becomes a pair with an
``error`` and the job goes on; a manifest that cannot be read at all is refused before any
work, with the line that breaks it. Nothing here loads a model.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from ..errors import ZsrisError, ZsrisWarning
from ..names import file_part
from ..records import NamedTwice, PairRecord, once_each
from ..store import RUN_LOCK
from ..types import DEFAULT_TOP_K, SegmentResult

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ManifestError(ZsrisError):
    """The batch input cannot be read: a manifest that does not parse, an empty folder ..."""


@dataclass(frozen=True)
class Pair:
    """One (image, expression) pair. ``image`` is the path as the input gave it, ``path`` the
    file read; ``label`` tells the pair apart from the image's other pairs in file names;
    ``error`` is set for a row refused before any work (a missing column, a path outside)."""

    id: str
    image: str
    path: str
    expression: Any
    label: str
    error: Optional[str] = None


@dataclass
class PairResult:
    """A pair's answer, or the reason there is none."""

    pair: Pair
    result: Optional[SegmentResult] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self, top_k: Optional[int] = DEFAULT_TOP_K) -> PairRecord:
        """The pair's record, its answer ranking the ``top_k`` best proposals."""
        pair = self.pair
        if self.ok:
            return PairRecord(pair.id, pair.image, pair.expression, self.result.to_dict(pair.image, top_k))
        return PairRecord(pair.id, pair.image, pair.expression, error=self.error)


# -- inputs -------------------------------------------------------------------------------
#: What ``zsris segment`` writes beside its records: never an input of a later run.
OUTPUT_SUFFIXES = (".mask.png", ".overlay.png")


def images_under(folder: Path, skip: Sequence[Path] = ()) -> list[Path]:
    """Every image file under ``folder`` (recursively, by suffix, case-insensitive; symbolic links
    to folders are not followed), in path order; a folder without any is refused.

    zsris's own outputs are left out: the folders in ``skip`` (a batch's output folder), any folder
    that holds a zsris run (its ``run.lock``) and ``zsris segment``'s ``*.mask.png`` and
    ``*.overlay.png``, so that a run never reads what it or an earlier run wrote. A folder that
    cannot be read is skipped with a warning that names it, not in silence."""
    skipped = {Path(p).resolve() for p in skip}
    unreadable: list[OSError] = []
    images = []
    for root, folders, files in os.walk(folder, onerror=unreadable.append):
        here = Path(root)
        if here.resolve() in skipped or (here != folder and RUN_LOCK in files):
            folders[:] = []
            continue
        for name in files:
            lowered = name.lower()
            path = here / name
            if lowered.endswith(IMAGE_SUFFIXES) and not lowered.endswith(OUTPUT_SUFFIXES) and path.is_file():
                images.append(path)
    if unreadable:
        first = unreadable[0]
        warnings.warn(f"zsris: {len(unreadable)} folder(s) under {folder} could not be read and were skipped "
                      f"(the first: {first.filename}: {first.strerror})", ZsrisWarning, stacklevel=2)
    images.sort(key=lambda p: p.relative_to(folder).as_posix())
    if not images:
        raise ManifestError(f"{folder} holds no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
    return images


def folder_pairs(folder: str | Path, expressions: Sequence[str], skip: Sequence[Path] = ()) -> list[Pair]:
    """Every image under ``folder`` (recursively, by suffix, case-insensitive; zsris's own outputs
    and the folders in ``skip`` left out: :func:`images_under`) against every expression, in path
    order; ids are ``relative/path.jpg#N`` (N counts the expressions from 1)."""
    folder = Path(folder)
    if not expressions:
        raise ManifestError("a folder needs expressions: give one or more -e EXPRESSION")
    pairs = []
    for image in images_under(folder, skip):
        relative = image.relative_to(folder).as_posix()
        for number, expression in enumerate(expressions, 1):
            pairs.append(Pair(f"{relative}#{number}", relative, str(image), expression, f"e{number}"))
    return pairs


#: The largest manifest read: 10 million pairs of about 100 bytes.
MAX_MANIFEST_BYTES = 1 << 30


def read_manifest(path: str | Path, allow_outside: bool = False) -> list[Pair]:
    """The pairs of a CSV, TSV or JSONL manifest (by suffix). Image paths are relative to the
    manifest's folder, or absolute; a relative path that leaves the folder through ``..`` is
    refused for its row unless ``allow_outside``. ``id`` defaults to the row's line number."""
    path = Path(path)
    kind = MANIFEST_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(f"{path}: a manifest ends in {', '.join(MANIFEST_FORMATS)} (or give a folder)")
    if path.exists() and not path.is_file():  # a pipe may block for ever, a link to /dev/zero never end
        raise ManifestError(f"{path}: not a regular file (a pipe, socket or device), not a manifest")
    if path.is_file() and path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: {path.stat().st_size:,} bytes, over the {MAX_MANIFEST_BYTES:,} a manifest may "
                            f"hold; split it")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise ManifestError(f"{path} line {line}: not UTF-8 text") from None
    rows = list(_jsonl_rows(path, text) if kind == "jsonl" else _table_rows(path, text, kind))
    if not rows:
        raise ManifestError(f"{path} holds no rows")
    pairs, seen = [], {}
    for line, row in rows:
        pair = _pair(row, line, path.parent, allow_outside)
        if pair.id in seen:
            raise ManifestError(f"{path} line {line}: id {pair.id!r} is also the id of line {seen[pair.id]}")
        seen[pair.id] = line
        pairs.append(pair)
    return pairs


def _table_rows(path: Path, text: str, kind: str) -> Iterator[tuple[int, dict]]:
    # rows end at line breaks alone (newline=""): str.splitlines would also split at U+2028, U+0085 ...
    # inside an expression, and read the rest of it as another row
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if kind == "csv" else "\t", strict=True)
    start = 1
    try:
        header = reader.fieldnames or []
        missing = [name for name in ("image", "expression") if name not in header]
        if missing:
            raise ManifestError(f"{path} line 1: the header has no {' or '.join(repr(m) for m in missing)} column "
                                f"(it has {', '.join(repr(h) for h in header) or 'nothing'})")
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:  # csv would keep the last one's values, silently
            raise ManifestError(f"{path} line 1: the header names {', '.join(repr(n) for n in twice)} twice")
        start = reader.line_num + 1
        for row in reader:
            yield start, row
            start = reader.line_num + 1
    except csv.Error as error:
        raise ManifestError(f"{path} line {start}: {error}") from None


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    for line, content in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may stand inside a string
        if not content.strip():
            continue
        try:
            row = json.loads(content, object_pairs_hook=once_each)
        except json.JSONDecodeError as error:
            raise ManifestError(f"{path} line {line}: not JSON ({error.msg})") from None
        except NamedTwice as twice:  # json would keep the last one's value, silently
            raise ManifestError(f"{path} line {line}: names {twice} twice (which one is meant?)") from None
        except RecursionError:
            raise ManifestError(f"{path} line {line}: not a manifest row (nested too deeply to read)") from None
        if not isinstance(row, dict):
            raise ManifestError(f"{path} line {line}: expected an object with image and expression, "
                                f"not {type(row).__name__}")
        yield line, row


def _pair(row: dict, line: int, folder: Path, allow_outside: bool) -> Pair:
    given_id = row.get("id")
    pair_id = str(given_id) if given_id not in (None, "") else str(line)
    image, expression = row.get("image"), row.get("expression")
    missing = [name for name, value in (("image", image), ("expression", expression)) if value is None]
    if missing:
        return Pair(pair_id, str(image or ""), "", expression, pair_id,
                    f"line {line} has no {' or '.join(missing)}")
    image = str(image)
    if not image.strip():
        return Pair(pair_id, image, "", expression, pair_id, f"line {line} has an empty image path")
    if "\0" in image:  # no file system takes it: this row fails, the others go on
        return Pair(pair_id, image, "", expression, pair_id, f"line {line}: the image path holds a NUL character")
    resolved = os.path.normpath(folder / image)
    if not allow_outside and not Path(image).is_absolute():
        # by its words (..) or through a symbolic link on the way
        link = not _outside(resolved, os.path.normpath(folder)) and _outside(os.path.realpath(resolved),
                                                                             os.path.realpath(folder))
        if link or _outside(resolved, os.path.normpath(folder)):
            return Pair(pair_id, image, resolved, expression, pair_id,
                        f"{image} is outside the manifest's folder{' through a link' if link else ''}; "
                        f"give --allow-outside to read it")
    return Pair(pair_id, image, resolved, expression, pair_id)


def _outside(path: str, folder: str) -> bool:
    return os.path.relpath(path, folder).split(os.sep)[0] == ".."


def group_by_image(pairs: Iterable[Pair]) -> dict[str, list[Pair]]:
    """The pairs of each image file, images in the order of their first pair."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.path, []).append(pair)
    return groups


def output_name(pair: Pair) -> str:
    """A file name (no folder, no suffix) for the pair's mask and overlay: the image's relative
    path with its extension (``bars.jpg`` and ``bars.png`` in one folder are two images; an
    absolute path's file name: the pair's id keeps it apart) with every run of other
    characters than letters, digits, ``.``, ``-`` and ``_`` made ``_`` (so
    ``/`` and ``..`` cannot lead out of the output folder), then ``--`` and the pair's label.
    Where anything was replaced or cut, a hash of the original keeps two names apart."""
    image = Path(pair.image)
    stem = str(Path(image.name) if image.is_absolute() else image) if pair.image else "image"
    original = f"{stem}--{pair.label}"
    name = file_part(original)
    if name != original or len(name) > 150:
        name = f"{name[:150]}-{hashlib.sha1(original.encode()).hexdigest()[:8]}"
    return name


def as_pairs(items: Iterable[Any]) -> list[Pair]:
    """``(image path, expression)`` tuples (or :class:`Pair` objects) as pairs whose ids are their
    positions, for :func:`~zsris.jobs.segment_pairs`."""
    pairs = []
    for position, item in enumerate(items):
        if isinstance(item, Pair):
            pairs.append(item)
            continue
        try:
            image, expression = item
        except (TypeError, ValueError):
            raise ZsrisError(f"pair {position} is not an (image path, expression) pair: {item!r}") from None
        if not isinstance(image, (str, Path)):
            raise ZsrisError(f"pair {position}: segment_pairs reads image files; give a path, not "
                             f"{type(image).__name__} (segment_many takes arrays and PIL images)")
        pairs.append(Pair(str(position), str(image), os.path.normpath(image), expression, str(position)))
    return pairs


def in_input_order(pairs: Sequence[Pair],
                   batches: Iterable[tuple[list[PairResult], Any]]) -> Iterator[PairResult]:
    """Each result of :func:`run_pairs` as soon as every pair before it in ``pairs`` has one."""
    position = {pair.id: n for n, pair in enumerate(pairs)}
    waiting: dict[int, PairResult] = {}
    following = 0
    for batch, _ in batches:
        for answer in batch:
            waiting[position[answer.pair.id]] = answer
        while following in waiting:
            yield waiting.pop(following)
            following += 1
