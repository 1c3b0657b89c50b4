"""The RefCOCO / RefCOCO+ / RefCOCOg benchmark: per-image work shared by every sentence,
proposals cached on disk, predictions stored as they are made, in-process or on Ray.
"""
from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from .cache import ProposalCache
from .config import DEFAULT_MAX_PIXELS
from .datasets import GENERALIZED, Ref, ReferDataset
from .engine import Engine, ImageTask, Prepared, StageTimes, image_task, load_task_image
from .errors import NoProposalsError
from .masks import iou_matrix
from .metrics import intersection_union, iou, proposal_quality
from .proposals import Proposals
from .segmenter import ImageFeatures, Segmenter
from .store import PredictionStore


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

    segmenter: Segmenter
    dataset: ReferDataset
    cache: Optional[ProposalCache] = None
    gt_proposals: bool = False

    def proposals(self, image_id: int, pixels: np.ndarray, instances: np.ndarray) -> Proposals:
        if self.gt_proposals:
            return Proposals(instances, np.ones(len(instances)))
        file_name = self.dataset.images[image_id].file_name
        make = lambda: self.segmenter.proposals(pixels, file_name)  # noqa: E731
        if self.cache is None:
            return make()
        return self.cache.get_or_make(self.dataset.image_path(image_id), make)[0]

    def __call__(self, image_id: int, refs: list[Ref]) -> list[dict[str, Any]]:
        """Every sentence's record for one image, all work done here (the Ray workers' path)."""
        pixels = load_dataset_image(self.dataset, image_id, self.segmenter.config.max_pixels)
        return self.evaluate(image_id, refs, pixels)

    def evaluate_prepared(self, prepared: Prepared, refs: list[Ref],
                          features: Optional[ImageFeatures] = None) -> list[dict[str, Any]]:
        """The records of an image the engine prepared (``features``: its visual features, if
        already computed); its sentences fail, with the reason, if it failed."""
        if prepared.error is not None:
            return self.failed(prepared.key, refs, prepared.error)
        return self.evaluate(prepared.key, refs, prepared.pixels, prepared.proposals, features)

    def failed(self, image_id: int, refs: list[Ref], reason: str) -> list[dict[str, Any]]:
        """Records that count an image's sentences as failures (IoU 0, no answer), saying why."""
        records = []
        for ref in refs:
            union = int(self.dataset.target_mask(ref).sum())
            for sentence in ref.sentences:
                records.append({
                    "sent_id": sentence.sent_id, "ref_id": ref.ref_id, "ann_id": ref.ann_id, "image_id": image_id,
                    "expression": sentence.text, "gt_category": ref.category_id, "num_proposals": 0,
                    "proposal_index": -1, "score": None, "noun_phrase": None, "chosen_category": None,
                    "intersection": 0, "union": union, "iou": 0.0, "error": reason, **self._generalized(ref),
                })
        return records

    def _generalized(self, ref: Ref, result=None, target: Optional[np.ndarray] = None,
                     proposals: Optional[Proposals] = None) -> dict[str, Any]:
        """gRefCOCO's extra fields: whether the expression names nothing, whether an answer was
        given, and, for calibration, the pixels of the union of the proposals within each margin
        of :data:`CALIBRATION_MARGINS` of the best (None for the RefCOCO datasets)."""
        if self.dataset.name not in GENERALIZED:
            return {}
        fields: dict[str, Any] = {"no_target": ref.no_target, "ann_ids": list(ref.ann_ids),
                                  "found": bool(result is not None and result.found)}
        if result is not None and result.found and target is not None and proposals is not None:
            best = result.ranked[0].score
            fields["margin_iu"] = {}
            for margin in CALIBRATION_MARGINS:
                members = [r.index for r in result.ranked if r.score >= best - margin]
                fields["margin_iu"][str(margin)] = list(intersection_union(proposals.masks[members].any(0), target))
        return fields

    def evaluate(self, image_id: int, refs: list[Ref], pixels: np.ndarray, proposals: Optional[Proposals] = None,
                 features: Optional[ImageFeatures] = None) -> list[dict[str, Any]]:
        """Score every sentence about the image; proposals and their features are computed here
        unless given."""
        instance_ids = self.dataset.annotation_ids(image_id)
        instances = np.stack([self.dataset.annotation_mask(a) for a in instance_ids])
        if proposals is None:
            proposals = self.proposals(image_id, pixels, instances)
        categories = [int(self.dataset.annotations[a]["category_id"]) for a in instance_ids]
        overlap = iou_matrix(proposals.masks, instances, proposals.areas)
        proposal_category: list[Optional[int]] = []
        if len(proposals):
            proposal_category = [categories[j] if overlap[i, j] > 0 else None
                                 for i, j in enumerate(overlap.argmax(1))]
        expressions = [s.text for ref in refs for s in ref.sentences]
        generalized = self.dataset.name in GENERALIZED
        # gRefCOCO: every proposal ranked, for the margins that calibration tries
        top_k = max(len(proposals), 1) if generalized else 1
        try:
            if features is None:
                features = self.segmenter.image_features(pixels, proposals=proposals)
            results = self.segmenter.score(features, expressions, top_k)
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
                record: dict[str, Any] = {
                    "sent_id": sentence.sent_id, "ref_id": ref.ref_id, "ann_id": ref.ann_id, "image_id": image_id,
                    "expression": sentence.text, "gt_category": ref.category_id, "num_proposals": len(proposals),
                    **oracle,
                }
                result = None if results is None else results[position]
                if result is None:
                    record.update(proposal_index=-1, score=None, noun_phrase=None, chosen_category=None,
                                  intersection=0, union=int(target.sum()), iou=0.0)
                else:
                    inter, union = intersection_union(result.mask, target)
                    record.update(proposal_index=result.proposal_index, score=result.score,
                                  noun_phrase=result.noun_phrase,
                                  chosen_category=proposal_category[result.proposal_index] if result.found else None,
                                  intersection=inter, union=union, iou=iou(inter, union))
                record.update(self._generalized(ref, result, target, proposals))
                position += 1
                records.append(record)
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


