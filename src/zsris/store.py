"""Crash-safe stores of results (SQLite), so evaluations and batch jobs resume.

Each image's records are committed in one transaction as soon as they exist; a sentence id
(eval) or a pair id (batch) is the primary key, so a resumed or duplicated run never counts
one twice. The run's settings are kept beside the records and a resume with other settings
is refused.

One process owns a run at a time: the store holds an exclusive ``flock`` on ``run.lock`` in
the run folder for as long as it is open, and a second process is refused with a message that
names the owner. Two processes computing the same run would only do the work twice, and the
kernel releases the lock of a killed process, so a crashed run resumes without any clean-up.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .errors import ZsrisError
from .methods.registry import DEFAULT_METHOD, METHOD_REGISTRY
from .proposals.registry import PROPOSAL_REGISTRY

#: The file that marks a run folder (and holds its lock).
RUN_LOCK = "run.lock"
META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    sent_id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS image_keys (
    image_id INTEGER PRIMARY KEY,
    key TEXT NOT NULL
);
"""


def _lock_run(folder: Path) -> int:
    """An open descriptor holding the run folder's exclusive lock; refuses if another process has it."""
    return lock_file(folder / RUN_LOCK, str(folder), "--out")


def lock_file(path: Path, what: str, flag: str) -> int:
    """An open descriptor holding ``path``'s exclusive ``flock`` (the kernel releases it when the
    process ends, however it ends); refuses, naming the owner's pid, if another process has it."""
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(handle)
        raise ZsrisError(f"{what} is in use by another zsris process (pid {owner}); wait for it to "
                         f"finish, or use another {flag}") from None
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
    return handle


def _current_layout(settings: dict[str, Any]) -> dict[str, Any]:
    """Stored settings in today's layout, so that a run stored by an earlier version resumes
    unchanged: until version 0.1.0 a run's proposal spec held every built-in generator's settings
    as fields (``sam_checkpoint``, ``sam_model``, ``path``), now its own generator's under
    ``options``; a spec now spells out every setting of its generator's config (those it left out
    were at their defaults); a run stored before methods could be chosen was scored by the
    paper's; and a method spec spells out every setting of its method (those added later were at
    their defaults)."""
    spec = settings.get("proposals")
    if isinstance(spec, dict) and "options" not in spec and "sam_model" in spec:
        options = {"sam": {"checkpoint": spec.get("sam_checkpoint"), "model": spec.get("sam_model")},
                   "file": {"path": spec.get("path")}}.get(spec.get("name"), {})
        spec = {"name": spec.get("name"), "max_proposals": spec.get("max_proposals"), "options": options}
    if isinstance(spec, dict) and isinstance(spec.get("options"), dict) and spec.get("name") in PROPOSAL_REGISTRY:
        spec = {**spec, "options": {**PROPOSAL_REGISTRY[spec["name"]].options, **spec["options"]}}
    layout = {**settings, "proposals": spec} if spec is not None else dict(settings)
    if "method" not in layout and "alpha" in layout:  # a segmenter's settings, not a proposal run's
        layout["method"] = {"name": DEFAULT_METHOD, "options": {}}
    method = layout.get("method")
    if isinstance(method, dict) and isinstance(method.get("options"), dict) and method.get("name") in METHOD_REGISTRY:
        layout["method"] = {**method, "options": {**METHOD_REGISTRY[method["name"]].options, **method["options"]}}
    return layout


