"""`zsris proposals`: write a generator's proposals of images, folders or a dataset split to the
file that ``--proposals file`` reads (the work is :class:`zsris.jobs.proposals.ProposalsJob`'s)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .evaluate import add_split_flags, split_by_from_args
from .flags import add_engine_flags, add_proposal_flags, execution_from_args, proposal_spec_from_args

#: The exit status when some images failed (their reasons are printed).
SOME_FAILED = 3


def cmd_proposals(args: argparse.Namespace) -> int:
    from ..backbones import resolve_device
    from ..errors import ZsrisError
    from ..jobs.proposals import ProposalsJob, image_tasks, split_tasks
    from ..jobs.run import writable_folder
    from ..proposals import create_proposals
    from ..proposals.registry import check_class_agnostic

    if bool(args.inputs) == bool(args.data):
        raise ZsrisError("give images or folders, or --data with --dataset and --split, not both")
    if args.proposals == "file":
        raise ZsrisError("--proposals file reads proposals; choose the generator that makes them")
    if args.data:
        from ..jobs.evaluation import DataSpec

        dataset = DataSpec(args.data, args.dataset, split_by_from_args(args), args.images).open()
        tasks, exif = split_tasks(dataset, args.split, args.limit), False
    else:
        tasks, exif = image_tasks([Path(p) for p in args.inputs]), True
    writable_folder(Path(args.output).parent)
    check_class_agnostic(args.proposals, "zsris proposals")
    generator = create_proposals(proposal_spec_from_args(args), resolve_device(args.device))
    summary = ProposalsJob(generator, tasks, Path(args.output), execution_from_args(args), exif).run()
    print(f"{summary.images} images ({summary.resumed} from an earlier run): {summary.proposals} {args.proposals} "
          f"proposals, {summary.seconds_per_image:.2f} s an image; wrote {summary.out}")
    print(f"use them with: --proposals file --proposals-path {summary.out}")
    for name, reason in summary.failed.items():
        print(f"zsris: {name}: {reason}", file=sys.stderr)
    return SOME_FAILED if summary.failed else 0


def register(commands) -> None:
    proposals = commands.add_parser(
        "proposals", help="write a generator's proposals to a file for --proposals file (resumable)",
        description="Run a proposal generator once over images, folders or a dataset split and write its masks, "
                    "scores and boxes as COCO RLE JSON, which --proposals file --proposals-path FILE reads. "
                    "An interrupted run goes on from where it stopped when run again.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  zsris proposals photos/ --proposals freesolo -o freesolo.json\n"
               "  zsris proposals --data refer/data --dataset refcoco --split val --proposals freesolo "
               "-o refcoco-val-freesolo.json",
    )
    proposals.add_argument("inputs", nargs="*", metavar="IMAGE|FOLDER", help="images, or folders searched recursively")
    proposals.add_argument("-o", "--output", required=True, metavar="FILE", help="the proposals file to write")
    add_split_flags(proposals.add_argument_group("a dataset split instead of images"), required=False)
    add_engine_flags(proposals, model_stage=False)
    add_proposal_flags(proposals)
    proposals.set_defaults(run=cmd_proposals)
