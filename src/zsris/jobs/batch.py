"""Batch jobs: many (image, expression) pairs, one model load, resumable outputs.

The pairs (:mod:`zsris.jobs.pairs`) are grouped by image, so that an image's proposals and
visual features are made once for all of its expressions, and the images go through the
pipelined :class:`~zsris.engine.Engine` (or Ray actors). :func:`segment_pairs` yields the
answers in Python; :class:`BatchJob` also owns a folder of outputs: a crash-safe store that a
rerun resumes, ``results.jsonl`` / ``errors.jsonl`` in input order, optional mask and overlay
PNGs and a COCO results file, exactly as ``zsris batch`` writes them.

A pair that cannot be done (a refused row, an image that will not decode, an empty
expression) gets an error and the job goes on.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..cache import file_digest
from ..engine import Engine, ImageTask, Prepared, Preparer, image_task
from ..errors import ZsrisError, ZsrisWarning, failure_reason
from ..images import load_image
from ..records import PairRecord
from ..text import check_expression
from ..types import DEFAULT_TOP_K, ImageFeatures
from .pairs import Pair, PairResult, as_pairs, group_by_image, in_input_order, output_name
from .run import (
    Execution,
    ImageSource,
    ImageWork,
    prepared_features,
    progress_bar,
    quiet_segmenter,
    run_images,
)

if TYPE_CHECKING:
    from ..config import SegmenterConfig
    from ..segmenter import Segmenter
    from ..store import BatchStore

RESULTS, ERRORS, SETTINGS = "results.jsonl", "errors.jsonl", "settings.json"
COCO_RESULTS, COCO_IMAGES = "coco_results.json", "coco_images.json"
STORE = "batch.sqlite"
#: Everything a batch writes in OUT: what ``overwrite`` removes (and nothing else).
OUTPUTS = (RESULTS, ERRORS, SETTINGS, COCO_RESULTS, COCO_IMAGES, STORE, f"{STORE}-wal", f"{STORE}-shm",
           "masks", "overlays")


# -- the work, image by image ---------------------------------------------------------------
def image_results(segmenter: "Segmenter", pairs: Sequence[Pair], pixels: np.ndarray, name: str,
                  proposals=None, features: Optional[ImageFeatures] = None) -> list[PairResult]:
    """Every pair about one decoded image, its visual work done once (or already, ``features``).
    An empty or overlong expression fails its pair only; an image that cannot be segmented (no
    proposals ...) fails all of its pairs. The image's expressions are scored together; should
    that fail, each is scored alone, so that one expression's failure is its own."""
    answers: dict[str, PairResult] = {}
    good = []
    for pair in pairs:
        try:
            check_expression(pair.expression)
            good.append(pair)
        except ZsrisError as error:
            answers[pair.id] = PairResult(pair, error=str(error))
    if good:
        try:
            if features is None:
                features = segmenter.image_features(pixels, name, proposals, expressions=[p.expression for p in good])
        except Exception as error:  # noqa: BLE001 - one image's failure must not stop a batch of thousands
            answers.update((p.id, PairResult(p, error=failure_reason(error))) for p in good)
            good = []
    if good:
        try:
            results = segmenter.score(features, [p.expression for p in good])
            answers.update((p.id, PairResult(p, r)) for p, r in zip(good, results))
        except Exception:  # noqa: BLE001 - then each alone: a neighbour's text must not fail this pair
            for pair in good:
                try:
                    answers[pair.id] = PairResult(pair, segmenter.score(features, [pair.expression])[0])
                except Exception as error:  # noqa: BLE001 - this pair's own failure, with its reason
                    answers[pair.id] = PairResult(pair, error=failure_reason(error))
    return [answers[p.id] for p in pairs]


def prepared_results(segmenter: "Segmenter", pairs: Sequence[Pair], prepared: Prepared,
                     features: Optional[ImageFeatures] = None) -> list[PairResult]:
    """The results of an image the engine prepared (its pairs fail, with the reason, if it failed)."""
    if prepared.error is not None:
        return [PairResult(p, error=prepared.error) for p in pairs]
    return image_results(segmenter, pairs, prepared.pixels, Path(prepared.key).name, prepared.proposals, features)


def refused_results(pairs: Sequence[Pair]) -> list[PairResult]:
    """The answers of the rows refused before any work (a missing column, a path outside)."""
    return [PairResult(p, error=p.error) for p in pairs if p.error is not None]


