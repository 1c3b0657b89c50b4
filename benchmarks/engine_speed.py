"""The engine and the visual step, side by side in one run, on whatever device is here.

    python benchmarks/engine_speed.py --data ../shared/data/refcoco-mini [--images 64]

Prints, each labelled with the device it was measured on (GPU rows only where CUDA is present):
0. (CUDA) strict fp32 on the GPU against the CPU, and the batched crops against one crop at a
   time on the GPU: the largest feature differences.
1. `zsris eval`'s work on refcoco-mini images, serial (proposals and CLIP in one process)
   against the pipelined engine (proposals in worker processes ahead of CLIP): seconds per
   image per stage and end to end.
2. The authors' per-object loop (proposals and visual features recomputed for each referred
   object with their per-proposal crops, each sentence parsed and encoded alone), the same loop
   on zsris's steps, and zsris (in fp32, and in bf16 where the CPU or GPU has bf16 units), on a
   RefCOCO-val-shaped workload: 2.5 referred objects and about 7.5 sentences per image.
3. The visual step for 100 proposals per backbone and precision (random weights: the real
   FLOPs), beside open_clip's plain encode_image over the same 100 crops (its floor); 3b where
   its time goes; 3c several images' proposals sharing forward passes (--images-per-pass); 3d
   the reduced-precision copies' in-place activation against open_clip's QuickGELU.
4. Reduced precision against fp32 on refcoco-mini sentences: the largest feature deviation and
   the share of sentences whose chosen proposal changes.
5. (CUDA) SAM's automatic generator on the device, one image ahead of CLIP in a thread against
   one after the other.
6. The visual step's floor, piece by piece: the masks' upload as bool against packed 8 to a byte
   (as the workers send them; packed here first), and the global tail (the last k blocks on
   every mask) eager against torch.compile and, on CUDA, a captured CUDA graph.
7. Ray (where installed): eval's images through one actor with a whole device against two
   actors sharing it (half a GPU each on CUDA), images prepared by Ray tasks on the free cores:
   images per second once running.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from zsris import visual
from zsris.backbones import load_backbone
from zsris.config import ProposalSpec, SegmenterConfig
from zsris.datasets import ReferDataset
from zsris.engine import Engine, Preparer, default_workers
from zsris.images import load_image
from zsris.jobs import Execution
from zsris.jobs.evaluation import ImageEvaluator, dataset_task, load_dataset_image, run_local
from zsris.precision import cpu_bf16_units
from zsris.proposals import ClassicalProposals, Proposals
from zsris.report import LABELS
from zsris.segmenter import Segmenter
from zsris.store import PredictionStore

from common import add_data_flag, require_data

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
LABEL = (torch.cuda.get_device_name(0) if CUDA else
         f"CPU ({torch.get_num_threads()} threads{', ' + ' and '.join(cpu_bf16_units()) if cpu_bf16_units() else ''})")


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


def _segmenter(backbone: str = "ViT-B/32", precision: str = "fp32", device: torch.device = DEVICE,
               proposals=None, **settings) -> Segmenter:
    """A segmenter over a random-weight backbone, each backbone built once per device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (backbone, device) not in _BACKBONES:
            _BACKBONES[backbone, device] = load_backbone(backbone, weights="random", device=device)
        return Segmenter(_BACKBONES[backbone, device], proposals or ClassicalProposals(max_proposals=100),
                         SegmenterConfig(precision=precision, **settings))


def _prepared(dataset: ReferDataset, count: int, workers: int) -> list[tuple[int, np.ndarray, Proposals]]:
    """The first ``count`` train images with their 100 classical proposals, made by the engine."""
    groups = dataset.refs_by_image("train", count)
    engine = Engine(Preparer(ProposalSpec(max_proposals=100), None, exif_transpose=False), workers)
    return [(p.key, p.pixels, p.proposals) for p in engine.iterate(dataset_task(dataset, i) for i in groups)
            if p.error is None]


