"""Flags shared by the subcommands, and the one place where flags become a SegmenterConfig.

Nothing here imports torch: ``zsris --help`` and argument errors answer at once; the models
load only when a command runs.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional

from ..config import (DEFAULT_BACKBONE, DEFAULT_MULTI_TARGET_MARGIN, DEFAULT_MAX_PIXELS, DEFAULT_PRETRAINED, FUSIONS, PRECISIONS, PREPROCESSING,
                      PROPOSAL_GENERATORS, SAM_CHECKPOINT_ENV, SAM_MODEL_TYPES, SPATIAL_MODES, WEIGHTS_ENV, ProposalSpec,
                      SegmenterConfig, paper_alpha)

EPILOG = f"""\
weights: no pretrained weights ship with zsris. The default loads OpenAI's ViT-B/32 from the
Hugging Face cache (downloading it when online). Offline, point --weights or ${WEIGHTS_ENV}
at a local checkpoint; --weights random builds the real architecture untrained (for tests
and timing only: its masks mean nothing). `zsris weights` shows what would be loaded.
"""


def _whole_number(text: str, minimum: int, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a count of at least 1 (zero and negatives are refused, not read as "all")."""
    return _whole_number(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    """argparse type: a count of 0 or more (0 meaning "none of these", where a flag says so)."""
    return _whole_number(text, 0, "0 or more")


def proposal_cap(text: str) -> Optional[int]:
    """argparse type of --max-proposals: a positive count, or ``all`` to lift the cap explicitly."""
    if text.strip().lower() == "all":
        return None
    return positive_int(text)


def add_proposal_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the proposal generator alone (and the device SAM runs on): all `proposals-eval` takes."""
    props = parser.add_argument_group("proposals")
    props.add_argument("--proposals", choices=PROPOSAL_GENERATORS, default="classical",
                       help="mask proposal generator (default: classical, needs no weights)")
    props.add_argument("--max-proposals", type=proposal_cap, default=100, metavar="N|all",
                       help="cap on proposals per image (default: %(default)s). Fewer is faster (the visual "
                            "step is linear in N) but may drop the object; 'all' keeps every proposal "
                            "(classical: about 5x the visual time)")
    props.add_argument("--sam-checkpoint", default=None, metavar="PATH",
                       help=f"SAM checkpoint for --proposals sam (default ${SAM_CHECKPOINT_ENV}; 'random' for tests)")
    props.add_argument("--sam-model", choices=SAM_MODEL_TYPES, default="vit_h", help="(default: %(default)s)")
    props.add_argument("--proposals-path", default=None, metavar="PATH",
                       help="for --proposals file: COCO RLE JSON or a folder of PNG masks")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... for CLIP and SAM (default: auto)")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag that a SegmenterConfig is made of."""
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default=DEFAULT_BACKBONE,
                       help="CLIP architecture in open_clip's names: ViT-B/32 (paper), RN50, ViT-B/16 ... "
                            "(default: %(default)s)")
    model.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                       help="open_clip pretrained tag (default: %(default)s)")
    model.add_argument("--weights", default=None, metavar="PATH|random",
                       help=f"local CLIP checkpoint (OpenAI .pt, state dict, open_clip .bin/.safetensors), or "
                            f"'random'; default ${WEIGHTS_ENV}, then the pretrained tag")
    model.add_argument("--alpha", type=float, default=None,
                       help="weight of the global-context visual feature (default: the paper's, 0.85 when "
                            "evaluating RefCOCOg, else 0.95)")
    model.add_argument("--beta", type=float, default=0.5, help="weight of the whole sentence vs its noun phrase")
    model.add_argument("-k", "--k", type=int, default=3, dest="k",
                       help="ViT blocks that see the mask (default: %(default)s)")
    model.add_argument("--fusion", choices=FUSIONS, default="reference",
                       help="fuse raw features as the authors' code (default) or L2-normalise each part first")
    model.add_argument("--preprocess", choices=PREPROCESSING, default="reference",
                       help="pixel statistics: the authors' (ImageNet) or CLIP's own")
    model.add_argument("--spacy-model", default=None, metavar="NAME|DIR",
                       help="English spaCy pipeline for the target noun phrase (default: $ZSRIS_SPACY_MODEL, else "
                            "the most accurate installed of en_core_web_trf, _lg (the paper's), _md, _sm)")
    model.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="CUDA only: strict fp32 (default, for fidelity), tf32, or bf16/fp16 weights (faster)")
    model.add_argument("--spatial", choices=SPATIAL_MODES, default="off",
                       help="'on': the target's position, order and size words (left, second from the right, "
                            "biggest ...) choose among the noun phrase's candidates; beyond the paper, so off by "
                            "default (see zsris.spatial)")
    absent = parser.add_argument_group("absent and multiple objects (beyond the paper; off by default)")
    absent.add_argument("--no-target-threshold", type=float, default=None, metavar="T",
                        help="answer 'no such object' (an empty mask, found: false) when the best fused score "
                             "is below T, a cosine similarity in [-1, 1] (default: always answer)")
    absent.add_argument("--multi-target", action="store_true",
                        help="answer with the union of the proposals scoring within --multi-target-margin of the "
                             "best, for expressions such as 'all the zebras'")
    absent.add_argument("--multi-target-margin", type=float, default=DEFAULT_MULTI_TARGET_MARGIN, metavar="M",
                        help="(default: %(default)s)")
    absent.add_argument("--calibration", default=None, metavar="FILE",
                        help="a file written by `zsris calibrate`: its threshold (with --multi-target, the threshold and margin "
                             "chosen together) replaces the flags above")
    model.add_argument("--batch-size", type=positive_int, default=64,
                       help="proposals per forward pass (default: %(default)s)")
    add_proposal_flags(parser)
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse larger images (default: %(default)s)")


