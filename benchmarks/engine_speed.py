"""The engine and the visual step, side by side in one run, on whatever device is here.

    python benchmarks/engine_speed.py --data ../shared/data/refcoco-mini [--images 40]

Prints, each labelled with the device it was measured on (GPU rows only where CUDA is present):
1. `zsris eval`'s work on refcoco-mini images, serial (proposals and CLIP in one process)
   against the pipelined engine (proposals in worker processes ahead of CLIP): seconds per
   image per stage and end to end.
2. The authors' per-object loop (proposals and visual features recomputed for each referred
   object, text encoded one sentence at a time) against zsris, on a RefCOCO-val-shaped
   workload: 2.5 referred objects and about 7.2 sentences per image.
3. The visual step for 100 proposals per backbone and precision (random weights: the real
   FLOPs).
4. Reduced precision against fp32 on refcoco-mini sentences: the largest feature deviation and
   the share of sentences whose chosen proposal changes.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from common import add_data_flag, require_data
from zsris.backbones import load_backbone
from zsris.config import ProposalSpec, SegmenterConfig
from zsris.datasets import ReferDataset
from zsris.engine import Engine, Preparer, default_workers
from zsris.evaluation import ImageEvaluator, dataset_task, load_dataset_image, run_local
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter
from zsris.store import PredictionStore

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
LABEL = torch.cuda.get_device_name(0) if CUDA else f"CPU ({torch.get_num_threads()} threads)"


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _timed(function, repeat: int = 1) -> tuple[object, float]:
    """The value and the median seconds of ``repeat`` calls (after one warm-up when repeating)."""
    if repeat > 1:
        function()
    times, value = [], None
    for _ in range(repeat):
        _sync()
        start = time.perf_counter()
        value = function()
        _sync()
        times.append(time.perf_counter() - start)
    return value, statistics.median(times)


_BACKBONES: dict = {}


def _segmenter(backbone: str = "ViT-B/32", precision: str = "fp32", device: torch.device = DEVICE) -> Segmenter:
    """A segmenter over a random-weight backbone, each backbone built once per device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (backbone, device) not in _BACKBONES:
            _BACKBONES[backbone, device] = load_backbone(backbone, weights="random", device=device)
        return Segmenter(_BACKBONES[backbone, device], ClassicalProposals(max_proposals=100),
                         SegmenterConfig(precision=precision))


def cuda_equals_cpu(image: np.ndarray) -> None:
    """fp32 on the GPU computes the same features as the CPU, up to float rounding."""
    proposals = ClassicalProposals(max_proposals=100)(image)
    on_gpu = _segmenter().image_features(image, proposals=proposals)
    on_cpu = _segmenter(device=torch.device("cpu")).image_features(image, proposals=proposals)
    for name in ("global_features", "local_features", "visual_features"):
        a, b = getattr(on_gpu, name).cpu(), getattr(on_cpu, name)
        print(f"   {name}: largest |GPU - CPU| {float((a - b).abs().max()):.2e} "
              f"(largest |value| {float(b.abs().max()):.2e})")


def engines(dataset: ReferDataset, images: int, workers: int) -> None:
    groups = dataset.refs_by_image("train", images)
    segmenter = _segmenter()
    evaluator = ImageEvaluator(segmenter, dataset)
    rows = {}
    for name, count in (("serial", 0), (f"pipelined, {workers} workers", workers)):
        engine = Engine(Preparer(ProposalSpec(max_proposals=100), None, exif_transpose=False), count)
        with tempfile.TemporaryDirectory() as folder, PredictionStore(Path(folder) / "p.sqlite", {}) as store:
            times = run_local(evaluator, groups, list(groups), store, _NoBar(), engine)
        rows[name] = times.summary()
    print(f"\n1. eval on {len(groups)} refcoco-mini images, ViT-B/32, 100 classical proposals [{LABEL}]")
    keys = ["seconds/image (end to end)", "seconds/image (decode + proposals, per worker)", "seconds/image (model)",
            "busy (proposal workers)", "busy (model)"]
    print(f"   {'':48}" + "".join(f"{name:>26}" for name in rows))
    for key in keys:
        print(f"   {key:48}" + "".join(f"{row[key]:>26}" for row in rows.values()))
    serial, pipelined = (row["seconds/image (end to end)"] for row in rows.values())
    print(f"   end to end: pipelined x{serial / pipelined:.2f} faster than serial [{LABEL}]")


class _NoBar:
    def update(self, count: int) -> None:
        pass