def exactness(image: np.ndarray, proposals: Proposals) -> None:
    """fp32 on the GPU computes the CPU's features up to float rounding; the batched crops
    compute what one crop at a time computes."""
    print(f"\n0. strict fp32 on {LABEL}, ViT-B/32, {len(proposals)} proposals: largest differences")
    on_gpu = _segmenter().image_features(image, proposals=proposals)
    on_cpu = _segmenter(device=torch.device("cpu")).image_features(image, proposals=proposals)
    for name in ("global_features", "local_features", "visual_features"):
        a, b = getattr(on_gpu, name).cpu(), getattr(on_cpu, name)
        print(f"   GPU against CPU, {name}: {float((a - b).abs().max()):.2e} "
              f"(largest |value| {float(b.abs().max()):.2e})")
    segmenter = _segmenter()
    tensor = segmenter.preprocessor.image_tensor(image)[0]
    masks = torch.from_numpy(proposals.masks).to(DEVICE)
    boxes = torch.from_numpy(proposals.boxes)
    fill = torch.tensor(segmenter.preprocessor.config.fill)
    from zsris.resample import crop_resize

    batched = crop_resize(tensor, masks, boxes, fill, 224, batched=True)
    single = crop_resize(tensor, masks, boxes, fill, 224, batched=False)
    with torch.inference_mode():
        features = [visual.encode_images(segmenter.encoder.model, crops) for crops in (batched, single)]
    print(f"   batched crops against one at a time on the GPU: crops {float((batched - single).abs().max()):.2e}, "
          f"local features {float((features[0] - features[1]).abs().max()):.2e}")


class _NoBar:
    def update(self, count: int) -> None:
        pass


KEYS = ["seconds_per_image", "seconds_per_image_running", "seconds_to_first_image", "prepare_seconds_per_image",
        "model_seconds_per_image", "waiting_seconds_per_image", "busy_workers", "busy_model"]


def engines(dataset: ReferDataset, images: int, serial_images: int, workers: int, precisions: list[str],
            freesolo_images: int) -> None:
    """Eval's work end to end: serial against pipelined (fp32), pipelined in bf16 where the
    device has bf16 units, and FreeSOLO's proposals (random weights; on the device, one image
    ahead of CLIP) in place of the classical ones."""
    from zsris.proposals import create_proposals

    runs = [("serial", 0, serial_images, "fp32", None),
            (f"pipelined, {workers} workers", workers, images, "fp32", None)]
    runs += [(f"pipelined, {precision}", workers, images, precision, None) for precision in precisions
             if precision == "bf16"]
    if freesolo_images:
        torch.manual_seed(0)
        freesolo = create_proposals("freesolo", freesolo_checkpoint="random", device=DEVICE)
        runs.append(("FreeSOLO, fp32", workers, freesolo_images, "fp32", freesolo))
    rows = {}
    for name, count, limit, precision, generator in runs:
        segmenter = _segmenter(precision=precision, proposals=generator)
        evaluator = ImageEvaluator(segmenter, dataset)
        groups = dataset.refs_by_image("train", limit)
        if generator is None:
            engine = Engine(Preparer(ProposalSpec(max_proposals=100), None, exif_transpose=False), count)
        else:
            engine = Execution(proposal_workers=count).local_engine(generator, exif_transpose=False)
        with tempfile.TemporaryDirectory() as folder, PredictionStore(Path(folder) / "p.sqlite", {}) as store:
            times = run_local(evaluator, groups, list(groups), store, _NoBar(), engine)
        rows[f"{name} ({len(groups)} images)"] = times.summary()
    print(f"\n1. eval on refcoco-mini images, ViT-B/32, 100 classical proposals unless FreeSOLO "
          f"[{LABEL}, {os.cpu_count()} CPUs]")
    print(f"   {'':48}" + "".join(f"{name:>34}" for name in rows))
    for key in KEYS:
        print(f"   {LABELS[key]:48}" + "".join(f"{row[key]:>34}" for row in rows.values()))
    serial, pipelined, *others = (row["seconds_per_image"] for row in rows.values())
    print(f"   end to end: pipelined x{serial / pipelined:.2f} faster than serial [{LABEL}]")
    for name, seconds in zip(list(rows)[2:], others):
        print(f"   end to end: {name} {seconds:.3f} s/image, x{serial / seconds:.2f} against serial fp32 [{LABEL}]")


