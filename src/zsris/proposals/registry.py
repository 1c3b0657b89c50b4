"""The registry of proposal generators and the spec that names one: plain data, no torch.

:data:`PROPOSAL_REGISTRY` maps a generator's name to where its factory lives
(``"module:function"``, imported only when that generator is built) and its own settings with
their defaults. It is the one list of generators: the command line offers its names, and a
registered generator can be rebuilt from its spec in the engine's worker processes.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from ..errors import ZsrisError
from .base import ProposalGenerator, check_max_proposals

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ProposalSpec:
    """Which proposal generator to build and its settings.

    ``name`` is a key of :data:`zsris.proposals.PROPOSAL_REGISTRY`; ``max_proposals`` caps the
    proposals per image (None: no cap); ``options`` are the generator's own settings, as its
    registry entry names them (``sam``: ``checkpoint``, ``model``; ``sam2``: those,
    ``points_per_side`` and its two thresholds; ``freesolo``: ``freesolo_checkpoint``; ``file``: ``path``), so a new
    generator needs no new field here. A spec inside a :class:`SegmenterConfig` has every
    option of its generator spelled out (:func:`zsris.proposals.canonical_spec`).
    """

    name: str = "classical"
    max_proposals: Optional[int] = 100
    options: dict[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        """One of the generator's own settings (None where the spec leaves it out)."""
        return self.options.get(name)


@dataclass(frozen=True)
class GeneratorEntry:
    """A registered generator. ``factory`` is ``"module:function"`` (or the function itself),
    called with the spec and the device; ``options`` are the generator's own settings and their
    defaults (a spec may set only these); ``in_model_process``: the generator is a model on the
    device (SAM), so it runs in the process that runs CLIP, never in CPU worker processes."""

    factory: str | Callable[[ProposalSpec, "torch.device"], ProposalGenerator]
    options: Mapping[str, Any] = field(default_factory=dict)
    in_model_process: bool = False
    summary: str = ""
    prompted: bool = False  # its proposals depend on the expressions (SAM 3): no class-agnostic file of them

    def load(self) -> Callable[[ProposalSpec, "torch.device"], ProposalGenerator]:
        if callable(self.factory):
            return self.factory
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)


PROPOSAL_REGISTRY: dict[str, GeneratorEntry] = {
    "classical": GeneratorEntry("zsris.proposals.classical:from_spec", summary="needs no weights"),
    "sam": GeneratorEntry("zsris.proposals.sam:from_spec", {"checkpoint": None, "model": "vit_h"},
                          in_model_process=True, summary="SAM's automatic mask generator"),
    "sam2": GeneratorEntry("zsris.proposals.sam2:from_spec",
                           {"checkpoint": None, "model": "tiny", "points_per_side": 32, "pred_iou_thresh": 0.8,
                            "stability_score_thresh": 0.95},
                           in_model_process=True, summary="SAM 2.1's automatic mask generator (transformers)"),
    "sam3": GeneratorEntry("zsris.proposals.sam3:from_spec",
                           {"checkpoint": None, "with_classical": False, "presence_threshold": 0.5,
                            "score_threshold": 0.3},
                           in_model_process=True, summary="SAM 3's instances of each expression's noun phrase",
                           prompted=True),
    "freesolo": GeneratorEntry("zsris.proposals.freesolo:from_spec", {"freesolo_checkpoint": None},
                               in_model_process=True, summary="FreeSOLO, the paper's proposals (ResNet-101 SOLOv2)"),
    "file": GeneratorEntry("zsris.proposals.file:from_spec", {"path": None},
                           summary="precomputed masks: COCO RLE JSON or PNG folders"),
}


def register_generator(name: str, factory: str | Callable[[ProposalSpec, "torch.device"], ProposalGenerator],
                       options: Optional[Mapping[str, Any]] = None, in_model_process: bool = False,
                       summary: str = "") -> None:
    """Make a generator known by ``name`` to :func:`create_proposals` and every command."""
    PROPOSAL_REGISTRY[name] = GeneratorEntry(factory, dict(options or {}), in_model_process, summary)


def check_class_agnostic(name: str, command: str) -> None:
    """Refuse a prompted generator where proposals are made for images alone (``zsris proposals``,
    ``proposals-eval``): its proposals exist only for an image's expressions."""
    if generator_entry(name).prompted:
        raise ZsrisError(f"{command} makes proposals for images alone, and the {name} generator's depend on each "
                         f"expression; use it with zsris segment, batch or eval")


def generator_entry(name: str) -> GeneratorEntry:
    entry = PROPOSAL_REGISTRY.get(name)
    if entry is None:
        raise ZsrisError(f"unknown proposal generator {name!r}; choose one of {', '.join(PROPOSAL_REGISTRY)}")
    return entry


def canonical_spec(spec: str | ProposalSpec, **changes: Any) -> ProposalSpec:
    """``spec`` (or a name) with ``changes`` (``max_proposals`` or the generator's own options)
    and every option of the generator spelled out with its default, so that two specs that
    build the same generator are equal. An option the generator does not have is refused."""
    if isinstance(spec, str):
        spec = ProposalSpec(name=spec)
    entry = generator_entry(spec.name)
    options = {**spec.options, **{k: changes.pop(k) for k in list(changes) if k in entry.options}}
    unknown = sorted((changes.keys() - {"max_proposals"}) | (options.keys() - entry.options.keys()))
    if unknown:
        raise ZsrisError(f"the {spec.name} generator has no setting {', '.join(unknown)} (it has max_proposals"
                         f"{''.join(', ' + k for k in entry.options)})")
    spec = dataclasses.replace(spec, options={**entry.options, **options}, **changes)
    check_max_proposals(spec.max_proposals)
    return spec


def runs_in_model_process(generator: ProposalGenerator) -> bool:
    """Whether ``generator`` must run where CLIP runs rather than be rebuilt in worker processes:
    a model on the device (SAM), or a generator without a registered spec to rebuild it from."""
    spec = getattr(generator, "spec", None)
    return spec is None or spec.name not in PROPOSAL_REGISTRY or PROPOSAL_REGISTRY[spec.name].in_model_process