def add_engine_flags(parser: argparse.ArgumentParser, model_stage: bool = True) -> None:
    """How the work is spread: proposal worker processes ahead of the model stage and, where
    there is a ``model_stage`` (eval, calibrate and batch; not proposals-eval), the images per
    CLIP pass and the choice of Ray and its workers."""
    engine = parser.add_argument_group("engine")
    engine.add_argument("--proposal-workers", type=non_negative_int, default=None, metavar="N",
                        help="processes that decode images and make proposals ahead of the model stage "
                             "(default: cores minus one; 0: all in one process)")
    if model_stage:
        engine.add_argument("--images-per-pass", type=positive_int, default=None, metavar="N",
                            help="images whose proposals go through CLIP together, in consecutive groups "
                                 "(default: 4 on CUDA, 1 on the CPU; results equal up to float rounding)")
        engine.add_argument("--engine", choices=("local", "ray"), default="local",
                            help="'ray' spreads images over Ray workers (needs the 'ray' extra)")
        engine.add_argument("--workers", type=positive_int, default=2, help="Ray workers (default: %(default)s)")
        engine.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")


def proposal_workers(args: argparse.Namespace) -> int:
    """--proposal-workers, or its default: cores minus one."""
    from ..engine import default_workers

    return default_workers() if args.proposal_workers is None else args.proposal_workers


def proposal_spec_from_args(args: argparse.Namespace) -> ProposalSpec:
    return ProposalSpec(name=args.proposals, max_proposals=args.max_proposals, sam_checkpoint=args.sam_checkpoint,
                        sam_model=args.sam_model, path=args.proposals_path)


def config_from_args(args: argparse.Namespace) -> SegmenterConfig:
    """The only place where flags become settings. Alpha defaults to the paper's for the
    dataset being evaluated (``--dataset``), else the paper's RefCOCO value."""
    alpha = args.alpha if args.alpha is not None else paper_alpha(getattr(args, "dataset", None))
    threshold, margin = args.no_target_threshold, args.multi_target_margin
    if args.calibration:
        from ..calibration import read_calibration

        calibration = read_calibration(args.calibration)
        threshold = calibration.no_target_threshold
        if args.multi_target and calibration.multi_target_margin is not None:  # the pair chosen together
            threshold, margin = calibration.multi_target_threshold, calibration.multi_target_margin
    return SegmenterConfig(
        backbone=args.backbone, pretrained=args.pretrained, weights=args.weights, alpha=alpha, beta=args.beta,
        k=args.k, fusion=args.fusion, preprocess=args.preprocess, proposals=proposal_spec_from_args(args),
        spacy_model=args.spacy_model, precision=args.precision, spatial=args.spatial, no_target_threshold=threshold,
        multi_target=args.multi_target, multi_target_margin=margin, device=args.device, batch_size=args.batch_size, max_pixels=args.max_pixels,
        images_per_pass=getattr(args, "images_per_pass", None),
    )


def announce_random(segmenter) -> None:
    """Untrained CLIP gives meaningless masks: say so loudly, every run."""
    from ..segmenter import RANDOM_WEIGHTS_WARNING

    if segmenter.backbone.is_random:
        print(f"{'!' * 78}\n{RANDOM_WEIGHTS_WARNING}\n{'!' * 78}", file=sys.stderr)


def build_segmenter(config: SegmenterConfig, announce: bool = True):
    """Load the models once; the random-weights warning is said by :func:`announce_random` instead."""
    from ..segmenter import create_segmenter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zsris: CLIP has RANDOM")
        segmenter = create_segmenter(config)
    if announce:
        announce_random(segmenter)
    return segmenter