def _authors_visual(segmenter: Segmenter, pixels: np.ndarray, proposals: Proposals) -> torch.Tensor:
    """The authors' visual step for one referred object (their evaluation script): every mask
    through the global pass at once, then the local crops one proposal at a time, each filling
    the whole full-resolution image before ``TF.resized_crop``, and one encode of all the crops."""
    import torchvision.transforms.functional as TF

    image = segmenter.preprocessor.image_tensor(pixels)
    masks = torch.from_numpy(proposals.masks).to(DEVICE)
    with torch.inference_mode():
        g = visual.global_features(segmenter.encoder.model, segmenter.preprocessor.clip_input(image), masks,
                                   segmenter.config.k, batch_size=len(masks))
        fill = torch.tensor(segmenter.preprocessor.config.fill, device=DEVICE)[None, :, None, None]
        size = segmenter.backbone.input_size
        crops = []
        for mask, (x1, y1, x2, y2) in zip(masks, proposals.boxes.tolist()):
            weight = mask[None, None].float()
            filled = image * weight + (1 - weight) * fill
            crops.append(TF.resized_crop(filled[0], y1, x1, y2 - y1, x2 - x1, [size, size]))
        loc = visual.encode_images(segmenter.encoder.model, torch.stack(crops), len(crops))
    return segmenter.method.fuse_visual(g.float(), loc.float())


def _authors_sentence(segmenter: Segmenter, sentence: str, fused: torch.Tensor) -> int:
    """The authors' text step: the sentence parsed alone, sentence and noun phrase encoded in a
    pass each; the proposal it picks."""
    from zsris.fusion import fuse_text

    segmenter.parser._cache.clear()
    segmenter.encoder.text_encoder._cache.clear()
    parsed = segmenter.parser(sentence)
    with torch.inference_mode():
        sentence_feature = segmenter.encoder.text_encoder.encode([parsed.sentence])
        phrase_feature = segmenter.encoder.text_encoder.encode([parsed.noun_phrase])
    text = fuse_text(sentence_feature.float(), phrase_feature.float(), segmenter.config.beta,
                     segmenter.config.fusion, segmenter.backbone.is_vit)
    return int((text @ fused.T).argmax())


def per_object_loop(dataset: ReferDataset, images: int, precisions: list[str]) -> None:
    """RefCOCO val has 2.54 referred objects and 7.22 sentences per image: objects alternate 3, 2
    (2.5 per image), each with the next 3 sentences of the dataset (7.5 per image). Three ways:
    the authors' loop (proposals and visual features for each referred object, their per-proposal
    crops, each sentence parsed and encoded alone), the same loop on zsris's steps, and zsris."""
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
                fused = _authors_visual(segmenter, pixels, segmenter.proposals(pixels))
                for sentence in object_sentences:
                    _authors_sentence(segmenter, sentence, fused)

    def loop_on_zsris_steps() -> None:
        for pixels, objects in workload:
            for object_sentences in objects:
                features = segmenter.image_features(pixels)  # proposals and visual features again
                for sentence in object_sentences:
                    segmenter.parser._cache.clear()
                    segmenter.encoder.text_encoder._cache.clear()  # encoded anew, one at a time
                    segmenter.score(features, [sentence])

    def ours(segmenter: Segmenter) -> None:
        segmenter.parser._cache.clear()
        segmenter.encoder.text_encoder._cache.clear()
        for pixels, objects in workload:
            segmenter.score(segmenter.image_features(pixels), [s for group in objects for s in group])

    def pipelined(segmenter: Segmenter) -> float:
        """Seconds per image of eval's engine (proposals in a worker process ahead of CLIP, as
        `zsris eval` runs), once the first image is ready (the workers' start-up left out)."""
        segmenter.parser._cache.clear()
        segmenter.encoder.text_encoder._cache.clear()
        engine = Engine(Preparer(ProposalSpec(max_proposals=100), None, exif_transpose=False), 1)
        first = None
        for prepared, (_, objects) in zip(engine.iterate(dataset_task(dataset, i) for i in ids), workload):
            features = segmenter.image_features(prepared.pixels, proposals=prepared.proposals)
            segmenter.score(features, [s for group in objects for s in group])
            first = first or time.perf_counter()
        return (time.perf_counter() - first) / max(len(workload) - 1, 1)

    _, t_authors = _timed(authors)
    _, t_loop = _timed(loop_on_zsris_steps)
    _, t_ours = _timed(lambda: ours(segmenter))
    reduced = [(p, _timed(lambda: ours(_segmenter(precision=p)))[1]) for p in precisions if p in ("bf16", "tf32")]
    engine_rows = [(p, pipelined(_segmenter(precision=p))) for p in precisions if p in ("fp32", "bf16")]
    count = len(workload)
    print(f"\n2. RefCOCO-val-shaped workload: {count} images, "
          f"{sum(len(o) for _, o in workload) / count:.2f} objects and "
          f"{sum(len(s) for _, o in workload for s in o) / count:.2f} sentences per image, 100 proposals [{LABEL}]")
    print(f"   authors' per-object loop (their per-proposal steps)  {t_authors / count:7.3f} s/image")
    print(f"   the same loop on zsris's steps                       {t_loop / count:7.3f} s/image"
          f"   x{t_authors / t_loop:.2f} [{LABEL}]")
    print(f"   zsris, per image                                     {t_ours / count:7.3f} s/image"
          f"   x{t_authors / t_ours:.2f} [{LABEL}]")
    for precision, seconds in reduced:
        print(f"   zsris, per image, --precision {precision:5}                 {seconds / count:7.3f} s/image"
              f"   x{t_authors / seconds:.2f} against the authors' fp32 loop [{LABEL}]")
    for precision, seconds in engine_rows:
        print(f"   zsris eval's engine (1 proposal worker), {precision:5}     {seconds:7.3f} s/image"
              f"   x{t_authors / count / seconds:.2f} against the authors' fp32 loop, once running [{LABEL}]")


