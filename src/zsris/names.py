"""Names of the files written for results: they say what they hold and never collide.

A result's files are ``{image}--{expression}--{run}`` plus a suffix: the image's file name with
its extension (``bars.jpg`` and ``bars.png`` are two images), the expression as a slug (with a
short hash of the expression where the slug loses any of it: punctuation, length, non-ASCII
letters), and a short hash of the run's settings (another backbone or threshold: another name).
A name already taken in the folder gets ``-2``, ``-3`` ...: a run adds, it never overwrites.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

SLUG_CHARS = 40
#: The files of one result; the first is claimed before any is written (:func:`claim_stem`).
RESULT_SUFFIXES = (".json", ".mask.png", ".overlay.png")


def short_hash(text: str, length: int = 6) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def slug(text: str, limit: int = SLUG_CHARS) -> str:
    """``text`` as lowercase ASCII words joined by ``-``, at most ``limit`` characters; a hash of
    ``text`` follows where that lost any of it, so that two expressions never share a slug."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if words and words == re.sub(r"\s+", "-", text.strip().lower()) and len(words) <= limit:
        return words
    return f"{words[:limit].rstrip('-') or 'expression'}-{short_hash(text)}"


def run_tag(settings: Mapping[str, Any]) -> str:
    """Eight hex digits that tell runs with other settings apart (the JSON record says which)."""
    return short_hash(json.dumps(settings, sort_keys=True, default=str), 8)


def file_part(name: str) -> str:
    """A file name's characters other than letters, digits, ``.``, ``-``, ``_`` made ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".") or "image"


def claim_stem(folder: Path, stem: str, suffixes: Sequence[str]) -> Path:
    """``folder / stem`` (or ``stem-2``, ``stem-3`` ...) such that no file of it with any of
    ``suffixes`` exists; the first suffix's file is created empty at once, so that a concurrent
    run cannot take the same name."""
    number = 1
    while True:
        base = folder / (stem if number == 1 else f"{stem}-{number}")
        if not any(Path(f"{base}{suffix}").exists() for suffix in suffixes[1:]):
            try:
                os.close(os.open(f"{base}{suffixes[0]}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return base
            except FileExistsError:
                pass
        number += 1