def pending_images(groups: dict[int, list[Ref]], done: set[int]) -> list[int]:
    return [image_id for image_id, refs in groups.items()
            if any(s.sent_id not in done for ref in refs for s in ref.sentences)]


def sentence_ids(groups: dict[int, list[Ref]]) -> set[int]:
    return {s.sent_id for refs in groups.values() for ref in refs for s in ref.sentences}


def run_local(evaluator: ImageEvaluator, groups: dict[int, list[Ref]], pending: Iterable[int],
              store: PredictionStore, progress: tqdm, engine: Engine) -> StageTimes:
    """The pending images through ``engine``: decoding and proposals in its workers, CLIP here
    (the segmenter's ``images_per_pass`` at a time), each image's records committed to the store
    as soon as they exist."""
    tasks = [dataset_task(evaluator.dataset, image_id) for image_id in pending]
    for prepared, features in evaluator.segmenter.prepared_features(engine, tasks):
        store.add(evaluator.evaluate_prepared(prepared, groups[prepared.key], features))
        progress.update(1)
    return engine.times


class RayWorker:
    """A Ray actor body: builds its worker (an :class:`ImageEvaluator`, a batch job ...) once,
    models included, then runs jobs on request."""

    def __init__(self, build: Callable[[], Callable[..., Any]], threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self.worker = build()

    def run(self, *job: Any) -> Any:
        return self.worker(*job)


@contextlib.contextmanager
def ray_session(workers: int, address: Optional[str] = None, enabled: bool = True) -> Iterator[None]:
    """Ray started (or joined at ``address``) for the block, and shut down after it if started here.

    Started before any progress bar is drawn, so that Ray's start-up notices do not land inside it."""
    if not enabled:
        yield
        return
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def run_ray(build: Callable[[], Callable[..., Any]], jobs: Iterable[tuple], on_result: Callable[[Any], None],
            workers: int = 2) -> None:
    """Spread ``jobs`` (argument tuples) over ``workers`` Ray actors, each with the worker that
    ``build`` makes (models loaded once each), in a :func:`ray_session`; ``on_result`` gets each
    job's answer as it finishes (committing it at once, so an interrupted Ray run resumes like a
    local one)."""
    import ray

    actor_class = ray.remote(num_cpus=1)(RayWorker)
    actors = [actor_class.remote(build) for _ in range(workers)]
    queue = deque(jobs)
    in_flight: dict[Any, Any] = {}

    def submit(actor) -> None:
        if queue:
            in_flight[actor.run.remote(*queue.popleft())] = actor

    for actor in actors:
        for _ in range(2):  # one running, one queued per actor
            submit(actor)
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        actor = in_flight.pop(ready[0])
        on_result(ray.get(ready[0]))
        submit(actor)


def evaluate_proposals(dataset: ReferDataset, groups: dict[int, list[Ref]], engine: Engine,
                       show_progress: bool = True) -> dict[str, Any]:
    """Proposal quality alone (no CLIP): the oracle per referred object, recall, count and time,
    the images prepared by ``engine`` (its workers run the generator and the cache).

    Also counts the referred objects (and their sentences) whose ground truth differs between
    the ``refer`` and ``union`` readings of overlapping polygons. An image that fails counts
    its objects with IoU 0."""
    best, inters, unions, counts, seconds = [], [], [], [], []
    differing = {"objects": 0, "sentences": 0}
    other = "union" if dataset.gt_mask == "refer" else "refer"
    progress = tqdm(total=len(groups), desc="proposals", unit="image", disable=not show_progress, dynamic_ncols=True)

    def consume(prepared: Prepared) -> None:
        masks = prepared.proposals.masks if prepared.proposals is not None else np.zeros((0, 1, 1), bool)
        counts.append(len(masks))
        seconds.append(prepared.proposal_seconds)
        sentences_per_object: dict[int, int] = {}
        for ref in groups[prepared.key]:
            for ann_id in ref.ann_ids:  # none for a no-target expression
                sentences_per_object[ann_id] = sentences_per_object.get(ann_id, 0) + len(ref.sentences)
        for ann_id, sentences in sentences_per_object.items():
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
    summary["gt mask"] = dataset.gt_mask
    summary["objects where refer != union"] = differing["objects"]
    summary["sentences where refer != union"] = differing["sentences"]
    return summary