def breakdown(image: np.ndarray, proposals: Proposals, precision: str = "fp32") -> None:
    """Where the visual step's time goes, each part timed alone between device synchronisations."""
    from zsris.precision import compute_precision
    from zsris.resample import crop_resize

    segmenter = _segmenter(precision=precision)
    parts: dict[str, list[float]] = {}
    for repeat in range(6):
        clock = {}

        def lap(name: str, began: list[float] = [0.0]) -> None:
            _sync()
            now = time.perf_counter()
            if name:
                clock[name] = now - began[0]
            began[0] = now

        lap("")
        pixels = load_image(image, segmenter.config.max_pixels)
        tensor = segmenter.preprocessor.image_tensor(pixels)
        lap("image to the device, normalised")
        masks = torch.from_numpy(proposals.masks).to(DEVICE)
        lap(f"{len(proposals)} masks to the device (bool)")
        with compute_precision(precision, DEVICE), torch.inference_mode():
            clip_input = segmenter.preprocessor.clip_input(tensor)
            lap("whole image resized to the CLIP input")
            g = segmenter.encoder.global_features(clip_input, masks)
            lap("global features (trunk once, last k blocks per mask)")
            crops = crop_resize(tensor[0], masks, torch.from_numpy(proposals.boxes),
                                torch.tensor(segmenter.preprocessor.config.fill), segmenter.backbone.input_size,
                                batch_size=len(masks))
            lap("local crops, filled and resized")
            loc = visual.encode_images(segmenter.encoder.model, crops, segmenter.config.batch_size)
            lap("local features (encode_image over the crops)")
            segmenter.method.fuse_visual(g.float(), loc.float())
            lap("fusion")
        if repeat:
            for name, seconds in clock.items():
                parts.setdefault(name, []).append(seconds)
    _, whole = _timed(lambda: segmenter.image_features(image, proposals=proposals), repeat=5)
    print(f"\n3b. where the visual step's time goes, ViT-B/32 {precision}, median of 5 [{LABEL}]")
    for name, seconds in parts.items():
        print(f"   {name:55} {1000 * statistics.median(seconds):7.2f} ms")
    print(f"   {'sum of the parts':55} {1000 * sum(statistics.median(s) for s in parts.values()):7.2f} ms;"
          f" image_features as a whole {1000 * whole:7.2f} ms")