def run_pairs(segmenter: "Segmenter", pairs: Sequence[Pair],
              engine: Engine) -> Iterator[tuple[list[PairResult], Optional[np.ndarray]]]:
    """The results of ``pairs`` with the decoded image they are about (None where none was),
    image by image in the order of their first pair: first the rows refused before any work,
    then each image as the engine prepares it, the job's images per pass through CLIP together."""
    refused = refused_results(pairs)
    if refused:
        yield refused, None
    groups = group_by_image(p for p in pairs if p.error is None)
    tasks = [image_task(path, path) for path in groups]
    for prepared, features in prepared_features(segmenter, engine, tasks):
        yield prepared_results(segmenter, groups[prepared.key], prepared, features), prepared.pixels


def segment_pairs(segmenter: "Segmenter", pairs: Iterable[Any], workers: int = 0,
                  execution: Optional[Execution] = None) -> Iterator[PairResult]:
    """Segment ``(image path, expression)`` pairs (or :class:`~zsris.jobs.pairs.Pair` objects),
    yielding a :class:`~zsris.jobs.pairs.PairResult` per pair in the order given (``.result``,
    or ``.error`` saying why there is none).

    The pairs of one image share its visual work; ``workers`` processes decode images and make
    proposals ahead of the model (0: all here; the segmenter's own generator is the one used,
    rebuilt from its spec in the workers). A pair that fails (an unreadable image, an empty
    expression) does not stop the others. Results wait until every earlier pair has one, so
    give an image's pairs together to keep few masks in memory. For outputs on disk that a
    rerun resumes, use :class:`BatchJob`."""
    pairs = as_pairs(pairs)
    execution = execution or Execution(proposal_workers=workers, progress=False)
    engine = execution.local_engine(segmenter.proposals, max_pixels=segmenter.config.max_pixels)
    return in_input_order(pairs, run_pairs(segmenter, pairs, engine))


class ImageJob:
    """One image's pairs, start to finish (:class:`~zsris.jobs.run.ImageWork`'s worker, here and
    on a Ray actor): decoding where not done yet, proposals, CLIP. Returns the pairs' records
    (ranking ``top_k`` proposals) and, when ``keep_pixels``, the decoded image (for overlays):
    records, not results, so that an actor sends back a few RLE masks rather than all of the
    image's proposals."""

    def __init__(self, segmenter: "Segmenter", top_k: Optional[int] = DEFAULT_TOP_K,
                 keep_pixels: bool = False) -> None:
        self.segmenter = segmenter
        self.top_k = top_k
        self.keep_pixels = keep_pixels
        self.prepare = Preparer(None, None, segmenter.config.max_pixels).build()  # proposals: the segmenter's

    def __call__(self, path: str, pairs: Sequence[Pair], prepared: Optional[Prepared] = None,
                 features: Optional[ImageFeatures] = None) -> tuple[list[PairRecord], Optional[np.ndarray]]:
        """The pairs' records, from the image an engine or a Ray task ``prepared`` (with its
        visual ``features``, where computed) or from the file read here."""
        if prepared is None:
            prepared = self.prepare(image_task(path, path))
        pixels = prepared.pixels if self.keep_pixels else None
        records = [answer.record(self.top_k) for answer in prepared_results(self.segmenter, pairs, prepared, features)]
        return records, pixels


def path_task(job: tuple[str, Sequence[Pair]]) -> ImageTask:
    """The engine's task for a job ``(image path, its pairs)``."""
    return image_task(job[0], job[0])


def failed_records(top_k: Optional[int], job: tuple[str, Sequence[Pair]],
                   reason: str) -> tuple[list[PairRecord], None]:
    """The answer of a job that Ray could not run: each of its pairs failed, saying why."""
    return [PairResult(pair, error=reason).record(top_k) for pair in job[1]], None


def make_image_job(config: "SegmenterConfig", top_k: Optional[int], keep_pixels: bool) -> ImageJob:
    """A Ray actor's worker: its own models, loaded once (module level, so Ray can ship it)."""
    return ImageJob(quiet_segmenter(config), top_k, keep_pixels)


# -- the outputs ----------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so that a kill never leaves half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


