"""Class-agnostic mask proposals behind one interface, and a factory that builds them by name."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import ZsrisError
from .base import ProposalGenerator, Proposals, check_max_proposals
from .classical import ClassicalConfig, ClassicalProposals
from .file import FileProposals
from .sam import SamConfig, SamProposals

GENERATORS = ("classical", "sam", "file")


def create_proposals(
    name: str = "classical",
    max_proposals: Optional[int] = 100,
    sam_checkpoint: Optional[str] = None,
    sam_model: str = "vit_h",
    proposals_path: Optional[str] = None,
    device: str | torch.device = "cpu",
) -> ProposalGenerator:
    """Build a proposal generator by name: ``classical`` (default, no weights), ``sam`` or ``file``.

    ``max_proposals`` caps the proposals per image; None lifts the cap (zero or less is refused).
    """
    check_max_proposals(max_proposals)
    if name == "classical":
        return ClassicalProposals(max_proposals=max_proposals)
    if name == "sam":
        return SamProposals(sam_checkpoint, model_type=sam_model, max_proposals=max_proposals, device=device)
    if name == "file":
        if not proposals_path:
            raise ZsrisError("--proposals file needs --proposals-path (a COCO RLE JSON or a folder of PNG masks)")
        return FileProposals(proposals_path)
    raise ZsrisError(f"unknown proposal generator {name!r}; choose one of {', '.join(GENERATORS)}")


__all__ = [
    "ClassicalConfig", "ClassicalProposals", "FileProposals", "GENERATORS", "ProposalGenerator",
    "Proposals", "SamConfig", "SamProposals", "check_max_proposals", "create_proposals",
]
