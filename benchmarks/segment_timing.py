"""CPU time of `segment` per image, split into proposals, visual features and text.

    python benchmarks/segment_timing.py [--images 5] [--proposals 50] [--expressions 3]

Runs ViT-B/32 with random weights (same FLOPs as the real model) on refcoco-mini images and
compares the visual-feature stage with a baseline computed in the same process: every proposal
through the whole ViT with its mask (no shared trunk) and one local crop per forward pass.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from zsris import visual
from zsris.backbones import load_backbone
from zsris.images import load_image
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter

from common import add_data_flag, require_data

EXPRESSIONS = ["the man on the left", "a red car parked by the road", "the biggest elephant in the middle"]


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def baseline_visual(segmenter: Segmenter, image, masks) -> torch.Tensor:
    """No shared trunk, no batching: what a straightforward implementation costs."""
    tensor = segmenter.preprocessor.image_tensor(image)
    clip_input = segmenter.preprocessor.clip_input(tensor)
    model = segmenter.backbone.model
    g = torch.cat([visual.global_features(model, clip_input, m[None], segmenter.config.k) for m in masks])
    loc = torch.cat([segmenter.encoder.local_features(tensor, m[None]) for m in masks])
    return segmenter.method.fuse_visual(g, loc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--proposals", type=int, default=50)
    parser.add_argument("--expressions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_data_flag(parser)
    args = parser.parse_args()
    require_data(args.data)
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter(load_backbone("ViT-B/32", weights="random"),
                              ClassicalProposals(max_proposals=args.proposals))
    paths = sorted((args.data / "images" / "train2014").glob("*.jpg"))[: args.images]
    expressions = (EXPRESSIONS * args.expressions)[: args.expressions]
    rows = []
    for path in paths:
        image = load_image(path)
        proposals, t_prop = _timed(lambda: segmenter.proposals(image, path.name))
        features, t_vis = _timed(lambda: segmenter.image_features(image, proposals=proposals))
        segmenter.encoder.text_encoder._cache.clear()
        segmenter.parser._cache.clear()
        _, t_text = _timed(lambda: segmenter.score(features, expressions))
        masks = torch.from_numpy(proposals.masks)
        baseline, t_base = _timed(lambda: baseline_visual(segmenter, image, masks))
        torch.testing.assert_close(baseline, features.visual_features, rtol=1e-4, atol=1e-4)
        rows.append((len(proposals), t_prop, t_vis, t_text, t_base))
        print(f"{path.name}: {len(proposals)} proposals | proposals {t_prop:.2f}s | visual {t_vis:.2f}s "
              f"| text+scoring ({len(expressions)} expr.) {t_text:.3f}s | baseline visual {t_base:.2f}s")
    median = [statistics.median(column) for column in zip(*rows)]
    total = median[1] + median[2] + median[3]
    print(f"\nmedian per image on {torch.get_num_threads()} threads, ViT-B/32 (random weights), "
          f"{median[0]:.0f} proposals, {len(expressions)} expressions:")
    print(f"  proposals (classical)  {median[1]:6.2f} s")
    print(f"  visual features        {median[2]:6.2f} s   (global + local, batched, shared trunk)")
    print(f"  text + scoring         {median[3]:6.3f} s")
    print(f"  total                  {total:6.2f} s")
    print(f"  baseline visual        {median[4]:6.2f} s   -> visual speed-up x{median[4] / median[2]:.2f}")


if __name__ == "__main__":
    main()