def visual_step(image: np.ndarray, proposals: Proposals, backbones: list[str], precisions: list[str]) -> None:
    print(f"\n3. visual step (global + local features) for {len(proposals)} proposals, median of 5 [{LABEL}];"
          f" in brackets open_clip's encode_image alone over the same {len(proposals)} crops")
    print(f"   {'backbone':12}" + "".join(f"{p:>22}" for p in precisions))
    for name in backbones:
        cells = []
        for precision in precisions:
            segmenter = _segmenter(name, precision)
            _, seconds = _timed(lambda: segmenter.image_features(image, proposals=proposals), repeat=5)
            crops = visual.local_crops(segmenter.preprocessor.image_tensor(image),
                                       torch.from_numpy(proposals.masks).to(DEVICE), torch.from_numpy(proposals.boxes),
                                       segmenter.preprocessor.config.fill, segmenter.backbone.input_size)

            def plain() -> torch.Tensor:
                from zsris.precision import compute_precision

                with compute_precision(precision, DEVICE):
                    return visual.encode_images(segmenter.encoder.model, crops, 128)

            _, floor = _timed(plain, repeat=5)
            cells.append(f"{1000 * seconds:7.1f}ms ({1000 * floor:5.1f})")
        print(f"   {name:12}" + "".join(f"{c:>22}" for c in cells))


def activation_effect(image: np.ndarray, proposals: Proposals, precisions: list[str]) -> None:
    """The reduced-precision copies' in-place activation against open_clip's QuickGELU put back in
    the same copy, in this process: the visual step's time and the features' difference."""
    import open_clip

    from zsris.backbones import InPlaceQuickGELU

    reduced = [p for p in precisions if p in ("bf16", "fp16")]
    if reduced:
        print(f"\n3d. the reduced-precision copy's in-place activation against open_clip's QuickGELU, "
              f"ViT-B/32, {len(proposals)} proposals, median of 5 [{LABEL}]")
    for precision in reduced:
        segmenter = _segmenter(precision=precision)
        places = [(m, name) for m in segmenter.encoder.model.modules() for name, child in m.named_children()
                  if isinstance(child, InPlaceQuickGELU)]
        fast, fast_seconds = _timed(lambda: segmenter.image_features(image, proposals=proposals), repeat=5)
        for module, name in places:
            setattr(module, name, open_clip.transformer.QuickGELU())
        try:
            plain, plain_seconds = _timed(lambda: segmenter.image_features(image, proposals=proposals), repeat=5)
        finally:
            for module, name in places:
                setattr(module, name, InPlaceQuickGELU())
        deviation = float((fast.visual_features - plain.visual_features).abs().max())
        print(f"   {precision}: {1000 * fast_seconds:.1f} ms in place, {1000 * plain_seconds:.1f} ms with open_clip's "
              f"(x{plain_seconds / fast_seconds:.2f}); largest fused-feature difference {deviation:.1e}")


def images_per_pass(prepared: list, precisions: list[str]) -> None:
    """The visual step of several images, one image per set of passes against several images'
    proposals sharing passes (what eval and batch do with --images-per-pass)."""
    items = [(pixels, proposals) for _, pixels, proposals in prepared]
    each = sum(len(q) for _, q in items) / len(items)
    print(f"\n3c. visual step of {len(items)} images ({each:.0f} proposals each), "
          f"ViT-B/32, seconds per image, median of 3 [{LABEL}]")
    print(f"   {'':34}" + "".join(f"{p:>12}" for p in precisions))
    rows: dict[str, list[float]] = {}
    for per_pass, batch_size in ((1, 64), (4, 64), (4, 128), (8, 256)):
        label = f"{per_pass} image{'s' if per_pass > 1 else ''} per pass, --batch-size {batch_size}"
        for precision in precisions:
            segmenter = _segmenter(precision=precision, batch_size=batch_size)

            def run() -> None:
                for start in range(0, len(items), per_pass):
                    segmenter.image_features_many(items[start:start + per_pass])

            rows.setdefault(label, []).append(_timed(run, repeat=3)[1] / len(items))
    for label, seconds in rows.items():
        print(f"   {label:34}" + "".join(f"{1000 * t:10.1f}ms" for t in seconds))
    first, *others = rows.values()
    for label, seconds in zip(list(rows)[1:], others):
        print(f"   {label}: " + ", ".join(f"{p} x{a / b:.2f}" for p, a, b in zip(precisions, first, seconds))
              + f" against 1 per pass [{LABEL}]")


