"""`zsris eval` and `zsris proposals-eval`."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import ProposalSpec, SegmenterConfig
from ..datasets import DATASETS, GT_MASKS, SPLITS
from .flags import (add_engine_flags, add_model_flags, add_proposal_flags, build_segmenter,
                    config_from_args, positive_int, proposal_spec_from_args, proposal_workers)


@dataclass(frozen=True)
class DataSpec:
    """Which REFER data an evaluation reads, and its proposal cache (plain data, so Ray can ship it)."""

    data: str
    dataset: str
    split_by: Optional[str]
    images: Optional[str]
    gt_mask: Optional[str]
    cache: Optional[str]
    no_cache: bool
    gt_proposals: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DataSpec":
        return cls(args.data, args.dataset, args.split_by, args.images, args.gt_mask, args.cache, args.no_cache,
                   getattr(args, "gt_proposals", False))

    def open(self):
        from ..datasets import open_dataset

        return open_dataset(self.data, self.dataset, self.split_by, self.images, self.gt_mask)

    @property
    def cache_root(self) -> Optional[str]:
        """The proposal cache's folder, None with --no-cache."""
        from ..cache import DEFAULT_CACHE

        return None if self.no_cache else str(self.cache or DEFAULT_CACHE)

    def preparer(self, spec: Optional[ProposalSpec], max_pixels: int):
        """What the engine does before the model stage: decode dataset images on their stored
        grid and make their proposals from ``spec`` (None: decoding only)."""
        from ..engine import Preparer

        return Preparer(spec, self.cache_root, max_pixels, exif_transpose=False)

    def proposal_cache(self, generator_key: str):
        from ..cache import ProposalCache

        if self.cache_root is None or self.gt_proposals:
            return None
        return ProposalCache(self.cache_root, generator_key)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, metavar="DIR", help="REFER data root (holds refcoco/, refcoco+/ ...)")
    data.add_argument("--dataset", choices=tuple(DATASETS), default="refcoco")
    data.add_argument("--split", choices=SPLITS, default="val")
    data.add_argument("--split-by", default=None, help="unc, umd or google (default: the dataset's usual one)")
    data.add_argument("--images", default=None, metavar="DIR", help="COCO train2014 folder (default: found under --data)")
    data.add_argument("--gt-mask", choices=GT_MASKS, default=None,
                      help="where a referred object's polygons overlap: 'refer' drops the overlap as the "
                           "authors' code reads REFER (default; reproduces the paper), 'union' keeps it "
                           "(the default for grefcoco, as ReLA reads it)")
    data.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N images")
    data.add_argument("--cache", default=None, metavar="DIR",
                      help="proposal cache folder (default: $ZSRIS_CACHE/proposals or ~/.cache/zsris/proposals)")
    data.add_argument("--no-cache", action="store_true", help="do not read or write the proposal cache")


def build_evaluator(config: SegmenterConfig, data: DataSpec, announce: bool = False):
    """Everything a worker needs, built from plain settings (so Ray can ship them)."""
    from ..evaluation import ImageEvaluator

    segmenter = build_segmenter(config, announce=announce)
    return ImageEvaluator(segmenter, data.open(), data.proposal_cache(segmenter.proposals.cache_key),
                          data.gt_proposals)


def run_settings(args: argparse.Namespace, evaluator) -> dict[str, Any]:
    """What a run's records depend on: the data read and the segmenter's settings."""
    from ..records import settings

    return {
        "dataset": args.dataset, "split": args.split, "split_by": evaluator.dataset.split_by,
        "gt_proposals": args.gt_proposals, "gt_mask": evaluator.dataset.gt_mask, **settings(evaluator.segmenter),
    }


