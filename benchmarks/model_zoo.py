"""The 2026 models on this machine: SAM 2.1 and SAM 3 proposals and the visual step per backbone,
seconds per image and peak memory, each against a floor run in the same process.

    python benchmarks/model_zoo.py [--data DIR] [--images 1] [--points 32] [--sizes tiny,small,base-plus,large]
                                   [--backbones ViT-B/32,hf:openai/clip-vit-base-patch32,ViT-B-16-SigLIP]
                                   [--only sam2|sam3|backbones]

Random weights of the real architectures at full size (their FLOPs are the real ones), on
refcoco-mini images; every row runs in a process of its own, so its peak resident memory
(``ru_maxrss``) is its own.

- SAM 2.1's automatic generator (``--proposals sam2``) with a ``--points`` grid; the floor is
  the same network's image encoder alone, which any SAM 2.1 generator pays.
- SAM 3 (``--proposals sam3``) with two noun phrases: the image encoder once, then one detector
  pass a phrase; the floor is the image encoder alone.
- The segmenter's visual step (global and local features of 100 classical proposals) per
  backbone; the floor is the plain ``encode_image`` of the same 100 crops.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
import warnings
from typing import Any, Callable

import torch

from common import add_data_flag, require_data

PHRASES = ["the man", "a white cup"]


def _images(data, count: int):
    from zsris.datasets import open_dataset
    from zsris.jobs.evaluation import load_dataset_image

    dataset = open_dataset(require_data(data), "refcoco")
    ids = sorted(dataset.refs_by_image("train"))[:count]
    return [load_dataset_image(dataset, image_id) for image_id in ids]


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def sam2_row(images, size: str, points: int) -> dict[str, Any]:
    from zsris.proposals import create_proposals

    generator = create_proposals("sam2", checkpoint="random", model=size, points_per_side=points)
    generator(images[0][:64, :64].copy())  # warm-up
    seconds, floors, counts = [], [], []
    for image in images:
        proposals, elapsed = _timed(lambda: generator(image))
        seconds.append(elapsed)
        counts.append(len(proposals))
        with torch.inference_mode():
            pixels = generator.processor(images=image.copy(), return_tensors="pt")["pixel_values"]
            floors.append(_timed(lambda: generator.network.get_image_embeddings(pixels))[1])
    return {"row": size, "parameters": sum(p.numel() for p in generator.network.parameters()) / 1e6,
            "seconds": statistics.mean(seconds), "floor": statistics.mean(floors), "count": statistics.mean(counts)}


def sam3_row(images) -> dict[str, Any]:
    from zsris.proposals import create_proposals

    generator, build = _timed(lambda: create_proposals("sam3", checkpoint="random"))
    seconds, floors = [], []
    for image in images:
        seconds.append(_timed(lambda: generator.instances(image, PHRASES))[1])
        with torch.inference_mode():
            pixels = generator.image_processor(images=image.copy(), return_tensors="pt")["pixel_values"]
            floors.append(_timed(lambda: generator.network.get_vision_features(pixel_values=pixels))[1])
    return {"row": "SAM 3 (facebook/sam3's architecture)", "build": build,
            "parameters": sum(p.numel() for p in generator.network.parameters()) / 1e6,
            "seconds": statistics.mean(seconds), "floor": statistics.mean(floors), "passes": generator.passes}


def backbone_row(images, name: str) -> dict[str, Any]:
    from zsris import Segmenter, SegmenterConfig, visual
    from zsris.backbones import load_backbone
    from zsris.proposals import ClassicalProposals

    generator = ClassicalProposals(max_proposals=100)
    prepared = [(image, generator(image)) for image in images]
    backbone = load_backbone(name, weights="random")
    segmenter = Segmenter(backbone, generator, SegmenterConfig(backbone=name))
    segmenter.image_features(images[0], proposals=prepared[0][1])  # warm-up
    seconds, floors = [], []
    for image, proposals in prepared:
        seconds.append(_timed(lambda: segmenter.image_features(image, proposals=proposals))[1])
        crops = visual.local_crops(segmenter.preprocessor.image_tensor(image), torch.from_numpy(proposals.masks), None,
                                   segmenter.preprocessor.config.fill, backbone.input_size)
        floors.append(_timed(lambda: visual.encode_images(backbone.model, crops))[1])
    return {"row": name, "parameters": sum(p.numel() for p in backbone.model.parameters()) / 1e6,
            "seconds": statistics.mean(seconds), "floor": statistics.mean(floors)}


def _child(queue, function: str, args: tuple) -> None:
    warnings.simplefilter("ignore")  # random weights and stand-in tokenizers: said in the docstring
    torch.set_grad_enabled(False)
    row = globals()[function](*args)
    row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(row)


def in_own_process(function: str, *args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, function, args))
    process.start()
    row = queue.get()
    process.join()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flag(parser)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--points", type=int, default=32, help="SAM 2.1's points per side (default: 32, its own)")
    parser.add_argument("--sizes", default="tiny,small,base-plus,large")
    parser.add_argument("--backbones", default="ViT-B/32,hf:openai/clip-vit-base-patch32,ViT-B-16-SigLIP")
    parser.add_argument("--only", choices=("sam2", "sam3", "backbones"), default=None)
    args = parser.parse_args()
    images = _images(args.data, args.images)
    where = f"{len(images)} refcoco-mini image(s), {torch.get_num_threads()} CPU threads, fp32"
    if args.only in (None, "sam2"):
        print(f"## SAM 2.1 proposals ({args.points} x {args.points} points), {where}\n")
        print("| size | parameters | seconds/image | image encoder alone (floor) | ratio | proposals/image | "
              "peak RSS |")
        print("|---|---|---|---|---|---|---|")
        for size in [s for s in args.sizes.split(",") if s]:
            row = in_own_process("sam2_row", images, size, args.points)
            print(f"| {size} | {row['parameters']:.1f} M | {row['seconds']:.2f} | {row['floor']:.2f} | "
                  f"x{row['seconds'] / row['floor']:.1f} | {row['count']:.0f} | {row['peak_mb']:.0f} MB |", flush=True)
        print("\n(random weights predict low IoU and stability, so few masks pass SAM's filters and the counts mean "
              "nothing; the decoder's time, most of the total, does not depend on what passes)\n")
    if args.only in (None, "sam3"):
        print(f"## SAM 3 proposals, {len(PHRASES)} noun phrases an image, {where}\n")
        row = in_own_process("sam3_row", images)
        print("| model | parameters | built in | seconds/image (both phrases) | image encoder alone (floor) | "
              "per phrase beyond it | peak RSS |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {row['row']} | {row['parameters']:.0f} M | {row['build']:.1f} s | {row['seconds']:.2f} | "
              f"{row['floor']:.2f} | {(row['seconds'] - row['floor']) / len(PHRASES):.2f} s | "
              f"{row['peak_mb']:.0f} MB |\n",
              flush=True)
    if args.only in (None, "backbones"):
        print(f"## The visual step, 100 classical proposals, {where}\n")
        print("| backbone | parameters | visual step s/image | encode_image of the 100 crops (floor) | ratio | "
              "peak RSS |")
        print("|---|---|---|---|---|---|")
        for name in [b for b in args.backbones.split(",") if b]:
            row = in_own_process("backbone_row", images, name)
            print(f"| {name} | {row['parameters']:.0f} M | {row['seconds']:.2f} | {row['floor']:.2f} | "
                  f"x{row['seconds'] / row['floor']:.2f} | {row['peak_mb']:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