def precision_effect(work: list, precisions: list[str]) -> None:
    reference = _segmenter()
    base = []
    for _, pixels, proposals, expressions in work:
        features = reference.image_features(pixels, proposals=proposals)
        base.append((features, reference.score(features, expressions)))
    print(f"\n4. reduced precision against fp32: {len(work)} refcoco-mini images, "
          f"{sum(len(w[3]) for w in work)} sentences, ViT-B/32, 100 proposals [{LABEL}]")
    for precision in precisions[1:]:
        segmenter = _segmenter(precision=precision)
        deviation, changed, total = 0.0, 0, 0
        for (_, pixels, proposals, expressions), (features, results) in zip(work, base):
            other = segmenter.image_features(pixels, proposals=proposals)
            deviation = max(deviation, float((other.visual_features - features.visual_features).abs().max()))
            for a, b in zip(results, segmenter.score(other, expressions)):
                changed += a.proposal_index != b.proposal_index
                total += 1
        print(f"   {precision:5}: largest deviation of a fused visual feature (unit vectors) {deviation:.2e}; "
              f"chosen proposal changes for {changed} of {total} sentences ({100 * changed / max(total, 1):.1f}%)")


def sam_engine(dataset: ReferDataset, prepared: list, model_type: str, points: int = 32) -> None:
    """SAM (random weights: the real FLOPs, but its masks mean nothing and few survive its
    filters) runs on each image; CLIP then scores the image's 100 classical proposals, so the
    model stage does the work it does with real SAM masks."""
    from zsris.proposals import SamProposals

    by_name = {dataset.images[image_id].file_name: proposals for image_id, _, proposals in prepared}
    torch.manual_seed(0)
    sam = SamProposals("random", model_type=model_type, device=DEVICE, points_per_side=points)
    seconds = []

    def sam_then_classical(pixels: np.ndarray, name: str = "") -> Proposals:
        began = time.perf_counter()
        sam(pixels, name)
        seconds.append(time.perf_counter() - began)
        return by_name[name]

    sam_then_classical.cache_key = "benchmark"
    ids = [image_id for image_id, _, _ in prepared]
    every = dataset.refs_by_image("train")
    groups = {i: every[i] for i in ids}
    evaluator = ImageEvaluator(_segmenter(), dataset)
    print(f"\n5. SAM {model_type} ({points} x {points} points, on the device) then CLIP on 100 proposals, "
          f"{len(groups)} images [{LABEL}]")
    for label, ahead in (("one after the other", 0), ("SAM one image ahead, in a thread", 1)):
        for images in (list(groups)[:1], list(groups)):  # a warm-up image, then the run
            seconds.clear()
            engine = Engine(Preparer(None, None, exif_transpose=False), 0, ahead=ahead, generator=sam_then_classical)
            times = run_local(evaluator, groups, images, _Store(), _NoBar(), engine).summary()
        print(f"   {label:34} {times['seconds_per_image']:.3f} s/image end to end "
              f"(SAM {sum(seconds) / len(seconds):.3f} s/image, model stage waiting "
              f"{times['waiting_seconds_per_image']:.3f})")


class _Store:
    def add(self, records: list) -> None:
        pass


