"""Class-agnostic mask proposals behind one interface, and a registry that builds them from a spec.

Like segment-anything's ``sam_model_registry``: :data:`PROPOSAL_REGISTRY` maps a generator's
name to where its factory lives (``"module:function"``, imported only when that generator is
built) and its own settings with their defaults. It is the one list of generators: the command
line offers its names, and a generator registered with :func:`register_generator` can be chosen
by every command and rebuilt in the engine's worker processes from its spec.

Importing this package loads neither torch nor any generator: the engine, the cache and the
job layer get :class:`Proposals` and the registry without paying for scikit-image or SAM.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..types import Proposals
from .base import ProposalGenerator, check_max_proposals, config_key, is_prompted
from .registry import (
    PROPOSAL_REGISTRY,
    GeneratorEntry,
    ProposalSpec,
    canonical_spec,
    generator_entry,
    register_generator,
    runs_in_model_process,
)

if TYPE_CHECKING:
    import torch


def create_proposals(spec: str | ProposalSpec = "classical", device: "str | torch.device" = "cpu",
                     **changes: Any) -> ProposalGenerator:
    """Build the generator a spec (or a name plus settings as keywords) describes:
    ``create_proposals("classical", max_proposals=50)``, ``create_proposals("file", path="masks.json")``.
    ``max_proposals=None`` lifts the cap; zero or less is refused. The generator keeps the
    spec it was built from (``generator.spec``)."""
    import torch

    spec = canonical_spec(spec, **changes)
    generator = generator_entry(spec.name).load()(spec, torch.device(device) if isinstance(device, str) else device)
    generator.spec = spec
    return generator


#: Names imported on first use: the generators need scikit-image, SciPy or torch.
_LAZY = {"ClassicalConfig": "classical", "ClassicalProposals": "classical", "FileProposals": "file",
         "SamConfig": "sam", "SamProposals": "sam", "Sam2Config": "sam2", "Sam2Proposals": "sam2",
         "Sam3Config": "sam3", "Sam3Proposals": "sam3",
         "FreeSoloConfig": "freesolo", "FreeSoloProposals": "freesolo"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zsris.proposals' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "ClassicalConfig", "ClassicalProposals", "FileProposals", "FreeSoloConfig", "FreeSoloProposals",
    "GeneratorEntry", "PROPOSAL_REGISTRY",
    "ProposalGenerator", "ProposalSpec", "Proposals", "Sam2Config", "Sam2Proposals", "Sam3Config", "Sam3Proposals",
    "SamConfig", "SamProposals",
    "canonical_spec",
    "check_max_proposals", "config_key", "is_prompted", "create_proposals", "generator_entry", "register_generator",
    "runs_in_model_process",
]
