"""The registry of proposal generators and the spec that names one: plain data, no torch.

:data:`PROPOSAL_REGISTRY` maps a generator's name to where its factory lives
(``"module:function"``, imported only when that generator is built) and its config class
(:mod:`zsris.proposals.configs`), whose fields are the generator's own settings with their
defaults. It is the one list of generators: the command line offers its names, and a
registered generator can be rebuilt from its spec in the engine's worker processes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, TypeVar

from ..errors import ZsrisError
from ..factories import add_plugins, load_factory, registry_entry
from .base import ProposalGenerator, check_max_proposals
from .configs import OPTION, ClassicalConfig, FileConfig, FreeSoloConfig, Sam2Config, Sam3Config, SamConfig

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ProposalSpec:
    """Which proposal generator to build and its settings.

    ``name`` is a key of :data:`zsris.proposals.PROPOSAL_REGISTRY`; ``max_proposals`` caps the
    proposals per image (None: no cap); ``options`` are the generator's own settings, as its
    registry entry names them: the fields of its config class (``sam``: ``checkpoint``, ``model``,
    ``points_per_side`` ...; ``freesolo``: ``freesolo_checkpoint`` ...; ``file``: ``path``), so a
    new generator needs no new field here. A spec inside a :class:`SegmenterConfig` has every
    option of its generator spelled out (:func:`zsris.proposals.canonical_spec`); a built
    generator's spec is its config's (:func:`spec_of`).
    """

    name: str = "classical"
    max_proposals: Optional[int] = 100
    options: dict[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        """One of the generator's own settings (None where the spec leaves it out)."""
        return self.options.get(name)


C = TypeVar("C")


def option_name(config_field: dataclasses.Field) -> str:
    """The option a config field is: its own name, unless its metadata names another."""
    return config_field.metadata.get(OPTION, config_field.name)


def _option_value(value: Any) -> Any:
    """A config field's value as an option: a tuple as a list, JSON's kind, so that a spec is
    equal to itself read back from a record or a run's stored settings."""
    return list(value) if isinstance(value, tuple) else value


def config_options(config: Any) -> dict[str, Any]:
    """A generator's options: every field of its config but ``max_proposals`` (the spec's own),
    with the values of a config, or the defaults of a config class."""
    return {option_name(f): _option_value(f.default if isinstance(config, type) else getattr(config, f.name))
            for f in dataclasses.fields(config) if f.name != "max_proposals"}


def spec_of(name: str, config: Any) -> ProposalSpec:
    """The spec of the generator ``name`` built with ``config``: its cap and every option, what it
    runs with. A generator's ``spec`` is this, so the settings a segmenter records from it and
    the cache key derived from the same config cannot disagree."""
    return ProposalSpec(name, config.max_proposals, config_options(config))


class Configured:
    """What a generator built from a config dataclass (``config``) shares: its ``spec`` is its
    config's (:func:`spec_of`), or, where a registry entry built it under a name other than its
    own ``name``, the spec of that entry it was built from (``registered``, set by
    :func:`zsris.proposals.create_proposals`), which that entry rebuilds in a worker."""

    name: str
    config: Any
    registered: Optional[ProposalSpec] = None
    #: The settings that filter its masks by the model's own quality scores: an untrained model
    #: (checkpoint ``random``) rarely passes them, so a segmenter that gets no masks names these.
    quality_options: tuple[str, ...] = ()

    @property
    def spec(self) -> ProposalSpec:
        """What a segmenter records of it, and what rebuilds it in a worker."""
        return self.registered or spec_of(self.name, self.config)


def config_of(config_class: type[C], spec: ProposalSpec) -> C:
    """The config a generator is built with from ``spec`` (its registry factory's work): the
    spec's cap and options, an option left out or None taking its default, a list where the
    default is a tuple made a tuple again. The registry has refused any other option
    (:func:`canonical_spec`)."""
    values: dict[str, Any] = {"max_proposals": spec.max_proposals}
    for config_field in dataclasses.fields(config_class):
        value = spec.options.get(option_name(config_field))
        if config_field.name != "max_proposals" and value is not None:
            as_tuple = isinstance(config_field.default, tuple) and isinstance(value, list)
            values[config_field.name] = tuple(value) if as_tuple else value
    return config_class(**values)


