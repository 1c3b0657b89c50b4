"""`zsris weights`: what would be loaded, from where, and whether it is here."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import (
    DEFAULT_BACKBONE,
    DEFAULT_PRETRAINED,
    FREESOLO_CHECKPOINT_ENV,
    FREESOLO_FILE,
    FREESOLO_HUB_REPO,
    SAM_CHECKPOINT_ENV,
    SAM_CHECKPOINTS,
    SAM_MODEL_TYPES,
    SAM_RELEASE_URL,
    WEIGHTS_ENV,
)
from ..proposals import PROPOSAL_REGISTRY


def _clip_lines(args: argparse.Namespace) -> tuple[list[str], bool]:
    from huggingface_hub.constants import HF_HUB_CACHE

    from ..backbones import HF, HF_WEIGHT_FILES, RANDOM, weights_source

    source = weights_source(args.backbone, args.pretrained, args.weights)
    lines = [f"CLIP {source.backbone}"]
    if source.kind == RANDOM:
        lines.append("  weights: random (untrained, for tests and timing: its masks mean nothing)")
    elif source.kind == HF:
        state = f"{source.path}: found" if source.available else (
            "MISSING: download it once with `hf download " + source.tag + "` (or give a folder: hf:/path)")
        kind = "Hugging Face repository" if source.hub else "folder"
        lines.append(f"  transformers CLIP ({kind}): {source.tag}; config {state}")
    elif source.kind == "path":
        origin = "--weights" if args.weights else f"${WEIGHTS_ENV}"
        state = "found" if source.available else "MISSING"
        lines.append(f"  weights: {source.path} (from {origin}): {state}")
    else:
        lines.append(f"  pretrained tag: {source.tag} (--pretrained)")
        if source.hub:
            lines.append(f"  Hugging Face repository: {source.hub} (file {' or '.join(HF_WEIGHT_FILES)})")
        if source.url:
            lines.append(f"  original release: {source.url}")
        if source.available:
            lines.append(f"  local copy: {source.path}: found")
        else:
            lines.append(f"  local copy: none in the Hugging Face cache ({HF_HUB_CACHE}) or ~/.cache/clip; it is "
                         f"downloaded on first use when online. Offline: copy the file there, or pass "
                         f"--weights PATH (or ${WEIGHTS_ENV})")
    return lines, source.available


def _sam_lines(args: argparse.Namespace) -> tuple[list[str], bool]:
    file_name = SAM_CHECKPOINTS[args.sam_model]
    lines = [f"SAM {args.sam_model} (for --proposals sam)", f"  release: {SAM_RELEASE_URL}{file_name}"]
    checkpoint = args.sam_checkpoint or os.environ.get(SAM_CHECKPOINT_ENV)
    if checkpoint == "random":
        lines.append("  checkpoint: random (untrained)")
        return lines, True
    if not checkpoint:
        lines.append(f"  checkpoint: not set: pass --sam-checkpoint PATH or set ${SAM_CHECKPOINT_ENV}")
        return lines, False
    found = Path(checkpoint).expanduser().is_file()
    lines.append(f"  checkpoint: {checkpoint}: {'found' if found else 'MISSING'}")
    return lines, found


def _freesolo_lines(args: argparse.Namespace) -> tuple[list[str], bool]:
    lines = ["FreeSOLO R101 (for --proposals freesolo, the paper's proposals)",
             f"  Hugging Face repository: {FREESOLO_HUB_REPO} (file {FREESOLO_FILE})"]
    checkpoint = args.freesolo_checkpoint or os.environ.get(FREESOLO_CHECKPOINT_ENV)
    if checkpoint == "random":
        lines.append("  checkpoint: random (untrained)")
        return lines, True
    if checkpoint:
        found = Path(checkpoint).expanduser().is_file()
        origin = "--freesolo-checkpoint" if args.freesolo_checkpoint else f"${FREESOLO_CHECKPOINT_ENV}"
        lines.append(f"  checkpoint: {checkpoint} (from {origin}): {'found' if found else 'MISSING'}")
        return lines, found
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    cached = try_to_load_from_cache(FREESOLO_HUB_REPO, FREESOLO_FILE)
    if isinstance(cached, str):
        lines.append(f"  local copy: {cached}: found")
        return lines, True
    lines.append(f"  local copy: none in the Hugging Face cache ({HF_HUB_CACHE}); it is downloaded on first use "
                 f"when online. Offline: pass --freesolo-checkpoint PATH (or ${FREESOLO_CHECKPOINT_ENV})")
    return lines, False


def cmd_weights(args: argparse.Namespace) -> int:
    lines, ok = _clip_lines(args)
    sam_lines, sam_ok = _sam_lines(args)
    freesolo_lines, freesolo_ok = _freesolo_lines(args)
    print("\n".join(lines + sam_lines + freesolo_lines))
    if args.load:
        from ..backbones import load_backbone

        backbone = load_backbone(args.backbone, args.pretrained, args.weights)
        count = sum(p.numel() for p in backbone.model.parameters())
        print(f"loaded CLIP {backbone.name} ({backbone.weights}): {count / 1e6:.1f} M parameters, "
              f"input {backbone.input_size} px")
        ok = True
    needed = {"sam": sam_ok, "freesolo": freesolo_ok}.get(args.proposals, True)
    return 0 if ok and needed else 1


def register(commands) -> None:
    weights = commands.add_parser(
        "weights", help="show which weights would be loaded, from where, and whether they are here",
        description="Resolve the CLIP weights (--weights, then $ZSRIS_CLIP_WEIGHTS, then the pretrained tag in "
                    "the Hugging Face cache) and the SAM and FreeSOLO checkpoints, without loading them "
                    "(unless --load). "
                    "Exits 1 when what the given flags need is missing.",
    )
    weights.add_argument("--backbone", default=DEFAULT_BACKBONE, help="(default: %(default)s)")
    weights.add_argument("--pretrained", default=DEFAULT_PRETRAINED, help="(default: %(default)s)")
    weights.add_argument("--weights", default=None, metavar="PATH|random")
    weights.add_argument("--proposals", choices=tuple(PROPOSAL_REGISTRY), default="classical",
                         help="with 'sam' or 'freesolo', its missing checkpoint also makes the exit status 1")
    weights.add_argument("--sam-model", choices=SAM_MODEL_TYPES, default="vit_h", help="(default: %(default)s)")
    weights.add_argument("--sam-checkpoint", default=None, metavar="PATH")
    weights.add_argument("--freesolo-checkpoint", default=None, metavar="PATH")
    weights.add_argument("--load", action="store_true", help="also load the CLIP weights and report their size")
    weights.set_defaults(run=cmd_weights)
