"""`zsris batch`: a folder or a manifest of (image, expression) pairs, one model load, resumable.

The work is :class:`zsris.jobs.BatchJob`'s; this module turns flags into one and prints what it did.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .flags import (
    EPILOG,
    add_engine_flags,
    add_model_flags,
    add_top_k_flag,
    build_segmenter,
    config_from_args,
    execution_from_args,
)

#: The exit status of a batch in which some pairs failed (their reasons are in errors.jsonl).
SOME_FAILED = 3


def _read_pairs(args: argparse.Namespace):
    from ..jobs.pairs import ManifestError, folder_pairs, read_manifest

    source = Path(args.input)
    if source.is_dir():
        return folder_pairs(source, args.expressions or [], skip=[Path(args.output)])
    if not source.exists():
        raise ManifestError(f"{source}: no such file or folder")
    if args.expressions:
        raise ManifestError("-e is for a folder of images; a manifest gives its own expressions")
    return read_manifest(source, args.allow_outside)


#: Runs of fewer images print their per-stage timing only with -v: on a few images it is noise.
TIMING_TABLE_IMAGES = 20


def cmd_batch(args: argparse.Namespace) -> int:
    from ..jobs.batch import ERRORS, BatchJob, check_output_folder
    from ..jobs.run import writable_folder
    from ..report import table

    execution = execution_from_args(args)
    execution.check()
    out = Path(args.output)
    check_output_folder(out)
    pairs = _read_pairs(args)  # an unreadable input is refused before anything is written
    writable_folder(out)  # and an unusable OUT before any model loads
    segmenter = build_segmenter(config_from_args(args))
    job = BatchJob(segmenter, pairs, out, save_masks=args.save_masks, save_overlays=args.save_overlays,
                   coco=args.format == "coco", top_k=args.top_k, overwrite=args.overwrite,
                   retry_failed=args.retry_failed, execution=execution)
    summary = job.run()
    print(table(summary.table(), "batch"))
    if summary.timing and summary.timing["images"]:
        if args.verbose or summary.timing["images"] >= TIMING_TABLE_IMAGES:
            print("\n" + table(summary.timing, "time (this run)"))
        else:
            print("(zsris -v batch ... adds the time of each stage)")
    print(f"\nwrote {', '.join(str(path) for path in summary.written)}")
    if summary.failed_overall:
        print(f"zsris: {summary.failed_overall} pair(s) failed; the reasons are in {out / ERRORS} "
              f"(--retry-failed tries them again)", file=sys.stderr)
        return SOME_FAILED
    return 0


def register(commands) -> None:
    batch = commands.add_parser(
        "batch", help="segment a folder or a manifest of (image, expression) pairs, resumably",
        description=(
            "Segment many (image, expression) pairs with one model load. INPUT is a folder (every image\n"
            "under it, recursively, against every -e expression) or a manifest: a .csv, .tsv or .jsonl file\n"
            "with the columns image (relative to the manifest, or absolute), expression and optionally id.\n"
            "Results are saved as they are made: after Ctrl-C or a crash, the same command goes on where it\n"
            f"stopped. Exit status: 0 when every pair succeeded, {SOME_FAILED} when some failed (see errors.jsonl),\n"
            "1 when nothing could start, 130 when interrupted."),
        epilog=EPILOG + '\nexamples:\n  zsris batch photos/ -e "the dog" -e "the person on the left" -o out/\n'
                        "  zsris batch pairs.csv -o out/ --format coco --save-masks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("input", metavar="INPUT", help="a folder of images, or a .csv/.tsv/.jsonl manifest")
    batch.add_argument("-e", "--expression", dest="expressions", action="append", metavar="EXPRESSION",
                       help="an expression to segment in every image of a folder (repeat for more)")
    batch.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (resumable)")
    batch.add_argument("--format", choices=("jsonl", "coco"), default="jsonl",
                       help="'coco' also writes coco_results.json (and coco_images.json, the images it refers "
                            "to) for pycocotools (default: %(default)s)")
    batch.add_argument("--save-masks", action="store_true", help="write each mask as a PNG under OUT/masks")
    batch.add_argument("--save-overlays", action="store_true", help="write each overlay under OUT/overlays")
    add_top_k_flag(batch, "each record")
    batch.add_argument("--allow-outside", action="store_true",
                       help="read manifest images whose relative path leads out of the manifest's folder (..)")
    batch.add_argument("--overwrite", action="store_true",
                       help="replace the results already in OUT (made with other settings or another input)")
    batch.add_argument("--retry-failed", action="store_true", help="try the pairs that failed before again")
    add_engine_flags(batch)
    add_model_flags(batch)
    batch.set_defaults(run=cmd_batch)
