"""The RefCOCO / RefCOCO+ / RefCOCOg / gRefCOCO benchmark: per-image work shared by every
sentence, proposals cached on disk, predictions stored as they are made, in-process or on Ray.

:class:`EvalJob` is a whole resumable evaluation into a run folder, as ``zsris eval`` and
``zsris calibrate`` run it; :class:`ImageEvaluator` is one image's work;
:func:`evaluate_proposals` measures proposals alone.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np
from tqdm import tqdm

from ..cache import ProposalCache, file_digest
from ..config import DEFAULT_MAX_PIXELS, SegmenterConfig
from ..datasets import GENERALIZED, Ref, ReferDataset
from ..engine import Engine, ImageTask, Prepared, StageTimes, image_task, load_task_image
from ..errors import DatasetError, ExpressionError, NoProposalsError, ZsrisError, ZsrisWarning
from ..masks import iou_matrix
from ..metrics import intersection_union, iou, proposal_quality
from ..records import SentenceRecord
from ..store import PredictionStore
from ..text import check_expression
from ..types import ImageFeatures, Proposals
from .run import (
    Execution,
    ImageSource,
    ImageWork,
    answers_here,
    bar_stream,
    progress_bar,
    quiet_segmenter,
    run_images,
)

if TYPE_CHECKING:
    from ..calibration import Calibration
    from ..segmenter import Segmenter


#: The multi-target margins whose answers gRefCOCO records keep, for ``zsris calibrate``.
CALIBRATION_MARGINS = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05)


def best_proposal(masks: np.ndarray, target: np.ndarray, ious: Optional[np.ndarray] = None) -> tuple[int, int]:
    """Intersection and union of the proposal that overlaps ``target`` best (the oracle's pick);
    ``ious`` are the proposals' IoUs with the target when already computed."""
    if len(masks) == 0:
        return 0, int(target.sum())
    if ious is None:
        ious = iou_matrix(masks, target[None])[:, 0]
    return intersection_union(masks[int(ious.argmax())], target)


@dataclass
class ImageEvaluator:
    """Everything one image needs: proposals (cached), visual features once, then every sentence
    of every ref about it scored against them."""

    segmenter: "Segmenter"
    dataset: ReferDataset
    cache: Optional[ProposalCache] = None
    gt_proposals: bool = False

    def proposals(self, image_id: int, pixels: np.ndarray, instances: np.ndarray) -> Proposals:
        if self.gt_proposals:
            return Proposals(instances, np.ones(len(instances)))
        file_name = self.dataset.images[image_id].file_name

        def make() -> Proposals:
            return self.segmenter.proposals(pixels, file_name)

        if self.cache is None:
            return make()
        return self.cache.get_or_make(self.dataset.image_path(image_id), make, pixels.shape[:2])[0]

    def __call__(self, image_id: int, refs: list[Ref], prepared: Optional[Prepared] = None,
                 features: Optional[ImageFeatures] = None) -> list[dict[str, Any]]:
        """Every sentence's record for one image (:class:`~zsris.jobs.run.ImageWork`'s worker, here
        and on a Ray actor): from the image an engine or a Ray task ``prepared`` (with its visual
        ``features``, where computed), or all work done here."""
        if prepared is not None:
            return self.evaluate_prepared(prepared, refs, features)
        try:
            pixels = load_dataset_image(self.dataset, image_id, self.segmenter.config.max_pixels)
        except ZsrisError as error:
            return self.failed(image_id, refs, str(error))
        return self._evaluate_or_fail(image_id, refs, pixels)

    def task(self, job: tuple[int, list[Ref]]) -> ImageTask:
        """The engine's task for a job ``(image id, its refs)``."""
        return dataset_task(self.dataset, job[0])

    def failed_job(self, job: tuple[int, list[Ref]], reason: str) -> list[dict[str, Any]]:
        """The records of a job that Ray could not run (:meth:`failed`)."""
        return self.failed(*job, reason)

    def evaluate_prepared(self, prepared: Prepared, refs: list[Ref],
                          features: Optional[ImageFeatures] = None) -> list[dict[str, Any]]:
        """The records of an image the engine prepared (``features``: its visual features, if
        already computed); its sentences fail, with the reason, if it failed."""
        if prepared.error is not None:
            return self.failed(prepared.key, refs, prepared.error)
        return self._evaluate_or_fail(prepared.key, refs, prepared.pixels, prepared.proposals, features)

    def _evaluate_or_fail(self, image_id: int, refs: list[Ref], *work: Any) -> list[dict[str, Any]]:
        """:meth:`evaluate`; where the image's annotations are malformed (a polygon that does not
        decode), its sentences fail with the reason and the split goes on."""
        try:
            return self.evaluate(image_id, refs, *work)
        except DatasetError as error:
            return self.failed(image_id, refs, str(error))

    def failed(self, image_id: int, refs: list[Ref], reason: str) -> list[dict[str, Any]]:
        """Records that count an image's sentences as failures (IoU 0, no answer), saying why. The
        targets are counted (their pixels join the union) only where the annotations' grid is within
        the pixel limit: a size the image does not have would have them drawn on any grid."""
        info = self.dataset.images[image_id]
        drawable = 0 < info.height * info.width <= self.segmenter.config.max_pixels
        records = []
        for ref in refs:
            try:
                union = int(self.dataset.target_mask(ref).sum()) if drawable else 0
            except DatasetError:  # the object itself is malformed: nothing to count
                union = 0
            for sentence in ref.sentences:
                records.append(SentenceRecord(
                    sentence.sent_id, ref.ref_id, ref.ann_id, image_id, sentence.text, ref.category_id, 0,
                    union=union, error=reason, **self._generalized(ref)).to_dict())
        return records

    def _generalized(self, ref: Ref, result=None, target: Optional[np.ndarray] = None,
                     proposals: Optional[Proposals] = None) -> dict[str, Any]:
        """gRefCOCO's extra fields: whether the expression names nothing, whether an answer was
        given, and, for calibration, the pixels of the union of the proposals within each margin
        of :data:`CALIBRATION_MARGINS` of the best (none for the RefCOCO datasets)."""
        if self.dataset.name not in GENERALIZED:
            return {}
        fields: dict[str, Any] = {"no_target": ref.no_target, "ann_ids": list(ref.ann_ids),
                                  "found": bool(result is not None and result.found)}
        if result is not None and result.found and target is not None and proposals is not None:
            fields["margin_iu"] = {
                str(margin): list(intersection_union(result.proposals.masks[result.within(margin)].any(0), target))
                for margin in CALIBRATION_MARGINS}
        return fields

    def evaluate(self, image_id: int, refs: list[Ref], pixels: np.ndarray, proposals: Optional[Proposals] = None,
                 features: Optional[ImageFeatures] = None) -> list[dict[str, Any]]:
        """Score every sentence about the image; proposals and their features are computed here
        unless given."""
        instance_ids = self.dataset.annotation_ids(image_id)
        instances = np.stack([self.dataset.annotation_mask(a) for a in instance_ids])
        if proposals is None:
            proposals = self.proposals(image_id, pixels, instances)
        expressions = [s.text for ref in refs for s in ref.sentences]
        refused: dict[int, str] = {}  # an empty sentence fails alone, saying why
        for position, text in enumerate(expressions):
            try:
                check_expression(text)
            except ExpressionError as error:
                refused[position] = str(error)
        valid = [text for position, text in enumerate(expressions) if position not in refused]
        if features is None and valid:  # SAM 3: the sentences' instances join the proposals, the oracle's too
            proposals = self.segmenter.proposals_for(pixels, None, valid, proposals)
        categories = [int(self.dataset.annotations[a]["category_id"]) for a in instance_ids]
        overlap = iou_matrix(proposals.masks, instances, proposals.areas)
        proposal_category: list[Optional[int]] = []
        if len(proposals):
            proposal_category = [categories[j] if overlap[i, j] > 0 else None
                                 for i, j in enumerate(overlap.argmax(1))]
        try:
            if features is None:
                features = self.segmenter.image_features(pixels, proposals=proposals)
            scored = iter(self.segmenter.score(features, valid) if valid else [])
            results = [None if position in refused else next(scored) for position in range(len(expressions))]
        except NoProposalsError:
            results = None
        records, position = [], 0
        for ref in refs:
            if len(ref.ann_ids) == 1:
                column = instance_ids.index(ref.ann_id)
                target, ious = instances[column], overlap[:, column]
            else:
                target, ious = self.dataset.target_mask(ref), None
            oracle: dict[str, Any] = {"oracle_iou": None}
            if target.any():
                o_inter, o_union = best_proposal(proposals.masks, target, ious)
                oracle = {"oracle_iou": iou(o_inter, o_union), "oracle_intersection": o_inter, "oracle_union": o_union}
            for sentence in ref.sentences:
                record = SentenceRecord(sentence.sent_id, ref.ref_id, ref.ann_id, image_id, sentence.text,
                                        ref.category_id, len(proposals), **oracle)
                result = None if results is None else results[position]
                if position in refused:
                    record.error = refused[position]
                if result is None:
                    record.union = int(target.sum())
                else:
                    inter, union = intersection_union(result.mask, target)
                    record.proposal_index, record.score = result.image_proposal_index, result.score
                    record.noun_phrase = result.noun_phrase
                    record.chosen_category = proposal_category[result.image_proposal_index] if result.found else None
                    record.intersection, record.union, record.iou = inter, union, iou(inter, union)
                    pure = (result.method_record or {}).get("pure_proposal_index")
                    if pure is not None:  # HybridGL: its answer without spatial guidance, scored too
                        p_inter, p_union = intersection_union(result.proposals.masks[pure], target)
                        record.pure_intersection, record.pure_union = p_inter, p_union
                        record.pure_iou = iou(p_inter, p_union)
                for name, value in self._generalized(ref, result, target, proposals).items():
                    setattr(record, name, value)
                position += 1
                records.append(record.to_dict())
        return records


def load_dataset_image(dataset: ReferDataset, image_id: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A dataset image on its stored pixel grid: COCO annotations refer to that grid, not to the
    EXIF-rotated view, so orientation is not applied (else masks and pixels would disagree)."""
    return load_task_image(dataset_task(dataset, image_id), max_pixels, exif_transpose=False)


def dataset_task(dataset: ReferDataset, image_id: int) -> ImageTask:
    """The engine's task for a dataset image: its file, the name generators know it by, and the
    size its annotations give (the stored pixel grid: no EXIF rotation, see load_dataset_image)."""
    info = dataset.images[image_id]
    return image_task(image_id, dataset.image_path(image_id), info.file_name, (info.height, info.width))


def image_content_key(dataset: ReferDataset, image_id: int, refs: list[Ref]) -> str:
    """What an image's records were made from: its file's bytes, its sentences (ids and text,
    with the objects they name) and its annotations (ids, categories, polygons or RLE). A resume
    redoes an image whose key changed, instead of keeping records of data that is no longer there."""
    digest = hashlib.sha256()
    try:
        digest.update(file_digest(dataset.image_path(image_id)).encode())
    except OSError as error:  # the image fails when evaluated, saying why
        digest.update(f"unreadable: {error.strerror}".encode())
    sentences = [(ref.ref_id, list(ref.ann_ids), [(s.sent_id, s.text) for s in ref.sentences]) for ref in refs]
    annotations = [(a, dataset.annotations[a].get("category_id"), dataset.annotations[a].get("segmentation"))
                   for a in sorted(dataset.annotation_ids(image_id))]
    digest.update(json.dumps([sentences, annotations], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def pending_images(groups: dict[int, list[Ref]], done: set[int]) -> list[int]:
    return [image_id for image_id, refs in groups.items()
            if any(s.sent_id not in done for ref in refs for s in ref.sentences)]


def sentence_ids(groups: dict[int, list[Ref]]) -> set[int]:
    return {s.sent_id for refs in groups.values() for ref in refs for s in ref.sentences}


def run_local(evaluator: ImageEvaluator, groups: dict[int, list[Ref]], pending: Iterable[int],
              store: PredictionStore, progress: tqdm, engine: Engine, keys: Optional[dict[int, str]] = None
              ) -> StageTimes:
    """The pending images through ``engine`` given (``benchmarks/engine_speed.py`` times engines
    this way), as :class:`EvalJob` runs them locally: decoding and proposals in its workers, CLIP
    here, each image's records committed to the store as soon as they exist."""
    jobs = [(image_id, groups[image_id]) for image_id in pending]
    for records in answers_here(evaluator.segmenter, engine, jobs, evaluator.task, evaluator):
        store.add(records, keys)
        progress.update(1)
    return engine.times


def evaluate_proposals(dataset: ReferDataset, groups: dict[int, list[Ref]], engine: Engine,
                       show_progress: bool = True) -> dict[str, Any]:
    """Proposal quality alone (no CLIP): the oracle per referred object, recall, count and time,
    the images prepared by ``engine`` (its workers run the generator and the cache).

    Also counts the referred objects (and their sentences) whose ground truth differs between
    the ``refer`` and ``union`` readings of overlapping polygons. An image that fails counts
    its objects with IoU 0 (the first failure is named), their pixels in the union only where
    the annotations' grid is within the engine's pixel limit (as :meth:`ImageEvaluator.failed`:
    a size the image does not have, such as 100000x100000, would be drawn whatever its image is)."""
    best, inters, unions, counts, seconds = [], [], [], [], []
    differing = {"objects": 0, "sentences": 0}
    other = "union" if dataset.gt_mask == "refer" else "refer"
    max_pixels = engine.preparer.max_pixels
    progress = tqdm(total=len(groups), desc="proposals", unit="image", disable=not show_progress, dynamic_ncols=True,
                    **bar_stream())

    def consume(prepared: Prepared) -> None:
        masks = prepared.proposals.masks if prepared.proposals is not None else np.zeros((0, 1, 1), bool)
        counts.append(len(masks))
        seconds.append(prepared.proposal_seconds)
        sentences_per_object: dict[int, int] = {}
        for ref in groups[prepared.key]:
            for ann_id in ref.ann_ids:  # none for a no-target expression
                sentences_per_object[ann_id] = sentences_per_object.get(ann_id, 0) + len(ref.sentences)
        info = dataset.images[prepared.key]
        drawable = prepared.error is None or 0 < info.height * info.width <= max_pixels
        for ann_id, sentences in sentences_per_object.items():
            if not drawable:  # IoU 0, nothing drawn
                best.append(0.0)
                inters.append(0)
                unions.append(0)
                continue
            target = dataset.annotation_mask(ann_id)
            if not np.array_equal(target, dataset.annotation_mask(ann_id, other)):
                differing["objects"] += 1
                differing["sentences"] += sentences
            inter, union = best_proposal(masks, target) if prepared.error is None else (0, int(target.sum()))
            best.append(iou(inter, union))
            inters.append(inter)
            unions.append(union)
        progress.update(1)

    try:
        times = engine.run([dataset_task(dataset, image_id) for image_id in groups], consume)
    finally:
        progress.close()
    summary = proposal_quality(best, inters, unions, counts, seconds)
    summary["images failed"] = len(times.failed)
    if times.failed:  # named, not only counted: its objects count as misses in every figure
        summary["first failure"] = f"image {times.failed[0][0]}: {times.failed[0][1]}"
    summary["gt mask"] = dataset.gt_mask
    summary["objects where refer != union"] = differing["objects"]
    summary["sentences where refer != union"] = differing["sentences"]
    return summary


# -- a whole evaluation ---------------------------------------------------------------------
@dataclass(frozen=True)
class DataSpec:
    """Which REFER data an evaluation reads, and its proposal cache (plain data, so Ray can ship
    it). ``cache`` None: the default cache folder; ``no_cache``: none. ``gt_proposals``: the
    image's ground-truth instance masks are the proposals (the upper bound)."""

    data: str
    dataset: str = "refcoco"
    split_by: Optional[str] = None
    images: Optional[str] = None
    gt_mask: Optional[str] = None
    cache: Optional[str] = None
    no_cache: bool = False
    gt_proposals: bool = False

    def open(self) -> ReferDataset:
        from ..datasets import open_dataset

        return open_dataset(self.data, self.dataset, self.split_by, self.images, self.gt_mask)

    @property
    def cache_root(self) -> Optional[str]:
        """The proposal cache's folder, None with ``no_cache``."""
        from ..cache import DEFAULT_CACHE

        return None if self.no_cache else str(self.cache or DEFAULT_CACHE)

    def proposal_cache(self, generator_key: str) -> Optional[ProposalCache]:
        if self.cache_root is None or self.gt_proposals:
            return None
        return ProposalCache(self.cache_root, generator_key)

    def source(self, generator: Any, max_pixels: int) -> ImageSource:
        """This data's images: decoded on their stored grid, with ``generator``'s proposals (none
        with ``gt_proposals``: they come from the annotations later), cached in :attr:`cache_root`."""
        return ImageSource(None if self.gt_proposals else generator, self.cache_root, max_pixels,
                           exif_transpose=False)

    def engine(self, execution: Execution, generator: Any, max_pixels: int) -> Engine:
        """The local engine over this data's images (:meth:`source`)."""
        return self.source(generator, max_pixels).engine(execution)


def build_evaluator(config: SegmenterConfig, data: DataSpec, segmenter: Optional["Segmenter"] = None,
                    dataset: Optional[ReferDataset] = None) -> ImageEvaluator:
    """An image evaluator over ``data`` (``dataset``, where already open) with ``segmenter``, or
    one built from ``config`` (a Ray actor's: module level, so Ray can ship it)."""
    segmenter = segmenter or quiet_segmenter(config)
    return ImageEvaluator(segmenter, dataset or data.open(), data.proposal_cache(segmenter.proposals.cache_key),
                          data.gt_proposals)


def paper_figures(config: SegmenterConfig, data: DataSpec, split: str) -> dict[str, Any]:
    """The paper's and the authors' figures for the split, where ``config`` is what they measured:
    the paper's method with its default settings on ViT-B/32 (none for a baseline or an ablation)."""
    from ..methods.registry import DEFAULT_METHOD, canonical_method
    from ..paper import PAPER_BACKBONES, comparison

    if config.method != canonical_method(DEFAULT_METHOD) or config.backbone != PAPER_BACKBONES[0]:
        return {}
    return comparison(data.dataset, split)


def run_summary(records: list[dict[str, Any]], config: SegmenterConfig, data: DataSpec,
                split: str) -> dict[str, Any]:
    """A run's metrics over its records; under ``--preset paper`` both accountings too, and the
    figures to compare with (:func:`paper_figures`)."""
    from ..metrics import authors_accounting, summarize

    summary = summarize(records)
    if config.from_preset == "paper":
        summary = {**summary, **authors_accounting(records), **paper_figures(config, data, split)}
    if config.from_preset == "hybridgl":
        from ..hybridgl_preset import hybridgl_figures

        summary = {**summary, **hybridgl_figures(data.dataset, split)}
    return summary


def check_split_images(dataset: ReferDataset, groups: dict[int, list[Ref]], split: str) -> None:
    """Refuse a split none of whose images is on disk (an empty or wrong ``--images`` folder):
    every sentence would fail, and the metrics would look like a result."""
    if groups and not any(dataset.image_path(image_id).is_file() for image_id in groups):
        first = dataset.image_path(next(iter(groups)))
        raise ZsrisError(f"none of the {len(groups)} images of {dataset.name} {split} is in {dataset.image_dir} "
                         f"(the first would be {first.name}); pass --images DIR, the folder that holds them")


@dataclass
class EvalOutcome:
    """What an evaluation run produced: the metrics over every sentence of the split (done now
    or before), the run's settings, the engine's timing of this run (None on Ray), the files
    written, and with ``calibrate`` the calibration chosen and its curve."""

    summary: dict[str, Any]
    settings: dict[str, Any]
    records: list[dict[str, Any]]
    title: str
    written: list[Path]
    timing: Optional[dict[str, Any]] = None
    calibration: Optional["Calibration"] = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    calibration_path: Optional[Path] = None


@dataclass
class EvalJob:
    """A resumable evaluation of ``split`` (``limit``: its first N images) of ``data`` into the
    run folder ``out``, as ``zsris eval`` runs it:

    >>> job = EvalJob(segmenter, DataSpec("refer/data", "refcoco"), "runs/refcoco-val", split="val")
    >>> outcome = job.run()        # metrics.json, report.md, iou_histogram.png in the run folder

    Each image's sentences are committed as they are scored; a rerun with the same settings
    resumes, one with others is refused. ``calibrate`` (gRefCOCO) also chooses the no-target
    threshold and multi-target margin and writes them (``calibration_out``, default
    ``out/calibration.json``)."""

    segmenter: "Segmenter"
    data: DataSpec
    out: str | Path
    split: str = "val"
    limit: Optional[int] = None
    calibrate: bool = False
    calibration_out: Optional[str | Path] = None
    execution: Execution = field(default_factory=Execution)
    opened: Optional[ReferDataset] = None  # the dataset of ``data``, where the caller opened it already

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.evaluator = build_evaluator(self.segmenter.config, self.data, self.segmenter, self.opened)

    @property
    def dataset(self) -> ReferDataset:
        return self.evaluator.dataset

    def settings(self) -> dict[str, Any]:
        """What a run's records depend on: the data read and the segmenter's settings."""
        from ..records import settings

        return {"dataset": self.data.dataset, "split": self.split, "split_by": self.dataset.split_by,
                "gt_proposals": self.data.gt_proposals, "gt_mask": self.dataset.gt_mask, **settings(self.segmenter)}

    def run(self) -> EvalOutcome:
        """Evaluate the images not done before, then report over the whole split. Raises
        :class:`~zsris.jobs.run.JobInterrupted` on Ctrl-C, with every scored sentence saved."""
        from ..report import write_report

        self.execution.check(self.segmenter.proposals)
        groups = self.dataset.refs_by_image(self.split, self.limit)
        check_split_images(self.dataset, groups, self.split)
        out, settings = self.out, self.settings()
        title = f"{self.data.dataset} {self.split} ({settings['backbone']}, {settings['proposals']['name']})"
        if self.segmenter.backbone.is_random:  # the table, report.md and the histogram say so
            title += ", RANDOM WEIGHTS: these figures mean nothing"
        keys = {image_id: image_content_key(self.dataset, image_id, refs) for image_id, refs in groups.items()}
        with PredictionStore(out / "predictions.sqlite", settings) as store, \
                self.execution.session(self.segmenter.device):
            self._forget_changed(store, keys)
            pending = pending_images(groups, store.done())

            def saved() -> str:
                return (f"zsris: interrupted; {len(store.done())} sentences are saved in {out}. "
                        f"Run the same command again to resume.")

            with progress_bar(len(groups), len(groups) - len(pending), "eval", self.execution.progress,
                              saved) as bar:
                def commit(records: list[dict[str, Any]]) -> None:
                    store.add(records, keys)
                    bar.update(1)

                timing = run_images(self.segmenter, self.execution, self._work(groups, pending), commit)
            records = store.records(sentence_ids(groups))
        summary = run_summary(records, self.segmenter.config, self.data, self.split)
        written = write_report(out, summary, settings, records, title, timing)
        outcome = EvalOutcome(summary, settings, records, title, written, timing)
        if self.calibrate:
            self._calibrate(outcome)
        return outcome

    def _work(self, groups: dict[int, list[Ref]], pending: list[int]) -> ImageWork:
        """The pending images as jobs ``(image id, refs)``, each answered with its sentences' records."""
        segmenter, evaluator = self.segmenter, self.evaluator
        return ImageWork(jobs=[(image_id, groups[image_id]) for image_id in pending],
                         source=self.data.source(segmenter.proposals, segmenter.config.max_pixels),
                         task=evaluator.task, here=evaluator,
                         build=functools.partial(build_evaluator, segmenter.config, self.data),
                         failed=evaluator.failed_job)

    def _forget_changed(self, store: PredictionStore, keys: dict[int, str]) -> None:
        """Images whose file, sentences or annotations changed since their records were made are
        evaluated again, with a warning (:meth:`~zsris.store.RunStore.forget_changed`)."""
        changed = store.forget_changed(keys)
        if changed:
            warnings.warn(f"zsris: {len(changed)} image(s) changed since their results were saved (the image "
                          f"file, a sentence or an annotation; the first: image {min(changed)}): they are "
                          f"evaluated again", ZsrisWarning, stacklevel=3)

    def _calibrate(self, outcome: EvalOutcome) -> None:
        from ..calibration import calibrate

        calibration, outcome.curve = calibrate(outcome.records)
        outcome.calibration = dataclasses.replace(calibration, dataset=self.data.dataset, split=self.split,
                                                  settings=outcome.settings)
        target = Path(self.calibration_out) if self.calibration_out else self.out / "calibration.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        outcome.calibration.write(target)
        outcome.calibration_path = target
