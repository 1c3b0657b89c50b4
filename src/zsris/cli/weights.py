"""`zsris weights`: what would be loaded, from where, and whether it is here."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

from ..config import (
    DEFAULT_BACKBONE,
    DEFAULT_PRETRAINED,
    FREESOLO_CHECKPOINT_ENV,
    FREESOLO_FILE,
    FREESOLO_HUB_REPO,
    SAM2_CHECKPOINT_ENV,
    SAM2_MODELS,
    SAM3_CHECKPOINT_ENV,
    SAM3_HUB_REPO,
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
    tokenizer_line, tokenizer_ok = _tokenizer_line(source.backbone, source.kind == RANDOM)
    return lines + tokenizer_line, source.available and tokenizer_ok


def _tokenizer_line(arch: str, random: bool) -> tuple[list[str], bool]:
    """Where a tokenizer kept on the hub (SigLIP's) is, for the architectures that have one."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    hub = ((open_clip.get_model_config(arch) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if not hub:
        return [], True
    found = try_to_load_from_cache(hub, "tokenizer_config.json")
    if isinstance(found, str):
        return [f"  tokenizer: {hub}: found ({Path(found).parent})"], True
    fallback = "random weights use a stand-in; " if random else ""
    return [f"  tokenizer: {hub}: not in the Hugging Face cache ({fallback}download it once with "
            f"`hf download {hub}`)"], random


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


def _sam2_lines(args: argparse.Namespace) -> tuple[list[str], bool]:
    return _transformers_lines(f"SAM 2.1 {args.sam2_model} (for --proposals sam2)", SAM2_MODELS[args.sam2_model],
                               "transformers format", args.sam2_checkpoint, "--sam2-checkpoint", SAM2_CHECKPOINT_ENV)


def _sam3_lines(args: argparse.Namespace) -> tuple[list[str], bool]:
    return _transformers_lines("SAM 3 (for --proposals sam3)", SAM3_HUB_REPO,
                               "gated: accept its licence there, then `hf auth login`", args.sam3_checkpoint,
                               "--sam3-checkpoint", SAM3_CHECKPOINT_ENV)


def _transformers_lines(title: str, hub: str, note: str, given: Optional[str], flag: str,
                        env: str) -> tuple[list[str], bool]:
    """Where a model in the transformers format (a folder with config.json) is: the flag, the
    environment variable, or the hub repository's copy in the Hugging Face cache."""
    lines = [title, f"  Hugging Face repository: {hub} ({note})"]
    checkpoint = given or os.environ.get(env)
    if checkpoint == "random":
        lines.append("  checkpoint: random (untrained)")
        return lines, True
    if checkpoint:
        found = (Path(checkpoint).expanduser() / "config.json").is_file()
        origin = flag if given else f"${env}"
        lines.append(f"  checkpoint: {checkpoint} (from {origin}): {'found' if found else 'MISSING (no config.json)'}")
        return lines, found
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    cached = try_to_load_from_cache(hub, "config.json")
    if isinstance(cached, str):
        lines.append(f"  local copy: {Path(cached).parent}: found")
        return lines, True
    lines.append(f"  local copy: none in the Hugging Face cache ({HF_HUB_CACHE}); it is downloaded on first use "
                 f"when online. Offline: `hf download {hub}` elsewhere and copy the cache, or pass {flag} FOLDER "
                 f"(or ${env})")
    return lines, False


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
    sam2_lines, sam2_ok = _sam2_lines(args)
    sam3_lines, sam3_ok = _sam3_lines(args)
    freesolo_lines, freesolo_ok = _freesolo_lines(args)
    print("\n".join(lines + sam_lines + sam2_lines + sam3_lines + freesolo_lines))
    if args.load:
        from ..backbones import load_backbone

        backbone = load_backbone(args.backbone, args.pretrained, args.weights)
        count = sum(p.numel() for p in backbone.model.parameters())
        print(f"loaded CLIP {backbone.name} ({backbone.weights}): {count / 1e6:.1f} M parameters, "
              f"input {backbone.input_size} px")
        ok = True
    needed = {"sam": sam_ok, "sam2": sam2_ok, "sam3": sam3_ok, "freesolo": freesolo_ok}.get(args.proposals, True)
    return 0 if ok and needed else 1


def register(commands) -> None:
    weights = commands.add_parser(
        "weights", help="show which weights would be loaded, from where, and whether they are here",
        description="Resolve the CLIP weights (--weights, then $ZSRIS_CLIP_WEIGHTS, then the pretrained tag in "
                    "the Hugging Face cache) and the SAM, SAM 2.1 and FreeSOLO checkpoints, without loading them "
                    "(unless --load). "
                    "Exits 1 when what the given flags need is missing.",
    )
    weights.add_argument("--backbone", default=DEFAULT_BACKBONE, help="(default: %(default)s)")
    weights.add_argument("--pretrained", default=DEFAULT_PRETRAINED, help="(default: %(default)s)")
    weights.add_argument("--weights", default=None, metavar="PATH|random")
    weights.add_argument("--proposals", choices=tuple(PROPOSAL_REGISTRY), default="classical",
                         help="with 'sam', 'sam2', 'sam3' or 'freesolo', its missing checkpoint also makes the exit "
                              "status 1")
    weights.add_argument("--sam-model", choices=SAM_MODEL_TYPES, default="vit_h", help="(default: %(default)s)")
    weights.add_argument("--sam-checkpoint", default=None, metavar="PATH")
    weights.add_argument("--sam2-model", choices=tuple(SAM2_MODELS), default="tiny", help="(default: %(default)s)")
    weights.add_argument("--sam2-checkpoint", default=None, metavar="FOLDER")
    weights.add_argument("--sam3-checkpoint", default=None, metavar="FOLDER")
    weights.add_argument("--freesolo-checkpoint", default=None, metavar="PATH")
    weights.add_argument("--load", action="store_true", help="also load the CLIP weights and report their size")
    weights.set_defaults(run=cmd_weights)