def floor_probes(image: np.ndarray, proposals: Proposals, precisions: list[str], compile_tail: bool) -> None:
    """What is left between the visual step and its floor (#23, item 2), each piece timed alone."""
    from zsris.precision import compute_precision

    packed = Proposals(proposals.masks, proposals.scores, proposals.boxes, proposals.areas,
                       packed=proposals.packed_bits())
    print(f"\n6. the visual step's floor, {len(proposals)} proposals of a {image.shape[1]}x{image.shape[0]} image,"
          f" median of 10 [{LABEL}]")
    rows = [("masks to the device as bool", lambda: visual.masks_on(proposals, DEVICE, packed=False)),
            ("masks to the device packed (the workers' bytes)", lambda: visual.masks_on(packed, DEVICE, packed=True)),
            ("masks packed here, then to the device", lambda: visual.masks_on(proposals, DEVICE, packed=True))]
    for label, function in rows:
        print(f"   {label:58} {1000 * _timed(function, repeat=10)[1]:8.2f} ms")
    for precision in precisions:
        segmenter = _segmenter(precision=precision)
        model, k = segmenter.encoder.model, segmenter.config.k
        tower = model.visual
        blocks = list(tower.transformer.resblocks)
        masks = visual.masks_on(proposals, DEVICE)
        with compute_precision(precision, DEVICE), torch.inference_mode():
            clip_input = segmenter.preprocessor.clip_input(segmenter.preprocessor.image_tensor(image))
            trunk = visual._run_blocks(tower, blocks[:len(blocks) - k], visual._vit_embed(tower, clip_input))
            weights = visual._grid_weights([masks], tower.grid_size, DEVICE, True).flatten(1)[:, :, None]
            weights = weights.to(trunk.dtype)
            tokens = trunk.expand(len(masks), -1, -1).contiguous()

            def tail(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                for block in blocks[len(blocks) - k:]:
                    x = visual._run_blocks(tower, [block], torch.cat([x[:, :1], x[:, 1:] * w], dim=1))
                return visual._vit_head(tower, x[:, 0])

            eager, seconds = _timed(lambda: tail(tokens, weights), repeat=10)
            cells = [f"eager {1000 * seconds:7.2f} ms"]
            if compile_tail:
                try:
                    compiled = torch.compile(tail, dynamic=False)
                    began = time.perf_counter()
                    first = compiled(tokens, weights)
                    build = time.perf_counter() - began
                    _, seconds = _timed(lambda: compiled(tokens, weights), repeat=10)
                    cells.append(f"torch.compile {1000 * seconds:7.2f} ms (build {build:.0f} s, "
                                 f"|diff| {float((first - eager).abs().max()):.1e})")
                except Exception as error:  # noqa: BLE001 - a probe: say why, go on
                    cells.append(f"torch.compile failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}")
            if CUDA:
                try:
                    static_x, static_w = tokens.clone(), weights.clone()
                    stream = torch.cuda.Stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        for _ in range(3):
                            tail(static_x, static_w)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        static_out = tail(static_x, static_w)

                    def replay() -> torch.Tensor:
                        static_x.copy_(tokens)
                        static_w.copy_(weights)
                        graph.replay()
                        return static_out

                    replayed, seconds = _timed(replay, repeat=10)
                    cells.append(f"CUDA graph {1000 * seconds:7.2f} ms (|diff| "
                                 f"{float((replayed - eager).abs().max()):.1e})")
                except Exception as error:  # noqa: BLE001 - a probe: say why, go on
                    cells.append(f"CUDA graph failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}")
        print(f"   global tail ({k} blocks x {len(masks)} masks), ViT-B/32 {precision}: " + "; ".join(cells))


def ray_actors(data: Path, images: int, precision: str) -> None:
    """Eval's images through Ray actors on this machine's device: one actor with all of it
    against two sharing it, their images prepared by Ray tasks on the free cores."""
    try:
        import ray
    except ImportError as error:
        print(f"\n7. Ray actors: Ray cannot be imported here ({type(error).__name__}: {error})")
        return
    from zsris.jobs.evaluation import DataSpec, build_evaluator, worker_preparer
    from zsris.jobs.run import RayPreparation, ray_session, run_ray

    spec = DataSpec(str(data), "refcoco", no_cache=True)
    dataset = spec.open()
    groups = dataset.refs_by_image("train", images)
    config = SegmenterConfig(backbone="ViT-B/32", weights="random", device=str(DEVICE), precision=precision,
                             proposals=ProposalSpec(max_proposals=100))
    share = 1.0 if CUDA else 0.0
    print(f"\n7. Ray actors, eval of {len(groups)} refcoco-mini images, ViT-B/32 {precision}, 100 classical "
          f"proposals prepared by Ray tasks [{LABEL}, {os.cpu_count()} CPUs]")
    rates = {}
    for workers in (1, 2):
        gpus = share / workers
        with ray_session(max(workers + 1, os.cpu_count() or 1)):
            preparation = RayPreparation(worker_preparer(create_classical(), None, config.max_pixels, False),
                                         lambda job: dataset_task(dataset, job[0]), "tasks")
            stamps: list[float] = []
            began = time.perf_counter()
            run_ray(functools.partial(build_evaluator, config, spec), list(groups.items()),
                    lambda records: stamps.append(time.perf_counter()), workers, gpus, preparation=preparation)
            ray.shutdown()
        running = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)
        rates[workers] = 1 / running
        print(f"   {workers} actor{'s' if workers > 1 else ''} at {gpus:g} GPU each: {rates[workers]:.2f} images/s "
              f"once running ({stamps[0] - began:.1f} s to the first image)")
    print(f"   two actors sharing the device: x{rates[2] / rates[1]:.2f} the throughput of one [{LABEL}]")


