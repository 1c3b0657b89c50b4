"""Class-agnostic mask proposals behind one interface, and a registry that builds them from a spec.

Like segment-anything's ``sam_model_registry``: :data:`PROPOSAL_REGISTRY` maps a generator's
name to where its factory lives (``"module:function"``, imported only when that generator is
built) and its config class, whose fields are its own settings with their defaults
(:mod:`zsris.proposals.configs`). It is the one list of generators: the command
line offers its names, and a generator registered with :func:`register_generator` can be chosen
by every command and rebuilt in the engine's worker processes from its spec.

Importing this package loads neither torch nor any generator: the engine, the cache and the
job layer get :class:`Proposals` and the registry without paying for scikit-image or SAM.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..types import Proposals
from .base import Candidates, Prompting, ProposalGenerator, check_max_proposals, config_key, is_prompted, prompting
from .configs import ClassicalConfig, FileConfig, FreeSoloConfig, Sam2Config, Sam3Config, SamConfig
from .registry import (
    PROPOSAL_REGISTRY,
    GeneratorEntry,
    ProposalSpec,
    canonical_spec,
    config_of,
    generator_entry,
    register_generator,
    runs_in_model_process,
    spec_of,
)

if TYPE_CHECKING:
    import torch


def create_proposals(spec: str | ProposalSpec = "classical", device: "str | torch.device" = "cpu",
                     **changes: Any) -> ProposalGenerator:
    """Build the generator a spec (or a name plus settings as keywords) describes:
    ``create_proposals("classical", max_proposals=50)``, ``create_proposals("file", path="masks.json")``.
    ``max_proposals=None`` lifts the cap; zero or less is refused. A generator's ``spec`` is
    its own config's (the built-in ones: :func:`spec_of`); one built under another name than its
    own, or without a spec, is given the spec it was built from."""
    import torch

    spec = canonical_spec(spec, **changes)
    generator = generator_entry(spec.name).load()(spec, torch.device(device) if isinstance(device, str) else device)
    own = getattr(generator, "spec", None)
    if own is None:
        generator.spec = spec
    elif own.name != spec.name:  # a factory registered under another name: that entry's spec rebuilds it
        generator.registered = spec
    return generator


#: Names imported on first use: the generators need scikit-image, SciPy or torch.
_LAZY = {"ClassicalProposals": "classical", "FileProposals": "file", "SamProposals": "sam",
         "Sam2Proposals": "sam2", "Sam3Proposals": "sam3", "FreeSoloProposals": "freesolo"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zsris.proposals' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "ClassicalConfig", "ClassicalProposals", "FileConfig", "FileProposals", "FreeSoloConfig", "FreeSoloProposals",
    "GeneratorEntry", "PROPOSAL_REGISTRY",
    "ProposalGenerator", "ProposalSpec", "Proposals", "Sam2Config", "Sam2Proposals", "Sam3Config", "Sam3Proposals",
    "SamConfig", "SamProposals",
    "canonical_spec",
    "Candidates", "Prompting", "check_max_proposals", "config_key", "is_prompted", "prompting", "create_proposals",
    "config_of", "generator_entry", "register_generator",
    "runs_in_model_process", "spec_of",
]
