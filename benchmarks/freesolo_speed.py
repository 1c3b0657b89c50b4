"""FreeSOLO proposals: seconds per image, peak memory, and the network's share of the time.

    python benchmarks/freesolo_speed.py [--images 5] [--device cpu]

Random weights of the real architecture (ResNet-101-FPN SOLOv2: the real FLOPs) on refcoco-mini
images. The baseline, run in the same process on the same padded inputs, is the floor of any
FreeSOLO: torchvision's ResNet-101 trunk alone. Also the oracle of the proposals (the best
proposal's IoU with each referred object), which with random weights means nothing beyond
showing that the masks reach the evaluation.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
import torchvision

from zsris.datasets import open_dataset
from zsris.jobs.evaluation import best_proposal, load_dataset_image
from zsris.metrics import iou
from zsris.proposals import create_proposals
from zsris.proposals.freesolo import ResNetFPN, freesolo_input, pad_to

from common import add_data_flag, require_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_flag(parser)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = require_data(args.data)
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    dataset = open_dataset(data, "refcoco")
    groups = dataset.refs_by_image("train", args.images)
    generator = create_proposals("freesolo", device, freesolo_checkpoint="random")
    trunk = torchvision.models.resnet101().eval().to(device)
    ours, floor, counts, oracle = [], [], [], []
    for image_id, refs in groups.items():
        pixels = load_dataset_image(dataset, image_id)
        padded = pad_to(freesolo_input(pixels), ResNetFPN.size_divisibility).to(device)
        for _ in range(2 if not ours else 1):  # the first image warms both up
            start = time.perf_counter()
            proposals = generator(pixels)
            if device.type == "cuda":
                torch.cuda.synchronize()
            middle = time.perf_counter()
            trunk(padded)
            if device.type == "cuda":
                torch.cuda.synchronize()
            end = time.perf_counter()
        ours.append(middle - start)
        floor.append(end - middle)
        counts.append(len(proposals))
        for ref in refs:
            target = dataset.annotation_mask(ref.ann_id)
            oracle.append(iou(*best_proposal(proposals.masks, target)))
        print(f"image {image_id} {pixels.shape[1]}x{pixels.shape[0]}: FreeSOLO {ours[-1]:.2f} s "
              f"({len(proposals)} masks), ResNet-101 trunk alone {floor[-1]:.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ours_s, floor_s = statistics.median(ours), statistics.median(floor)
    print(f"\nFreeSOLO on {device}: {ours_s:.2f} s per image (median of {len(ours)}), {np.mean(counts):.0f} masks")
    print(f"baseline, torchvision ResNet-101 on the same inputs: {floor_s:.2f} s per image; "
          f"FreeSOLO / baseline = x{ours_s / floor_s:.2f}")
    print(f"peak memory (RSS): {peak:.0f} MB")
    print(f"oracle mIoU of the proposals (random weights: a smoke figure only): {100 * np.mean(oracle):.2f} "
          f"over {len(oracle)} objects")


if __name__ == "__main__":
    main()
