"""Sentences per second of `zsris eval` against the authors' per-ref loop, in one process.

    python benchmarks/eval_throughput.py [--images 20] [--proposals 50]

Baseline (as the reference code): for every ref, compute proposals and visual features again,
then score its sentences, encoding each sentence's text anew. zsris: refs grouped by image,
proposals and visual features once per image, text features cached; measured with a cold
proposal cache (first run) and a warm one (a rerun with other CLIP settings).
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch

from zsris.backbones import load_backbone
from zsris.cache import ProposalCache
from zsris.datasets import ReferDataset
from zsris.jobs.evaluation import ImageEvaluator, load_dataset_image
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter

from common import add_data_flag, require_data


def baseline(segmenter: Segmenter, dataset: ReferDataset, groups) -> int:
    sentences = 0
    for image_id, refs in groups.items():
        for ref in refs:
            image = load_dataset_image(dataset, image_id)
            proposals = segmenter.proposals(image)
            features = segmenter.image_features(image, proposals=proposals)
            for sentence in ref.sentences:
                segmenter.encoder.text_encoder._cache.clear()
                segmenter.score(features, [sentence.text])
                sentences += 1
    return sentences


def grouped(evaluator: ImageEvaluator, groups) -> int:
    return sum(len(evaluator(image_id, refs)) for image_id, refs in groups.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--proposals", type=int, default=50)
    parser.add_argument("--dataset", default="refcoco")
    parser.add_argument("--split", default="train")
    add_data_flag(parser)
    args = parser.parse_args()
    require_data(args.data, args.dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter(load_backbone("ViT-B/32", weights="random"),
                              ClassicalProposals(max_proposals=args.proposals))
    dataset = ReferDataset(args.data, args.dataset)
    groups = dataset.refs_by_image(args.split, args.images)
    refs = sum(len(r) for r in groups.values())

    start = time.perf_counter()
    n_base = baseline(segmenter, dataset, groups)
    t_base = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache_dir:
        evaluator = ImageEvaluator(segmenter, dataset, ProposalCache(cache_dir, segmenter.proposals.cache_key))
        segmenter.encoder.text_encoder._cache.clear()
        start = time.perf_counter()
        n_cold = grouped(evaluator, groups)
        t_cold = time.perf_counter() - start
        segmenter.encoder.text_encoder._cache.clear()
        start = time.perf_counter()
        n_warm = grouped(evaluator, groups)
        t_warm = time.perf_counter() - start
    assert n_base == n_cold == n_warm
    print(f"{len(groups)} images, {refs} refs, {n_base} sentences, ViT-B/32 (random weights), "
          f"{args.proposals} classical proposals, {torch.get_num_threads()} threads")
    print(f"  baseline (per ref, as the authors' code)  {n_base / t_base:6.2f} sentences/s  ({t_base:.1f} s)")
    print(f"  zsris eval, cold proposal cache          {n_cold / t_cold:6.2f} sentences/s  ({t_cold:.1f} s)"
          f"  x{t_base / t_cold:.2f}")
    print(f"  zsris eval, warm proposal cache          {n_warm / t_warm:6.2f} sentences/s  ({t_warm:.1f} s)"
          f"  x{t_base / t_warm:.2f}")


if __name__ == "__main__":
    main()
