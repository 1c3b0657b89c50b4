"""`zsris weights`: what would be loaded, from where, and whether it is here."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_BACKBONE, DEFAULT_PRETRAINED, WEIGHTS_ENV
from ..proposals import PROPOSAL_REGISTRY
from ..proposals.configs import CHECKPOINT_SOURCES, CheckpointSource


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


def _model(source: CheckpointSource, args: argparse.Namespace) -> str:
    """The size of ``source``'s model chosen by ``--NAME-model`` (``""`` for a model of one size)."""
    return getattr(args, f"{source.generator}_model") if len(source.where) > 1 else ""


def _checkpoint_lines(source: CheckpointSource, args: argparse.Namespace) -> tuple[list[str], bool]:
    """Where a generator's checkpoint is, as :func:`~zsris.checkpoints.find_checkpoint` finds it
    without going online: the flag, the environment variable, or the hub's copy in the Hugging
    Face cache; and whether it is there."""
    from huggingface_hub.constants import HF_HUB_CACHE

    from ..checkpoints import find_checkpoint

    model = _model(source, args)
    where = source.where[model]
    lines = [source.title.format(model=model),
             f"  Hugging Face repository: {where} ({source.note})" if source.hub else f"  release: {where}"]
    given = getattr(args, source.flag.lstrip("-").replace("-", "_"))
    found = find_checkpoint(source, given, model, online=False)
    if found is not None and found.path == "random":
        lines.append("  checkpoint: random (untrained)")
        return lines, True
    if found is None and not source.hub:
        lines.append(f"  checkpoint: not set: pass {source.flag} {source.metavar} or set ${source.env}")
        return lines, False
    if found is None:
        offline = (f"`hf download {where}` elsewhere and copy the cache, or pass {source.flag} FOLDER"
                   if source.folder else f"pass {source.flag} PATH")
        lines.append(f"  local copy: none in the Hugging Face cache ({HF_HUB_CACHE}); it is downloaded on first use "
                     f"when online. Offline: {offline} (or ${source.env})")
        return lines, False
    if found.origin == "cache":
        lines.append(f"  local copy: {found.path}: found")
        return lines, True
    path = Path(found.path).expanduser()
    present = (path / "config.json").is_file() if source.folder else path.is_file()
    missing = "MISSING (no config.json)" if source.folder else "MISSING"
    # SAM's line, its weights a released file rather than the hub's, has always named the path alone
    origin = f" (from {source.flag if found.origin == 'given' else '$' + source.env})" if source.hub else ""
    lines.append(f"  checkpoint: {found.path}{origin}: {'found' if present else missing}")
    return lines, present


def cmd_weights(args: argparse.Namespace) -> int:
    lines, ok = _clip_lines(args)
    present: dict[str, bool] = {}
    for source in CHECKPOINT_SOURCES:
        more, present[source.generator] = _checkpoint_lines(source, args)
        lines += more
    print("\n".join(lines))
    if args.load:
        from ..backbones import load_backbone

        backbone = load_backbone(args.backbone, args.pretrained, args.weights)
        count = sum(p.numel() for p in backbone.model.parameters())
        print(f"loaded CLIP {backbone.name} ({backbone.weights}): {count / 1e6:.1f} M parameters, "
              f"input {backbone.input_size} px")
        ok = True
    return 0 if ok and present.get(args.proposals, True) else 1


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
    for source in CHECKPOINT_SOURCES:
        if len(source.where) > 1:
            weights.add_argument(f"--{source.generator}-model", choices=tuple(source.where),
                                 default=PROPOSAL_REGISTRY[source.generator].options["model"],
                                 help="(default: %(default)s)")
        weights.add_argument(source.flag, default=None, metavar=source.metavar)
    weights.add_argument("--load", action="store_true", help="also load the CLIP weights and report their size")
    weights.set_defaults(run=cmd_weights)