class RunStore:
    """An SQLite file holding one run's settings and records, locked to this process.

    ``schema`` creates the records' table ``table``, whose column ``image_column`` names each
    record's image, and the table ``image_keys``: each image's content key (:meth:`forget_changed`)
    under the same column. ``new_run_hint`` ends the message that refuses a resume with other
    settings (how to start a new run instead), ``damaged_hint`` the message that refuses a file
    cut short or overwritten (how to start over: running again would fail the same way).
    ``on_locked`` runs once the run folder's lock is held, before the database is opened (a
    batch's ``--overwrite`` clears the folder there, so it never deletes what another process is
    writing)."""

    schema = ""
    table = ""
    image_column = ""
    new_run_hint = "use another --out to start a new run"
    damaged_hint = "use another --out to start over, or delete the run folder"

    def __init__(self, path: str | Path, settings: dict[str, Any],
                 on_locked: Optional[Callable[[], None]] = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_run(self.path.parent)
        try:
            if on_locked is not None:
                on_locked()
            self.connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            try:
                self.connection.execute("PRAGMA journal_mode=WAL")
                self.connection.execute("PRAGMA synchronous=FULL")
                self._check_intact()
                self.connection.executescript(META + self.schema)
            except sqlite3.DatabaseError as error:  # running again would fail the same way: say how to start over
                raise ZsrisError(f"{self.path} is damaged ({error}), so this run cannot go on; "
                                 f"{self.damaged_hint}") from None
            self._check_settings(settings)
        except BaseException:
            os.close(self._lock)
            raise

    def _check_intact(self) -> None:
        """Refuse a store whose file was cut short or overwritten (SQLite's quick check: every page
        read once, a fraction of a second for a split's records)."""
        problems = [row[0] for row in self.connection.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(problems[0])

    def _check_settings(self, settings: dict[str, Any]) -> None:
        wanted = json.dumps(settings, sort_keys=True)
        self.connection.execute("INSERT OR IGNORE INTO meta VALUES ('settings', ?)", (wanted,))
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        stored = _current_layout(json.loads(row[0]))
        if json.dumps(stored, sort_keys=True) == wanted and row[0] != wanted:
            self.connection.execute("UPDATE meta SET value = ? WHERE key = 'settings'", (wanted,))
        elif row[0] != wanted:
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise ZsrisError(
                f"{self.path.parent} holds a run with other settings ({', '.join(changed)} differ); "
                f"{self.new_run_hint}"
            )

    def image_keys(self) -> dict[Any, str]:
        """Each image's content key, as it was when its records were made."""
        return dict(self.connection.execute(f"SELECT {self.image_column}, key FROM image_keys"))

    def image_ids(self) -> set[Any]:
        """The images that have records."""
        return {row[0] for row in self.connection.execute(f"SELECT DISTINCT {self.image_column} FROM {self.table}")}

    def keep_keys(self, keys: dict[Any, str]) -> None:
        """Record ``keys`` for images done before keys were kept (their records are trusted)."""
        with self.connection:
            self.connection.executemany("INSERT OR IGNORE INTO image_keys VALUES (?, ?)", keys.items())

    def forget_images(self, images: Iterable[Any]) -> int:
        """Drop every record of ``images`` and their content keys, in one transaction, so that they
        are made again; returns how many records went."""
        rows = [(image,) for image in images]
        with self.connection:
            self.connection.execute("BEGIN")
            before = self.connection.total_changes
            self.connection.executemany(f"DELETE FROM {self.table} WHERE {self.image_column} = ?", rows)
            removed = self.connection.total_changes - before
            self.connection.executemany(f"DELETE FROM image_keys WHERE {self.image_column} = ?", rows)
            return removed

    def forget_changed(self, keys: dict[Any, str]) -> list[Any]:
        """The one check of a resume against changed input: ``keys`` are images' content keys as
        they are now (what their records would be made from: a file's bytes, an image's sentences
        and annotations). The records of an image whose stored key differs are dropped, to be made
        again; an image with records but no stored key (made before keys were kept) is trusted,
        and its key kept. Returns the changed images, in the order of ``keys``."""
        stored = self.image_keys()
        changed = [image for image, key in keys.items() if image in stored and stored[image] != key]
        if changed:
            self.forget_images(changed)
        with_records = self.image_ids()
        self.keep_keys({image: key for image, key in keys.items() if image not in stored and image in with_records})
        return changed

    def close(self) -> None:
        """Close the database and release the run's lock (idempotent)."""
        if self._lock >= 0:
            self.connection.close()
            os.close(self._lock)
            self._lock = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PredictionStore(RunStore):
    """Per-sentence predictions of an evaluation, keyed by sentence id, with each image's content
    key (its file, sentences and annotations, see :func:`zsris.jobs.evaluation.image_content_key`)
    as it was when its records were made, so that a resume notices data that changed since."""

    schema = SCHEMA
    table, image_column = "predictions", "image_id"

    def done(self) -> set[int]:
        return {row[0] for row in self.connection.execute("SELECT sent_id FROM predictions")}

    def add(self, records: Iterable[dict[str, Any]], keys: Optional[dict[int, str]] = None) -> int:
        """Commit records (and the content keys of their images, from ``keys``) atomically;
        returns how many records were new."""
        records = list(records)
        rows = [(int(r["sent_id"]), int(r["image_id"]), json.dumps(r)) for r in records]
        images = {int(r["image_id"]) for r in records}
        with self.connection:
            self.connection.execute("BEGIN")
            before = self.connection.total_changes
            self.connection.executemany("INSERT OR IGNORE INTO predictions VALUES (?, ?, ?)", rows)
            added = self.connection.total_changes - before
            if keys:
                self.connection.executemany("INSERT OR REPLACE INTO image_keys VALUES (?, ?)",
                                            [(i, keys[i]) for i in images if i in keys])
            return added

    def records(self, sent_ids: Optional[set[int]] = None) -> list[dict[str, Any]]:
        rows = self.connection.execute("SELECT sent_id, record FROM predictions ORDER BY sent_id")
        return [json.loads(record) for sent_id, record in rows if sent_ids is None or sent_id in sent_ids]


BATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    image TEXT NOT NULL,
    expression TEXT NOT NULL,
    ok INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS image_keys (
    image TEXT PRIMARY KEY,
    key TEXT NOT NULL
);
"""


class BatchStore(RunStore):
    """The pairs a batch job has done, keyed by pair id: results and failures, with the position
    of each pair in its input (the order of the output files) and what it was made of (image and
    expression), so that a resume against another input under the same ids is noticed."""

    schema = BATCH_SCHEMA
    table, image_column = "pairs", "image"
    new_run_hint = "give --overwrite to replace it, or another -o"
    damaged_hint = ("the results.jsonl and errors.jsonl beside it hold every pair done before; give --overwrite to "
                    "start over, or another -o")

    def done(self) -> dict[str, tuple[str, str]]:
        """Each done pair's id -> (image, expression as JSON)."""
        return {row[0]: (row[1], row[2]) for row in self.connection.execute("SELECT id, image, expression FROM pairs")}

    def add(self, rows: Iterable[tuple[str, int, str, Any, bool, dict[str, Any]]],
            keys: Optional[dict[str, str]] = None) -> int:
        """Commit ``(id, position, image, expression, ok, record)`` rows, and the content keys of
        their image files (``keys``), atomically; returns how many rows were new."""
        values = [(pair_id, position, image, json.dumps(expression), int(ok), json.dumps(record))
                  for pair_id, position, image, expression, ok, record in rows]
        with self.connection:
            self.connection.execute("BEGIN")
            before = self.connection.total_changes
            self.connection.executemany("INSERT OR IGNORE INTO pairs VALUES (?, ?, ?, ?, ?, ?)", values)
            added = self.connection.total_changes - before
            self.connection.executemany("INSERT OR REPLACE INTO image_keys VALUES (?, ?)", (keys or {}).items())
            return added

    def records(self, ok: bool) -> list[dict[str, Any]]:
        """The results (``ok``) or the failures, in input order."""
        rows = self.connection.execute("SELECT record FROM pairs WHERE ok = ? ORDER BY position, id", (int(ok),))
        return [json.loads(row[0]) for row in rows]

    def forget_failed(self) -> int:
        """Drop the failures, so that their pairs are tried again; returns how many."""
        with self.connection:
            return self.connection.execute("DELETE FROM pairs WHERE ok = 0").rowcount