def _engine(args: argparse.Namespace, data: DataSpec, spec: Optional[ProposalSpec], max_pixels: int,
            generator=None):
    """Decoding and the proposals of ``spec`` (None: decoding only) in worker processes; with a
    ``generator`` loaded here (SAM, on the device), in this process, one image ahead of CLIP."""
    from ..engine import Engine

    if generator is not None:
        return Engine(data.preparer(spec, max_pixels), 0, generator=generator)
    return Engine(data.preparer(spec, max_pixels), proposal_workers(args))


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..evaluation import pending_images, ray_session, run_local, run_ray, sentence_ids
    from ..metrics import summarize
    from ..report import table, write_report
    from ..store import PredictionStore

    if args.engine == "ray":
        from ..extras import require_extra

        require_extra("ray", "--engine ray")
    config, data = config_from_args(args), DataSpec.from_args(args)
    evaluator = build_evaluator(config, data, announce=True)
    groups = evaluator.dataset.refs_by_image(args.split, args.limit)
    out = Path(args.out)
    settings = run_settings(args, evaluator)
    title = f"{args.dataset} {args.split} ({settings['backbone']}, {settings['proposals']['name']})"
    with PredictionStore(out / "predictions.sqlite", settings) as store, \
            ray_session(args.workers, args.ray_address, enabled=args.engine == "ray"):
        pending = pending_images(groups, store.done())
        progress = tqdm(total=len(groups), initial=len(groups) - len(pending), unit="image", desc="eval",
                        dynamic_ncols=True)
        timing = None
        try:
            if args.engine == "ray":
                def commit(records) -> None:
                    store.add(records)
                    progress.update(1)

                run_ray(functools.partial(build_evaluator, config, data),
                        [(image_id, groups[image_id]) for image_id in pending], commit, args.workers)
            else:
                # ground-truth proposals come from the annotations in the model stage; SAM is made
                # by the model already loaded here
                sam = config.proposals.name == "sam" and not data.gt_proposals
                engine = _engine(args, data, None if data.gt_proposals else config.proposals, config.max_pixels,
                                 evaluator.segmenter.proposals if sam else None)
                timing = run_local(evaluator, groups, pending, store, progress, engine).summary()
        except KeyboardInterrupt:
            progress.close()
            print(f"zsris: interrupted; {len(store.done())} sentences are saved in {out}. "
                  f"Run the same command again to resume.", file=sys.stderr)
            return 130
        finally:
            progress.close()
        records = store.records(sentence_ids(groups))
    summary = summarize(records)
    write_report(out, summary, settings, [r["iou"] for r in records], title, timing)
    print(table(summary, title))
    if timing:
        print("\n" + table(timing, "time (this run)"))
    print(f"\nwrote {out / 'metrics.json'}, {out / 'report.md'}, {out / 'iou_histogram.png'}")
    if getattr(args, "calibrate", False):
        return _write_calibration(args, records, settings, out)
    return 0


def _write_calibration(args: argparse.Namespace, records, settings, out: Path) -> int:
    from ..calibration import calibrate
    from ..report import table

    calibration, curve = calibrate(records)
    calibration = dataclasses.replace(calibration, dataset=args.dataset, split=args.split, settings=settings)
    target = Path(args.calibration_out) if args.calibration_out else out / "calibration.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    calibration.write(target)
    print("\n" + "\n".join(f"threshold {row['threshold']:>8}: gIoU {row['gIoU']:6.2f}  "
                            f"({row['answered none']} of {len(records)} answered none)" for row in curve))
    chosen = {"no-target threshold": calibration.no_target_threshold, "gIoU": calibration.gIoU,
              "multi-target threshold": calibration.multi_target_threshold,
              "multi-target margin": calibration.multi_target_margin,
              "multi-target gIoU": calibration.multi_target_gIoU}
    print("\n" + table(chosen, f"calibration on {args.dataset} {args.split}"))
    print(f"\nwrote {target}: pass it to segment, batch, serve or eval with --calibration {target}")
    return 0


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
    from ..evaluation import evaluate_proposals
    from ..proposals import create_proposals
    from ..report import table

    data = DataSpec.from_args(args)
    dataset = data.open()
    spec = proposal_spec_from_args(args)
    generator = create_proposals(spec, resolve_device(args.device))  # bad settings fail before any worker starts
    groups = dataset.refs_by_image(args.split, args.limit)
    # the SAM just loaded, on the device, in this process
    engine = _engine(args, data, spec, DEFAULT_MAX_PIXELS, generator if spec.name == "sam" else None)
    summary = evaluate_proposals(dataset, groups, engine)
    print(table(summary, f"{args.proposals} proposals on {args.dataset} {args.split}"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"metrics": summary, "generator": generator.cache_key}, indent=2))
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