class Outputs:
    """The files of a batch in OUT. The store is the truth; results.jsonl and errors.jsonl are
    appended as pairs finish and rewritten from the store (in input order) at the start and the
    end of a run, so that whatever a kill cut short is made whole by the next run."""

    def __init__(self, out: Path, save_masks: bool, save_overlays: bool, random_weights: bool,
                 pairs: Sequence[Pair]) -> None:
        self.out = out
        self.pairs = {pair.id: pair for pair in pairs}
        self.masks = out / "masks" if save_masks else None
        self.overlays = out / "overlays" if save_overlays else None
        self.note = ""
        if random_weights:
            from ..render import RANDOM_WEIGHTS_NOTE

            self.note = RANDOM_WEIGHTS_NOTE
        for folder in (self.masks, self.overlays):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def rewrite(self, store: "BatchStore") -> None:
        _write_atomic(self.out / RESULTS, _jsonl(self.named(store.records(ok=True))))
        _write_atomic(self.out / ERRORS, _jsonl(store.records(ok=False)))

    def named(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records with the pictures of their answers that OUT holds (``files``: ``mask``,
        ``overlay``, paths relative to OUT), made by this run or an earlier one: an id such as
        ``alpha.png#1`` does not say which ``masks/alpha.png--e1.png`` is its."""
        named = []
        for record in records:
            pair = self.pairs.get(record.get("id"))
            name = None if pair is None else output_name(pair)
            files = {} if name is None else {
                kind: f"{folder}/{name}.png" for kind, folder in (("mask", "masks"), ("overlay", "overlays"))
                if (self.out / folder / f"{name}.png").is_file()}
            named.append({**record, "files": files} if files else record)
        return named

    def pictures(self, records: Sequence[PairRecord], pixels: Optional[np.ndarray]) -> None:
        """Mask and overlay PNGs of the records' answers (before they are committed: a rerun
        rewrites them), the masks decoded from the records themselves."""
        if self.masks is None and self.overlays is None:
            return
        from ..masks import decode_rle
        from ..present import caption
        from ..render import draw_overlay, mask_image

        for record in records:
            if not record.ok:
                continue
            answer, name = record.result, output_name(self.pairs[record.id])
            mask = decode_rle(answer["mask"])
            if self.masks is not None:
                mask_image(mask).save(self.masks / f"{name}.png")
            if self.overlays is not None and pixels is not None:
                box = tuple(answer["box"]) if answer["found"] else (0, 0, 0, 0)
                draw_overlay(pixels, mask, box, caption(answer["expression"], answer["found"]),
                             warning=self.note).save(self.overlays / f"{name}.png")

    def fill_in(self, store: "BatchStore", max_pixels: int) -> int:
        """The pictures this run asks for of pairs answered before, where the folder lacks them (a
        rerun that adds ``--save-masks`` or ``--save-overlays``), from the stored answers (an
        overlay decodes its image again); returns how many pairs got pictures."""
        if self.masks is None and self.overlays is None:
            return 0
        missing: dict[str, list[PairRecord]] = {}
        for record in store.records(ok=True):
            pair = self.pairs.get(record.get("id"))
            if pair is None:
                continue
            name = output_name(pair)
            if any(folder is not None and not (folder / f"{name}.png").exists()
                   for folder in (self.masks, self.overlays)):
                missing.setdefault(pair.path, []).append(PairRecord(pair.id, pair.image, pair.expression, record))
        for path, records in missing.items():
            pixels = None
            if self.overlays is not None:
                try:
                    pixels = load_image(path, max_pixels)
                except ZsrisError as error:
                    warnings.warn(f"zsris: no overlay for {path} ({error})", ZsrisWarning, stacklevel=2)
            self.pictures(records, pixels)
        return sum(len(records) for records in missing.values())

    def append(self, results: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
        for name, records in ((RESULTS, results), (ERRORS, errors)):
            if records:
                with open(self.out / name, "a") as stream:
                    stream.write(_jsonl(self.named(records) if name == RESULTS else records))


class Commit:
    """Where a batch's answers go as they come: the pictures first (a rerun rewrites them), then
    the store and the output files; counted, and the progress ``bar`` moved once an image."""

    def __init__(self, pairs: Sequence[Pair], store: "BatchStore", outputs: Outputs) -> None:
        self.pairs, self.store, self.outputs = pairs, store, outputs
        self.position = {pair.id: n for n, pair in enumerate(pairs)}
        self.by_id = {pair.id: pair for pair in pairs}
        self.done = self.failed = 0
        self.bar: Any = None  # the progress bar, once it exists (its Ctrl-C message is :meth:`saved`)

    def refused(self, records: Sequence[PairRecord]) -> None:
        """The rows refused before any work."""
        self._commit(records, None)

    def image(self, answer: tuple[Sequence[PairRecord], Optional[np.ndarray]]) -> None:
        """An image's records, with the decoded image where the overlays need it."""
        self._commit(*answer)
        self.bar.update(1)

    def _commit(self, records: Sequence[PairRecord], pixels: Optional[np.ndarray]) -> None:
        self.outputs.pictures(records, pixels)
        rows = [(r.id, self.position[r.id], r.image, r.expression, r.ok, r.to_dict()) for r in records]
        files = {self.by_id[r.id].image: self.by_id[r.id].path for r in records if r.ok}
        keys = {image: file_key(path) for image, path in files.items()}  # once an image, read just now
        self.store.add(rows, {image: key for image, key in keys.items() if key is not None})
        self.outputs.append([row[5] for row in rows if row[4]], [row[5] for row in rows if not row[4]])
        self.done += sum(r.ok for r in records)
        self.failed += sum(not r.ok for r in records)

    def saved(self) -> str:
        """What an interrupted run says, once the output files are made whole."""
        self.outputs.rewrite(self.store)
        return (f"zsris: interrupted; {len(self.store.done())} of {len(self.pairs)} pairs are saved in "
                f"{self.outputs.out}. Run the same command again to resume.")


def write_coco(out: Path, pairs: Sequence[Pair], store: "BatchStore") -> None:
    """The results as a COCO results file, and the image list it refers to (a COCO dataset file
    with no annotations), so that ``COCO(coco_images.json).loadRes(coco_results.json)`` works.
    Image ids number the input's images from 1 in the order of their first pair."""
    image_ids: dict[str, int] = {}
    for pair in pairs:
        image_ids.setdefault(pair.image, len(image_ids) + 1)
    results, images = [], {}
    for record in store.records(ok=True):
        if not record.get("found", True):  # "no such object": nothing to export
            continue
        image_id = image_ids[record["image"]]
        height, width = record["image_size"]
        images[image_id] = {"id": image_id, "file_name": record["image"], "height": height, "width": width}
        results.append({"image_id": image_id, "category_id": 1, "segmentation": record["mask"],
                        "score": record["score"], "pair_id": record["id"], "expression": record["expression"]})
    dataset = {"images": [images[i] for i in sorted(images)], "annotations": [],
               "categories": [{"id": 1, "name": "referred object"}]}
    _write_atomic(out / COCO_IMAGES, json.dumps(dataset))
    _write_atomic(out / COCO_RESULTS, json.dumps(results))


def clear_outputs(out: Path) -> None:
    """Remove everything an earlier batch wrote in ``out`` (:data:`OUTPUTS`), and nothing else."""
    for name in OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def check_output_folder(out: Path) -> None:
    """OUT must be a folder (or not exist yet)."""
    if out.exists() and not out.is_dir():
        raise ZsrisError(f"{out} is a file; -o names the folder that receives the results")


# -- the job --------------------------------------------------------------------------------
@dataclass
class BatchSummary:
    """What a run of a batch did (``done`` ... count this run's pairs; ``failed_overall`` every
    failure the folder holds), and the engine's timing (None on Ray)."""

    pairs: int
    done: int
    failed: int
    skipped: int
    retried: int
    images_this_run: int
    wall_seconds_per_image: float
    failed_overall: int
    written: list[Path] = field(default_factory=list)
    timing: Optional[dict[str, Any]] = None

    def table(self) -> dict[str, Any]:
        """The counts, by machine keys (:func:`zsris.report.table` labels them)."""
        return {"pairs": self.pairs, "done": self.done, "failed": self.failed, "skipped": self.skipped,
                "retried": self.retried, "images_this_run": self.images_this_run,
                "wall_seconds_per_image": self.wall_seconds_per_image}


@dataclass
class BatchJob:
    """A resumable batch: ``pairs`` (from :func:`~zsris.jobs.pairs.folder_pairs`,
    :func:`~zsris.jobs.pairs.read_manifest` or ``(image path, expression)`` tuples) segmented
    into the folder ``out``, as ``zsris batch`` does.

    >>> job = BatchJob(segmenter, folder_pairs("photos", ["the dog"]), "out", save_masks=True)
    >>> summary = job.run()     # interrupted or crashed: the same job run again goes on

    Results are committed as each image is done; a rerun skips the pairs done before (with the
    same settings and the same pairs under each id, else it is refused), ``retry_failed``
    tries the failures again, ``overwrite`` starts afresh. ``coco`` also writes a COCO results
    file; ``top_k`` ranked proposals are kept in each record."""

    segmenter: "Segmenter"
    pairs: Sequence[Any]
    out: str | Path
    save_masks: bool = False
    save_overlays: bool = False
    coco: bool = False
    top_k: int = DEFAULT_TOP_K
    overwrite: bool = False
    retry_failed: bool = False
    execution: Execution = field(default_factory=Execution)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.pairs = as_pairs(self.pairs)
        check_output_folder(self.out)

    def settings(self) -> dict[str, Any]:
        """What the records depend on: the segmenter's settings and ``top_k``."""
        from ..records import settings

        return {**settings(self.segmenter), "top_k": self.top_k}

    def run(self) -> BatchSummary:
        """Segment the pairs not done before; returns what this run did. Raises
        :class:`~zsris.jobs.run.JobInterrupted` on Ctrl-C, with everything done so far saved."""
        from ..store import BatchStore

        self.execution.check(self.segmenter.proposals)
        out, pairs = self.out, self.pairs
        clear = functools.partial(clear_outputs, out) if self.overwrite else None  # once the folder is ours
        with BatchStore(out / STORE, self.settings(), on_locked=clear) as store, \
                self.execution.session(self.segmenter.device):
            retried = self._resume(store)
            outputs = Outputs(out, self.save_masks, self.save_overlays, self.segmenter.backbone.is_random, pairs)
            outputs.rewrite(store)
            outputs.fill_in(store, self.segmenter.config.max_pixels)
            done = store.done()
            pending = [pair for pair in pairs if pair.id not in done]
            images = group_by_image(p for p in pairs if p.error is None)
            pending_images = group_by_image(p for p in pending if p.error is None)
            commit = Commit(pairs, store, outputs)
            started = time.perf_counter()
            with progress_bar(len(images), len(images) - len(pending_images), "batch", self.execution.progress,
                              commit.saved) as commit.bar:
                refused = refused_results(pending)
                if refused:
                    commit.refused([answer.record(self.top_k) for answer in refused])
                timing = run_images(self.segmenter, self.execution, self._work(pending_images), commit.image)
            seconds = time.perf_counter() - started
            outputs.rewrite(store)
            written = [out / RESULTS, out / ERRORS]
            if self.coco:
                write_coco(out, pairs, store)
                written += [out / COCO_RESULTS, out / COCO_IMAGES]
            failed_overall = len(store.records(ok=False))
        return BatchSummary(len(pairs), commit.done, commit.failed, len(pairs) - len(pending), retried,
                            len(pending_images), round(seconds / max(len(pending_images), 1), 3), failed_overall,
                            written, timing)

    def _resume(self, store: "BatchStore") -> int:
        """Make the folder ready to go on: refuse other pairs under the same ids, redo the pairs of
        images that changed, forget the failures with ``retry_failed`` (returns how many), and
        write the settings."""
        _check_same_pairs(self.out, self.pairs, store.done())
        _forget_changed_images(store, self.pairs)
        retried = store.forget_failed() if self.retry_failed else 0
        _write_atomic(self.out / SETTINGS, json.dumps(self.settings(), indent=2))
        return retried

    def _work(self, images: dict[str, list[Pair]]) -> ImageWork:
        """The pending images as jobs ``(path, pairs)``, each answered ``(records, pixels)``."""
        segmenter = self.segmenter
        return ImageWork(jobs=list(images.items()),
                         source=ImageSource(segmenter.proposals, max_pixels=segmenter.config.max_pixels),
                         task=path_task, here=ImageJob(segmenter, self.top_k, self.save_overlays),
                         build=functools.partial(make_image_job, segmenter.config, self.top_k, self.save_overlays),
                         failed=functools.partial(failed_records, self.top_k))


def file_key(path: str | Path) -> Optional[str]:
    """The SHA-256 of a file's bytes (None where it cannot be read): what a result was made from."""
    try:
        return file_digest(path)
    except OSError:
        return None


def _forget_changed_images(store: "BatchStore", pairs: Sequence[Pair]) -> None:
    """Pairs whose image file changed since their results were saved (another photo under the
    same name) are made again, with a warning (:meth:`~zsris.store.RunStore.forget_changed`)."""
    done_images = store.image_ids()
    paths = {pair.image: pair.path for pair in pairs if pair.error is None and pair.image in done_images}
    keys = {image: file_key(path) for image, path in paths.items()}
    changed = store.forget_changed({image: key for image, key in keys.items() if key is not None})
    if changed:
        warnings.warn(f"zsris: {len(changed)} image(s) changed since their results were saved (the first: "
                      f"{changed[0]}): their pairs are segmented again", ZsrisWarning, stacklevel=4)


def _check_same_pairs(out: Path, pairs: Sequence[Pair], done: dict[str, tuple[str, str]]) -> None:
    """A resume must be about the same pairs: an id already done that now names another image or
    expression means another input was given for this OUT."""
    for pair in pairs:
        stored = done.get(pair.id)
        if stored is not None and stored != (pair.image, json.dumps(pair.expression)):
            raise ZsrisError(f"{out} holds results of other pairs: id {pair.id!r} was {stored[0]!r} with "
                             f"{json.loads(stored[1])!r}, now {pair.image!r} with {pair.expression!r}; "
                             f"give --overwrite to replace them, or another -o")
