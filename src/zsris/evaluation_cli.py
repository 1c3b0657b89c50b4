"""`zsris eval` and `zsris proposals-eval`."""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .cli import positive_int
from .datasets import DATASETS, GT_MASKS, SPLITS, ReferDataset


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, metavar="DIR", help="REFER data root (holds refcoco/, refcoco+/ ...)")
    data.add_argument("--dataset", choices=tuple(DATASETS), default="refcoco")
    data.add_argument("--split", choices=SPLITS, default="val")
    data.add_argument("--split-by", default=None, help="unc, umd or google (default: the dataset's usual one)")
    data.add_argument("--images", default=None, metavar="DIR", help="COCO train2014 folder (default: found under --data)")
    data.add_argument("--gt-mask", choices=GT_MASKS, default="refer",
                      help="where a referred object's polygons overlap: 'refer' drops the overlap as the "
                           "authors' code reads REFER (default; reproduces the paper), 'union' keeps it")
    data.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N images")
    data.add_argument("--cache", default=None, metavar="DIR",
                      help="proposal cache folder (default: $ZSRIS_CACHE/proposals or ~/.cache/zsris/proposals)")
    data.add_argument("--no-cache", action="store_true", help="do not read or write the proposal cache")


def _namespace_config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "run"}


def build_evaluator(config: dict[str, Any]):
    """Everything a worker needs, built from plain settings (so Ray can ship it)."""
    from .cache import DEFAULT_CACHE, ProposalCache
    from .cli import build_segmenter
    from .evaluation import ImageEvaluator

    args = argparse.Namespace(**config)
    dataset = ReferDataset(args.data, args.dataset, args.split_by, args.images, args.gt_mask)
    segmenter = build_segmenter(args, announce=False)
    cache = None
    if not args.no_cache and not args.gt_proposals:
        cache = ProposalCache(args.cache or DEFAULT_CACHE, segmenter.proposals.cache_key)
    return ImageEvaluator(segmenter, dataset, cache, args.gt_proposals)


def run_settings(args: argparse.Namespace, evaluator) -> dict[str, Any]:
    from .records import settings

    return {
        "dataset": args.dataset, "split": args.split, "split_by": evaluator.dataset.split_by,
        "gt_proposals": args.gt_proposals, "gt_mask": args.gt_mask, "preprocess": args.preprocess,
        **settings(evaluator.segmenter),
    }


def cmd_eval(args: argparse.Namespace) -> int:
    from .cli import announce_random
    from .evaluation import pending_images, run_local, run_ray, sentence_ids
    from .metrics import summarize
    from .report import table, write_report
    from .store import PredictionStore

    config = _namespace_config(args)
    evaluator = build_evaluator(config)
    announce_random(evaluator.segmenter)
    groups = evaluator.dataset.refs_by_image(args.split, args.limit)
    out = Path(args.out)
    settings = run_settings(args, evaluator)
    with PredictionStore(out / "predictions.sqlite", settings) as store:
        pending = pending_images(groups, store.done())
        title = f"{args.dataset} {args.split} ({settings['backbone']}, {settings['proposals'].split('-')[0]})"
        progress = tqdm(total=len(groups), initial=len(groups) - len(pending), unit="image", desc="eval",
                        dynamic_ncols=True)
        try:
            if args.engine == "ray":
                build = functools.partial(build_evaluator, config)
                run_ray(build, groups, pending, store, progress, args.workers, args.ray_address)
            else:
                run_local(evaluator, groups, pending, store, progress)
        except KeyboardInterrupt:
            progress.close()
            print(f"zsris: interrupted; {len(store.done())} sentences are saved in {out}. "
                  f"Run the same command again to resume.", file=sys.stderr)
            return 130
        finally:
            progress.close()
        records = store.records(sentence_ids(groups))
    summary = summarize(records)
    write_report(out, summary, settings, [r["iou"] for r in records], title)
    print(table(summary, title))
    print(f"\nwrote {out / 'metrics.json'}, {out / 'report.md'}, {out / 'iou_histogram.png'}")
    return 0


def cmd_proposals_eval(args: argparse.Namespace) -> int:
    import json

    from .backbones import resolve_device
    from .cache import DEFAULT_CACHE, ProposalCache
    from .evaluation import evaluate_proposals
    from .proposals import create_proposals
    from .report import table

    dataset = ReferDataset(args.data, args.dataset, args.split_by, args.images, args.gt_mask)
    generator = create_proposals(args.proposals, args.max_proposals, args.sam_checkpoint, args.sam_model,
                                 args.proposals_path, resolve_device(args.device))
    cache = None if args.no_cache else ProposalCache(args.cache or DEFAULT_CACHE, generator.cache_key)
    groups = dataset.refs_by_image(args.split, args.limit)
    summary = evaluate_proposals(generator, dataset, groups, cache)
    print(table(summary, f"{args.proposals} proposals on {args.dataset} {args.split}"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"metrics": summary, "generator": generator.cache_key}, indent=2))
    return 0


def register(commands, add_model_flags) -> None:
    from .cli import add_proposal_flags

    evaluate = commands.add_parser(
        "eval", help="evaluate on RefCOCO / RefCOCO+ / RefCOCOg (resumable)",
        description="Segment every sentence of a split and report oIoU, mIoU, precision, mc-acc, cc-oIoU and "
                    "the proposal oracle. Predictions are saved as they are made: rerun the same command to resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  zsris eval --data refer/data --dataset refcoco --split val --out runs/refcoco-val",
    )
    _add_data_flags(evaluate)
    evaluate.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (resumable)")
    evaluate.add_argument("--gt-proposals", action="store_true",
                          help="use the image's ground-truth instance masks as proposals (upper bound)")
    evaluate.add_argument("--engine", choices=("local", "ray"), default="local")
    evaluate.add_argument("--workers", type=positive_int, default=2, help="Ray workers (default: %(default)s)")
    evaluate.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    add_model_flags(evaluate)
    evaluate.set_defaults(run=cmd_eval)

    proposals = commands.add_parser(
        "proposals-eval", help="proposal quality alone: oracle mIoU/oIoU, recall, count, time",
        description="How good are the mask proposals? No CLIP involved.",
    )
    _add_data_flags(proposals)
    proposals.add_argument("--out", default=None, metavar="FILE", help="also write the metrics as JSON")
    add_proposal_flags(proposals)
    proposals.set_defaults(run=cmd_proposals_eval)