def _fp32_bf16(precisions: list[str]) -> list[str]:
    """The precisions a part is run in where each costs a while: fp32 and, where here, bf16."""
    return [p for p in precisions if p in ("fp32", "bf16")]


def create_classical():
    from zsris.proposals import create_proposals

    return create_proposals("classical", max_proposals=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flag(parser)
    parser.add_argument("--images", type=int, default=64, help="images for the pipelined engine")
    parser.add_argument("--serial-images", type=int, default=16, help="images for the serial engine")
    parser.add_argument("--loop-images", type=int, default=8, help="images for the per-object loop")
    parser.add_argument("--precision-images", type=int, default=20)
    parser.add_argument("--pass-images", type=int, default=8, help="images for the images-per-pass rows (3c)")
    parser.add_argument("--sam-images", type=int, default=8)
    parser.add_argument("--freesolo-images", type=int, default=8, help="images for the FreeSOLO eval row (0: none)")
    parser.add_argument("--sam-model", default="vit_h")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--backbones", nargs="+", default=["ViT-B/32", "ViT-B/16", "ViT-L/14", "RN50"])
    parser.add_argument("--ray-images", type=int, default=24, help="images for the Ray rows (7)")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the floor probes (6)")
    parser.add_argument("--only", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5, 6, 7], help="which parts to run")
    args = parser.parse_args()
    require_data(args.data)
    dataset = ReferDataset(args.data, "refcoco")
    precisions = ["fp32", "tf32", "bf16", "fp16"] if CUDA else ["fp32", "bf16"] if cpu_bf16_units() else ["fp32"]
    print(f"device: {LABEL}; torch {torch.__version__}; {os.cpu_count()} CPUs"
          + ("" if CUDA else "; no GPU here: CUDA rows not run"))
    needed = max(args.precision_images if 4 in args.only else 1, args.sam_images if 5 in args.only else 1,
                 args.pass_images if 3 in args.only else 1)
    prepared = _prepared(dataset, needed, args.workers)
    _, image, proposals = prepared[0]
    if CUDA and 0 in args.only:
        exactness(image, proposals)
    if 1 in args.only:
        engines(dataset, args.images, args.serial_images, args.workers, precisions, args.freesolo_images)
    if 2 in args.only:
        per_object_loop(dataset, args.loop_images, precisions)
    if 3 in args.only:
        visual_step(image, proposals, args.backbones if CUDA else args.backbones[:1], precisions)
        for precision in _fp32_bf16(precisions):
            breakdown(image, proposals, precision)
        activation_effect(image, proposals, precisions)
        images_per_pass(prepared[:args.pass_images], _fp32_bf16(precisions))
    if 4 in args.only:
        if len(precisions) > 1:
            groups = dataset.refs_by_image("train", args.precision_images)
            work = [(i, p, q, [s.text for r in groups[i] for s in r.sentences]) for i, p, q in prepared if i in groups]
            precision_effect(work, precisions)
        else:
            print("\n4. reduced precision: neither a GPU nor a CPU with bf16 units here")
    if 5 in args.only:
        if CUDA:
            sam_engine(dataset, prepared[:args.sam_images], args.sam_model)
        else:
            print("\n5. SAM on the device: no GPU here")
    if 6 in args.only:
        floor_probes(image, proposals, _fp32_bf16(precisions), not args.no_compile)
    if 7 in args.only:
        ray_actors(args.data, args.ray_images, precisions[-2] if CUDA else "fp32")


if __name__ == "__main__":
    main()