@dataclass(frozen=True)
class GeneratorEntry:
    """A registered generator. ``factory`` is ``"module:function"`` (or the function itself),
    called with the spec and the device; ``options`` are the generator's own settings and their
    defaults (a spec may set only these), derived from its ``config`` class where it has one
    (the built-in generators: :mod:`zsris.proposals.configs`); ``in_model_process``: the
    generator is a model on the device (SAM), so it runs in the process that runs CLIP, never in
    CPU worker processes."""

    factory: str | Callable[[ProposalSpec, "torch.device"], ProposalGenerator]
    options: Mapping[str, Any] = field(default_factory=dict)
    in_model_process: bool = False
    summary: str = ""
    prompted: bool = False  # its proposals depend on the expressions (SAM 3): no class-agnostic file of them
    config: Optional[type] = None

    def __post_init__(self) -> None:
        if self.config is not None:
            if self.options:
                raise ZsrisError("a generator's options are its config class's fields: give one or the other")
            object.__setattr__(self, "options", config_options(self.config))

    def load(self) -> Callable[[ProposalSpec, "torch.device"], ProposalGenerator]:
        return load_factory(self.factory)


PROPOSAL_REGISTRY: dict[str, GeneratorEntry] = {
    "classical": GeneratorEntry("zsris.proposals.classical:from_spec", summary="needs no weights",
                                config=ClassicalConfig),
    "sam": GeneratorEntry("zsris.proposals.sam:from_spec", in_model_process=True,
                          summary="SAM's automatic mask generator", config=SamConfig),
    "sam2": GeneratorEntry("zsris.proposals.sam2:from_spec", in_model_process=True,
                           summary="SAM 2.1's automatic mask generator (transformers)", config=Sam2Config),
    "sam3": GeneratorEntry("zsris.proposals.sam3:from_spec", in_model_process=True,
                           summary="SAM 3's instances of each expression's noun phrase", prompted=True,
                           config=Sam3Config),
    "freesolo": GeneratorEntry("zsris.proposals.freesolo:from_spec", in_model_process=True,
                               summary="FreeSOLO, the paper's proposals (ResNet-101 SOLOv2)", config=FreeSoloConfig),
    "file": GeneratorEntry("zsris.proposals.file:from_spec", summary="precomputed masks: COCO RLE JSON or PNG folders",
                           config=FileConfig),
}


def register_generator(name: str, factory: str | Callable[[ProposalSpec, "torch.device"], ProposalGenerator],
                       options: Optional[Mapping[str, Any]] = None, in_model_process: bool = False,
                       summary: str = "", config: Optional[type] = None) -> None:
    """Make a generator known by ``name`` to :func:`create_proposals` and every command. Its
    settings are ``options`` (with their defaults), or the fields of its ``config`` dataclass
    (then its ``spec`` can be :func:`spec_of` its config, and its factory use :func:`config_of`)."""
    PROPOSAL_REGISTRY[name] = GeneratorEntry(factory, dict(options or {}), in_model_process, summary, config=config)


def check_class_agnostic(name: str, command: str) -> None:
    """Refuse a prompted generator where proposals are made for images alone (``zsris proposals``,
    ``proposals-eval``): its proposals exist only for an image's expressions."""
    if generator_entry(name).prompted:
        raise ZsrisError(f"{command} makes proposals for images alone, and the {name} generator's depend on each "
                         f"expression; use it with zsris segment, batch or eval")


def load_plugins() -> None:
    """The generators installed packages declare (entry points ``zsris.proposals``), added once."""
    add_plugins(PROPOSAL_REGISTRY, "zsris.proposals", GeneratorEntry)


def generator_entry(name: str) -> GeneratorEntry:
    return registry_entry(PROPOSAL_REGISTRY, name, "zsris.proposals", GeneratorEntry, "proposal generator",
                          ZsrisError)


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
