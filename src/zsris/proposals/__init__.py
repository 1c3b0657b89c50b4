"""Class-agnostic mask proposals behind one interface, and a registry that builds them from a spec.

Like segment-anything's ``sam_model_registry``: :data:`PROPOSAL_REGISTRY` maps a generator's
name to a builder taking a :class:`~zsris.config.ProposalSpec` and the device; a new
generator registers itself there and every command can use it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..config import ProposalSpec
from ..errors import ZsrisError
from .base import ProposalGenerator, Proposals, check_max_proposals, config_key
from .classical import ClassicalConfig, ClassicalProposals
from .file import FileProposals
from .sam import SamConfig, SamProposals


def _file(spec: ProposalSpec, device: torch.device) -> ProposalGenerator:
    if not spec.path:
        raise ZsrisError("--proposals file needs --proposals-path (a COCO RLE JSON or a folder of PNG masks)")
    return FileProposals(spec.path)


PROPOSAL_REGISTRY: dict[str, Callable[[ProposalSpec, torch.device], ProposalGenerator]] = {
    "classical": lambda spec, device: ClassicalProposals(max_proposals=spec.max_proposals),
    "sam": lambda spec, device: SamProposals(spec.sam_checkpoint, model_type=spec.sam_model,
                                             max_proposals=spec.max_proposals, device=device),
    "file": _file,
}


def create_proposals(spec: str | ProposalSpec = "classical", device: str | torch.device = "cpu",
                     **changes) -> ProposalGenerator:
    """Build the generator a spec (or a name plus spec fields as keywords) describes:
    ``create_proposals("classical", max_proposals=50)``. ``max_proposals=None`` lifts the cap;
    zero or less is refused."""
    if isinstance(spec, str):
        spec = ProposalSpec(name=spec)
    spec = dataclasses.replace(spec, **changes)
    check_max_proposals(spec.max_proposals)
    builder = PROPOSAL_REGISTRY.get(spec.name)
    if builder is None:
        raise ZsrisError(f"unknown proposal generator {spec.name!r}; choose one of {', '.join(PROPOSAL_REGISTRY)}")
    return builder(spec, torch.device(device) if isinstance(device, str) else device)


__all__ = [
    "ClassicalConfig", "ClassicalProposals", "FileProposals", "PROPOSAL_REGISTRY", "ProposalGenerator",
    "Proposals", "SamConfig", "SamProposals", "check_max_proposals", "config_key", "create_proposals",
]