def per_object_loop(dataset: ReferDataset, images: int) -> None:
    """RefCOCO val has 2.54 referred objects and 7.22 sentences per image: objects alternate 3, 2
    (2.5 per image), each with the next 3 sentences of the dataset (7.5 per image)."""
    segmenter = _segmenter()
    sentences = [s.text for ref in dataset.refs for s in ref.sentences]
    ids = list(dataset.refs_by_image("train", images))
    workload, cursor = [], 0
    for number, image_id in enumerate(ids):
        objects = []
        for _ in range(3 if number % 2 == 0 else 2):
            objects.append(sentences[cursor:cursor + 3])
            cursor += 3
        workload.append((load_dataset_image(dataset, image_id), objects))

    def authors() -> None:
        for pixels, objects in workload:
            for object_sentences in objects:
                features = segmenter.image_features(pixels)  # proposals and visual features again
                for sentence in object_sentences:
                    segmenter.text_encoder._cache.clear()  # encoded anew, one at a time
                    segmenter.score(features, [sentence])

    def ours() -> None:
        segmenter.text_encoder._cache.clear()
        for pixels, objects in workload:
            segmenter.score(segmenter.image_features(pixels), [s for group in objects for s in group])

    _, t_authors = _timed(authors)
    _, t_ours = _timed(ours)
    count = len(workload)
    print(f"\n2. RefCOCO-val-shaped workload: {count} images, "
          f"{sum(len(o) for _, o in workload) / count:.2f} objects and "
          f"{sum(len(s) for _, o in workload for s in o) / count:.2f} sentences per image, 100 proposals [{LABEL}]")
    print(f"   authors' per-object loop  {t_authors / count:7.3f} s/image")
    print(f"   zsris, per image          {t_ours / count:7.3f} s/image   x{t_authors / t_ours:.2f} [{LABEL}]")


def visual_step(image: np.ndarray, backbones: list[str], precisions: list[str]) -> None:
    proposals = ClassicalProposals(max_proposals=100)(image)
    print(f"\n3. visual step (global + local features) for {len(proposals)} proposals, median of 5 [{LABEL}]")
    print(f"   {'backbone':12}" + "".join(f"{p:>10}" for p in precisions))
    for name in backbones:
        cells = []
        for precision in precisions:
            segmenter = _segmenter(name, precision)
            _, seconds = _timed(lambda: segmenter.image_features(image, proposals=proposals), repeat=5)
            cells.append(f"{1000 * seconds:8.1f}ms")
            del segmenter
        print(f"   {name:12}" + "".join(f"{c:>10}" for c in cells))


def precision_effect(dataset: ReferDataset, images: int, precisions: list[str]) -> None:
    groups = dataset.refs_by_image("train", images)
    work = []
    for image_id, refs in groups.items():
        pixels = load_dataset_image(dataset, image_id)
        work.append((pixels, ClassicalProposals(max_proposals=100)(pixels), [s.text for r in refs for s in r.sentences]))
    reference = _segmenter()
    base = [(reference.image_features(p, proposals=q), reference.score(reference.image_features(p, proposals=q), e))
            for p, q, e in work]
    print(f"\n4. reduced precision against fp32: {len(work)} refcoco-mini images, "
          f"{sum(len(e) for *_, e in work)} sentences, ViT-B/32, 100 proposals [{LABEL}]")
    for precision in precisions[1:]:
        segmenter = _segmenter(precision=precision)
        deviation, changed, total = 0.0, 0, 0
        for (pixels, proposals, expressions), (features, results) in zip(work, base):
            other = segmenter.image_features(pixels, proposals=proposals)
            deviation = max(deviation, float((other.visual_features - features.visual_features).abs().max()))
            for a, b in zip(results, segmenter.score(other, expressions)):
                changed += a.proposal_index != b.proposal_index
                total += 1
        print(f"   {precision:5}: largest deviation of a fused visual feature (unit vectors) {deviation:.2e}; "
              f"chosen proposal changes for {changed} of {total} sentences ({100 * changed / max(total, 1):.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flag(parser)
    parser.add_argument("--images", type=int, default=40, help="images for the engine comparison")
    parser.add_argument("--loop-images", type=int, default=8, help="images for the per-object loop")
    parser.add_argument("--precision-images", type=int, default=20)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--backbones", nargs="+", default=["ViT-B/32", "ViT-B/16", "ViT-L/14", "RN50"])
    parser.add_argument("--only", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="which parts to run")
    args = parser.parse_args()
    require_data(args.data)
    dataset = ReferDataset(args.data, "refcoco")
    precisions = ["fp32", "tf32", "bf16", "fp16"] if CUDA else ["fp32"]
    print(f"device: {LABEL}; torch {torch.__version__}" + ("" if CUDA else "; no GPU here: CUDA rows not run"))
    image = load_dataset_image(dataset, next(iter(dataset.refs_by_image("train", 1))))
    if CUDA and 0 in args.only:
        print(f"\n0. strict fp32 on {LABEL} against the CPU, ViT-B/32, 100 proposals")
        cuda_equals_cpu(image)
    if 1 in args.only:
        engines(dataset, args.images, args.workers)
    if 2 in args.only:
        per_object_loop(dataset, args.loop_images)
    if 3 in args.only:
        visual_step(image, args.backbones if CUDA else args.backbones[:1], precisions)
    if 4 in args.only:
        if CUDA:
            precision_effect(dataset, args.precision_images, precisions)
        else:
            print("\n4. reduced precision: no GPU here (the CPU computes in fp32 only)")


if __name__ == "__main__":
    main()
