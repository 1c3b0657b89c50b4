"""The `zsris` command line: segment, eval, proposals-eval, serve."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from .backbones import DEFAULT_BACKBONE, DEFAULT_PRETRAINED, WEIGHTS_ENV
from .errors import ZsrisError
from .images import DEFAULT_MAX_PIXELS
from .proposals import GENERATORS
from .proposals.sam import SAM_CHECKPOINT_ENV, SAM_MODEL_TYPES

EPILOG = f"""\
weights: no pretrained weights ship with zsris. The default loads OpenAI's ViT-B/32 from the
Hugging Face cache (downloading it when online). Offline, point --weights or ${WEIGHTS_ENV}
at a local checkpoint; --weights random builds the real architecture untrained (for tests
and timing only: its masks mean nothing).
"""


def positive_int(text: str) -> int:
    """argparse type: a count of at least 1 (zero and negatives are refused, not read as "all")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def proposal_cap(text: str) -> Optional[int]:
    """argparse type of --max-proposals: a positive count, or ``all`` to lift the cap explicitly."""
    if text.strip().lower() == "all":
        return None
    return positive_int(text)


def add_proposal_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the proposal generator alone (and the device SAM runs on): all `proposals-eval` takes."""
    props = parser.add_argument_group("proposals")
    props.add_argument("--proposals", choices=GENERATORS, default="classical",
                       help="mask proposal generator (default: classical, needs no weights)")
    props.add_argument("--max-proposals", type=proposal_cap, default=100, metavar="N|all",
                       help="cap on proposals per image (default: %(default)s); 'all' keeps every proposal "
                            "(classical: about 5x the visual time)")
    props.add_argument("--sam-checkpoint", default=None, metavar="PATH",
                       help=f"SAM checkpoint for --proposals sam (default ${SAM_CHECKPOINT_ENV}; 'random' for tests)")
    props.add_argument("--sam-model", choices=SAM_MODEL_TYPES, default="vit_h")
    props.add_argument("--proposals-path", default=None, metavar="PATH",
                       help="for --proposals file: COCO RLE JSON or a folder of PNG masks")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... for CLIP and SAM (default: auto)")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
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
    model.add_argument("--fusion", choices=("reference", "normalized"), default="reference",
                       help="fuse raw features as the authors' code (default) or L2-normalise each part first")
    model.add_argument("--preprocess", choices=("reference", "clip"), default="reference",
                       help="pixel statistics: the authors' (ImageNet) or CLIP's own")
    model.add_argument("--batch-size", type=positive_int, default=64,
                       help="proposals per forward pass (default: %(default)s)")
    add_proposal_flags(parser)
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse larger images (default: %(default)s)")


def announce_random(segmenter) -> None:
    """Untrained CLIP gives meaningless masks: say so loudly, every run."""
    from .segmenter import RANDOM_WEIGHTS_WARNING

    if segmenter.backbone.is_random:
        print(f"{'!' * 78}\n{RANDOM_WEIGHTS_WARNING}\n{'!' * 78}", file=sys.stderr)


def default_alpha(args: argparse.Namespace) -> float:
    """The paper's alpha: 0.85 on RefCOCOg's longer expressions, 0.95 elsewhere, unless given."""
    if args.alpha is not None:
        return args.alpha
    return 0.85 if getattr(args, "dataset", None) == "refcocog" else 0.95


def build_segmenter(args: argparse.Namespace, announce: bool = True):
    from .segmenter import create_segmenter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zsris: CLIP has RANDOM")
        segmenter = create_segmenter(
            backbone=args.backbone, pretrained=args.pretrained, weights=args.weights, proposals=args.proposals,
            device=args.device, max_proposals=args.max_proposals, sam_checkpoint=args.sam_checkpoint,
            sam_model=args.sam_model, proposals_path=args.proposals_path, alpha=default_alpha(args), beta=args.beta,
            k=args.k, fusion=args.fusion, preprocess=args.preprocess, batch_size=args.batch_size,
            max_pixels=args.max_pixels,
        )
    if announce:
        announce_random(segmenter)
    return segmenter


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "expression"


def cmd_segment(args: argparse.Namespace) -> int:
    from .images import load_image
    from .records import result_record, settings
    from .render import mask_image, overlay

    image = load_image(args.image, args.max_pixels)
    segmenter = build_segmenter(args)
    segmenter.top_k = args.top_k
    results = segmenter.segment_many(image, args.expressions, image_id=Path(args.image).name)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    for number, result in enumerate(results):
        base = out / f"{stem}-{number:02d}-{_slug(result.expression)}"
        mask_image(result.mask).save(f"{base}.mask.png")
        overlay(image, result.mask, result.box, result.expression).save(f"{base}.overlay.png")
        record = {**result_record(result, str(args.image)), "settings": settings(segmenter)}
        Path(f"{base}.json").write_text(json.dumps(record, indent=2))
        print(f"{result.expression!r} -> score {result.score:.4f}, box {list(result.box)}, "
              f"noun phrase {result.noun_phrase!r}: {base}.{{mask.png,overlay.png,json}}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsris",
        description="Zero-shot referring image segmentation with global-local CLIP features.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    segment = commands.add_parser(
        "segment", help="segment the object an expression refers to",
        description="Write, per expression, the mask PNG, an overlay PNG and a JSON record.",
        epilog=EPILOG + '\nexample:\n  zsris segment photo.jpg "the man on the left" "the red car" -o out/',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    segment.add_argument("image", help="image file (JPEG, PNG, ...)")
    segment.add_argument("expressions", nargs="+", metavar="EXPRESSION", help="referring expression(s)")
    segment.add_argument("-o", "--output", default="zsris-out", help="output folder (default: %(default)s)")
    segment.add_argument("--top-k", type=positive_int, default=5,
                         help="ranked proposals kept in the JSON record (default: %(default)s)")
    _add_model_flags(segment)
    segment.set_defaults(run=cmd_segment)

    for register in _extra_commands():
        register(commands, _add_model_flags)
    return parser


def _extra_commands():
    """Subcommands that live in their own modules (evaluation, service), registered if present."""
    registrars = []
    for module_name in ("zsris.evaluation_cli", "zsris.service"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ImportError:
            continue
        registrars.append(module.register)
    return registrars


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message)
    print(text if text.startswith("zsris:") else f"zsris: warning: {text}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    warnings.showwarning = _one_line_warnings
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.run(args)
    except ZsrisError as error:
        print(f"zsris: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # an output folder that cannot be written, a full disk ...
        print(f"zsris: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zsris: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
