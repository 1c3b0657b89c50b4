"""`zsris eval`, `zsris calibrate` and `zsris proposals-eval`: flags into a
:class:`zsris.jobs.EvalJob` (or :func:`zsris.jobs.evaluate_proposals`), and the tables printed."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..datasets import DATASETS, GT_MASKS, SPLIT_BYS, SPLITS
from ..errors import ZsrisError
from .flags import (
    DEFAULTS,
    add_engine_flags,
    add_model_flags,
    add_proposal_flags,
    build_segmenter,
    config_from_args,
    execution_from_args,
    positive_int,
    proposal_spec_from_args,
    several_methods,
)


def data_spec_from_args(args: argparse.Namespace):
    from ..jobs.evaluation import DataSpec

    if args.cache is not None and args.no_cache:
        raise ZsrisError("--cache names where the proposal cache is and --no-cache turns it off; give one of them")
    if getattr(args, "gt_proposals", False) and getattr(args, "proposals", DEFAULTS.proposals.name) != \
            DEFAULTS.proposals.name:
        raise ZsrisError(f"--gt-proposals makes the ground-truth masks the proposals; it contradicts --proposals "
                         f"{args.proposals} (leave one of them out)")
    return DataSpec(args.data, args.dataset, split_by_from_args(args), args.images, args.gt_mask, args.cache,
                    args.no_cache,
                    getattr(args, "gt_proposals", False))


def split_by_from_args(args: argparse.Namespace) -> str | None:
    """--split-by, or for PhraseCut --phrasecut-subset (its dataset reads the subset there)."""
    return args.phrasecut_subset if args.dataset == "phrasecut" else args.split_by


def add_split_flags(data: argparse._ArgumentGroup, required: bool = True) -> None:
    """Which images of which dataset: the flags ``eval``, ``calibrate``, ``proposals-eval`` and
    ``proposals`` share."""
    data.add_argument("--data", required=required, default=None, metavar="DIR",
                      help="REFER data root (holds refcoco/, refcoco+/ ...); for phrasecut, VGPhraseCut_v0")
    data.add_argument("--dataset", choices=tuple(DATASETS), default="refcoco", help="(default: %(default)s)")
    data.add_argument("--split", choices=SPLITS, default="val", help="(default: %(default)s)")
    data.add_argument("--split-by", default=None, help="unc, umd or google (default: the dataset's usual one)")
    data.add_argument("--phrasecut-subset", choices=SPLIT_BYS["phrasecut"], default=None,
                      help="PhraseCut's phrases: all (default), unseen (category not one of COCO's 80: the "
                           "paper's setting, and --preset paper's) or seen")
    data.add_argument("--images", default=None, metavar="DIR",
                      help="COCO train2014 folder (default: found under --data)")
    data.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N images")


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    add_split_flags(data)
    data.add_argument("--gt-mask", choices=GT_MASKS, default=None,
                      help="where a referred object's polygons overlap: 'refer' drops the overlap as the "
                           "authors' code reads REFER (default; reproduces the paper), 'union' keeps it "
                           "(the default for grefcoco, as ReLA reads it)")
    data.add_argument("--cache", default=None, metavar="DIR",
                      help="proposal cache folder (default: $ZSRIS_CACHE/proposals or ~/.cache/zsris/proposals)")
    data.add_argument("--no-cache", action="store_true", help="do not read or write the proposal cache")


def cmd_eval(args: argparse.Namespace) -> int:
    from ..errors import ZsrisError
    from ..jobs.evaluation import EvalJob, check_split_images
    from ..jobs.run import writable_folder
    from ..report import failed_images, table

    execution = execution_from_args(args)
    execution.check()
    if several_methods(args.method):
        return _compare(args, execution)
    config, data = config_from_args(args), data_spec_from_args(args)
    dataset = data.open()  # the data, its images and the output folder are checked before any model loads
    check_split_images(dataset, dataset.refs_by_image(args.split, args.limit), args.split)
    writable_folder(Path(args.out))
    job = EvalJob(build_segmenter(config), data, args.out, split=args.split, limit=args.limit,
                  calibrate=getattr(args, "calibrate", False), calibration_out=getattr(args, "calibration_out", None),
                  execution=execution, opened=dataset)
    outcome = job.run()
    print(table(outcome.summary, outcome.title))
    if outcome.timing:
        print("\n" + table(outcome.timing, "time (this run)"))
    print(f"\nwrote {', '.join(str(path) for path in outcome.written)}")
    failures = failed_images(outcome.records)
    if failures:  # named, not only counted: they count as misses in every figure above
        print(f"zsris: {len(failures)} image(s) failed and their sentences count as misses; the first: image "
              f"{failures[0]['image_id']}: {failures[0]['error']} (every one in {Path(args.out) / 'errors.jsonl'})",
              file=sys.stderr)
    if outcome.records and all(r.get("error") for r in outcome.records):  # metrics of failures only: no result
        raise ZsrisError(f"every one of the {len(outcome.records)} sentences failed (the first: "
                         f"{outcome.records[0]['error']}); the report counts them as misses, but it is no result")
    if outcome.calibration is not None:
        _print_calibration(outcome, args)
    return 0


def _compare(args: argparse.Namespace, execution) -> int:
    """`zsris eval --method a,b,...` or `--method table1`: every method in one pass (a CompareJob)."""
    from ..jobs.compare import CompareJob, comparison_table
    from ..jobs.evaluation import check_split_images
    from ..jobs.run import writable_folder
    from .flags import build_segmenters

    if getattr(args, "calibrate", False):
        raise ZsrisError("zsris calibrate calibrates one method; give --method one name")
    data = data_spec_from_args(args)
    dataset = data.open()  # the data, its images and the output folder are checked before any model loads
    check_split_images(dataset, dataset.refs_by_image(args.split, args.limit), args.split)
    writable_folder(Path(args.out))
    segmenters = list(build_segmenters(args).values())
    outcome = CompareJob(segmenters, data, args.out, split=args.split, limit=args.limit, execution=execution,
                         opened=dataset).run()
    print(comparison_table(outcome.summaries, outcome.backbones, outcome.title))
    print(f"\nwrote {', '.join(str(path) for path in outcome.written)} and a folder per method")
    return 0


def _print_calibration(outcome, args: argparse.Namespace) -> None:
    from ..report import table

    calibration = outcome.calibration
    print("\n" + "\n".join(f"threshold {row['threshold']:>8}: gIoU {row['gIoU']:6.2f}  "
                            f"({row['answered none']} of {len(outcome.records)} answered none)"
                            for row in outcome.curve))
    chosen = {"no-target threshold": calibration.no_target_threshold, "gIoU": calibration.gIoU,
              "multi-target threshold": calibration.multi_target_threshold,
              "multi-target margin": calibration.multi_target_margin,
              "multi-target gIoU": calibration.multi_target_gIoU}
    print("\n" + table(chosen, f"calibration on {args.dataset} {args.split}"))
    print(f"\nwrote {outcome.calibration_path}: pass it to segment, batch, serve or eval with "
          f"--calibration {outcome.calibration_path}")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..datasets import GENERALIZED
    from ..errors import ZsrisError

    if args.dataset not in GENERALIZED:
        raise ZsrisError(f"calibrate needs a dataset with no-target expressions ({', '.join(GENERALIZED)}), "
                         f"not {args.dataset}")
    if args.no_target_threshold is not None or args.multi_target or args.calibration:
        raise ZsrisError("calibrate evaluates the split as the paper answers (one mask each): leave out "
                         "--no-target-threshold, --multi-target and --calibration")
    args.calibrate = True
    return cmd_eval(args)


def cmd_proposals_eval(args: argparse.Namespace) -> int:
    import json

    from ..backbones import resolve_device
    from ..config import DEFAULT_MAX_PIXELS
    from ..jobs.evaluation import evaluate_proposals
    from ..proposals import create_proposals
    from ..proposals.registry import check_class_agnostic
    from ..report import table

    data = data_spec_from_args(args)
    dataset = data.open()
    check_class_agnostic(args.proposals, "zsris proposals-eval")
    spec = proposal_spec_from_args(args)
    generator = create_proposals(spec, resolve_device(args.device))  # bad settings fail before any worker starts
    groups = dataset.refs_by_image(args.split, args.limit)
    summary = evaluate_proposals(dataset, groups, data.engine(execution_from_args(args), generator, DEFAULT_MAX_PIXELS))
    print(table(summary, f"{args.proposals} proposals on {args.dataset} {args.split}"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"metrics": summary, "generator": generator.cache_key}, indent=2))
    if summary["images failed"] and summary["images failed"] == summary["images"]:  # failures only: no result
        raise ZsrisError(f"every one of the {summary['images']} images failed (the first: {summary['first failure']}); "
                         f"the table counts their objects as misses, but it is no result")
    if summary["images failed"]:
        print(f"zsris: {summary['images failed']} image(s) failed and their objects count as misses; the first: "
              f"{summary['first failure']}", file=sys.stderr)
    return 0


def register(commands) -> None:
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
    add_engine_flags(evaluate)
    add_model_flags(evaluate)
    evaluate.set_defaults(run=cmd_eval)

    calibrate = commands.add_parser(
        "calibrate", help="pick the no-target threshold and multi-target margin on a gRefCOCO split",
        description="Evaluate a gRefCOCO split as the paper answers (resumable, like eval), then choose the "
                    "no-target threshold (and, for --multi-target, the threshold and margin) that maximise gIoU, "
                    "print the curve and write a calibration file for --calibration.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  zsris calibrate --data refer/data --dataset grefcoco --split val --out runs/grefcoco-val",
    )
    _add_data_flags(calibrate)
    calibrate.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (resumable)")
    calibrate.add_argument("--calibration-out", default=None, metavar="FILE",
                           help="where to write the calibration (default: RUN_DIR/calibration.json)")
    calibrate.set_defaults(gt_proposals=False)
    add_engine_flags(calibrate)
    add_model_flags(calibrate)
    calibrate.set_defaults(run=cmd_calibrate)

    proposals = commands.add_parser(
        "proposals-eval", help="proposal quality alone: oracle mIoU/oIoU, recall, count, time",
        description="How good are the mask proposals? No CLIP involved.",
    )
    _add_data_flags(proposals)
    proposals.add_argument("--out", default=None, metavar="FILE", help="also write the metrics as JSON")
    add_engine_flags(proposals, model_stage=False)
    add_proposal_flags(proposals)
    proposals.set_defaults(run=cmd_proposals_eval)
