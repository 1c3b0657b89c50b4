"""The registry of scoring methods and the spec that names one: plain data, no torch.

A method is what turns an image's proposals into per-proposal features and scores an expression
against them: the paper's global-local CLIP is the first entry, and the paper's baselines or a
later method (HybridGL) join beside it. Like the proposal generators' registry
(:mod:`zsris.proposals.registry`), :data:`METHOD_REGISTRY` maps a name to where its factory
lives (``"module:function"``, imported only when the method is built), the method's own
settings with their defaults, and the image towers it works with.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from ..errors import MethodError, ZsrisError
from ..factories import add_plugins, load_factory, registry_entry

if TYPE_CHECKING:
    from ..config import SegmenterConfig
    from ..encoder import ClipEncoder
    from .base import Method

#: The kinds of CLIP image tower a method may need.
TOWERS = ("vit", "resnet")
DEFAULT_METHOD = "global-local"
#: The text features a method may score with, and how a map method turns its map into a choice.
TEXTS = ("sentence-phrase", "sentence", "phrase")
VISUALS = ("global-local", "global", "local")
SELECTS = ("mean", "sum")
#: How the paper's global feature may see the mask, per image tower (its masking ablations).
MASKINGS = {"vit": ("tokens", "one-block", "attention"), "resnet": ("tokens", "image-query")}
#: HybridGL's fusions of its local and global streams (the script's ``--fusion_mode``).
HYBRIDGL_FUSIONS = ("G2L", "L2G", "G2L&L2G", "token_masking", "attn_masking")


@dataclass(frozen=True)
class MethodSpec:
    """Which method scores the proposals, and its own settings (``options``, as its registry
    entry names them). A spec inside a :class:`zsris.SegmenterConfig` has every option of its
    method spelled out with its default (:func:`canonical_method`), so two specs that build the
    same method are equal."""

    name: str = DEFAULT_METHOD
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodEntry:
    """A registered method. ``factory`` (``"module:function"`` or the function) is called with
    the segmenter's config and its :class:`zsris.encoder.ClipEncoder`; ``options`` are the
    method's own settings and their defaults; ``towers`` the image towers it can use."""

    factory: str | Callable[["SegmenterConfig", "ClipEncoder"], "Method"]
    options: Mapping[str, Any] = field(default_factory=dict)
    towers: tuple[str, ...] = TOWERS
    summary: str = ""
    #: The values a setting may take, where they are few (checked before any model loads).
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    #: Where a setting's values depend on the tower: setting -> tower -> values (:func:`check_tower`).
    tower_choices: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)

    def load(self) -> Callable[["SegmenterConfig", "ClipEncoder"], "Method"]:
        return load_factory(self.factory)


METHOD_REGISTRY: dict[str, MethodEntry] = {
    DEFAULT_METHOD: MethodEntry("zsris.methods.global_local:from_config",
                                {"visual": "global-local", "text": "sentence-phrase", "masking": "tokens"},
                                summary="the paper's global-local CLIP features (Yu et al., CVPR 2023)",
                                choices={"visual": VISUALS, "text": TEXTS,
                                         "masking": ("tokens", "one-block", "attention", "image-query")},
                                tower_choices={"masking": MASKINGS}),
    "cropping": MethodEntry("zsris.methods.global_local:cropping", {"text": "sentence-phrase"},
                            summary="the paper's cropping baseline: the local feature alone", choices={"text": TEXTS}),
    "region-token": MethodEntry("zsris.methods.baselines:region_token", {"start_block": 0, "text": "sentence-phrase"},
                                towers=("vit",),
                                summary="the paper's region-token baseline (Li et al. 2022): a masked class token",
                                choices={"text": TEXTS}),
    "score-map": MethodEntry("zsris.methods.baselines:score_map", {"text": "sentence-phrase", "select": "mean"},
                             towers=("resnet",),
                             summary="the paper's score-map baseline (MaskCLIP): dense cosine, mean per proposal",
                             choices={"text": TEXTS, "select": SELECTS}),
    "grad-cam": MethodEntry("zsris.methods.baselines:grad_cam", {"text": "phrase", "select": "mean"},
                            towers=("resnet",),
                            summary="the paper's Grad-CAM baseline: CLIP's Grad-CAM, mean per proposal",
                            choices={"text": TEXTS, "select": SELECTS}),
    "hybridgl": MethodEntry("zsris.methods.hybridgl:from_config",
                            {"fusion": "G2L", "r": 0.5, "alpha": 0.6, "k1": 3, "k2": 6, "masking_block": 9},
                            towers=("vit",),
                            summary="HybridGL (Liu and Li, CVPR 2025): hybrid global-local features with spatial "
                                    "guidance (GEM)",
                            choices={"fusion": HYBRIDGL_FUSIONS}),
}


def register_method(name: str, factory: str | Callable[["SegmenterConfig", "ClipEncoder"], "Method"],
                    options: Optional[Mapping[str, Any]] = None, towers: tuple[str, ...] = TOWERS,
                    summary: str = "") -> None:
    """Make a method known by ``name`` to :func:`zsris.create_segmenter` and every command."""
    unknown = sorted(set(towers) - set(TOWERS))
    if unknown or not towers:
        raise ZsrisError(f"a method's towers are some of {', '.join(TOWERS)}, not {', '.join(unknown) or 'none'}")
    METHOD_REGISTRY[name] = MethodEntry(factory, dict(options or {}), tuple(towers), summary)


def load_plugins() -> None:
    """The methods installed packages declare (entry points ``zsris.methods``), added once."""
    add_plugins(METHOD_REGISTRY, "zsris.methods", MethodEntry)


def method_entry(name: str) -> MethodEntry:
    return registry_entry(METHOD_REGISTRY, name, "zsris.methods", MethodEntry, "method", MethodError)


def canonical_method(spec: str | MethodSpec, **changes: Any) -> MethodSpec:
    """``spec`` (or a name) with ``changes`` (the method's own options) and every option spelled
    out with its default. An option the method does not have is refused in one line."""
    if isinstance(spec, str):
        spec = MethodSpec(spec)
    if not isinstance(spec, MethodSpec):
        raise ZsrisError(f"method must be a name or a MethodSpec, not {type(spec).__name__}")
    entry = method_entry(spec.name)
    options = {**spec.options, **changes}
    unknown = sorted(options.keys() - entry.options.keys())
    if unknown:
        owned = ", ".join(entry.options) or "none"
        raise ZsrisError(f"the {spec.name} method has no setting {', '.join(unknown)} (its settings: {owned})")
    for key, value in options.items():
        allowed = entry.choices.get(key)
        if allowed is not None and value not in allowed:
            raise ZsrisError(f"the {spec.name} method's {key} is one of {', '.join(map(str, allowed))}, not {value!r}")
        default = entry.options[key]
        if default is not None and not _same_kind(value, default):
            kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(type(default), "a word")
            raise ZsrisError(f"the {spec.name} method's {key} is {kind} (default {default!r}), not {value!r}")
    return dataclasses.replace(spec, options={**entry.options, **options})


def _same_kind(value: Any, default: Any) -> bool:
    """Whether ``value`` may stand where ``default`` does: a bool for a bool, a whole number for an
    int, a number for a float, a string for a string (anything for other kinds)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def tower_of(backbone: str) -> str:
    """The image tower a backbone name implies, before anything loads: open_clip's ResNets are
    named ``RN...``; every other CLIP zsris loads (open_clip's ViTs, SigLIP, ``hf:``) is a ViT."""
    return "resnet" if backbone.upper().startswith("RN") else "vit"


def check_tower(method: str | MethodSpec, is_vit: bool) -> None:
    """Refuse, in one line, a method on an image tower it cannot use, or (given its spec) a setting
    whose value that tower does not have (``global-local:masking=one-block`` on a ResNet)."""
    name = method.name if isinstance(method, MethodSpec) else method
    tower = "vit" if is_vit else "resnet"
    entry = method_entry(name)
    if tower not in entry.towers:
        wanted = " or ".join("a ViT" if t == "vit" else "a ResNet" for t in entry.towers)
        raise ZsrisError(f"the {name} method needs {wanted} backbone, not a {'ViT' if is_vit else 'ResNet'}")
    if isinstance(method, MethodSpec):
        for key, by_tower in entry.tower_choices.items():
            allowed = by_tower.get(tower)
            if key in method.options and allowed is not None and method.options[key] not in allowed:
                raise ZsrisError(f"the {name} method's {key} {method.options[key]} needs another backbone; on a "
                                 f"{'ViT' if is_vit else 'ResNet'} it is one of {', '.join(map(str, allowed))}")


def _value(text: str, default: Any) -> Any:
    """A setting's value as written on a command line, read as the kind of its default (a bool as
    true or false, a whole number, a number; anything else stays the string, which
    :func:`canonical_method` then checks)."""
    text = text.strip()
    readers = {bool: lambda t: {"true": True, "false": False}[t.lower()], int: int, float: float}
    reader = readers.get(type(default))
    if reader is None:
        return text
    try:
        return reader(text)
    except (KeyError, ValueError):
        return text


def parse_method(text: str) -> MethodSpec:
    """A method as a command line names it: ``name`` or ``name:setting=value:setting=value``
    (``global-local:masking=one-block``), every setting spelled out (:func:`canonical_method`)."""
    name, *settings = [part.strip() for part in str(text).split(":")]
    defaults = method_entry(name).options
    options = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key.strip():
            raise ZsrisError(f"a method's setting is written name:setting=value, not {setting!r} in {text!r}")
        options[key.strip()] = _value(value, defaults.get(key.strip()))
    return canonical_method(MethodSpec(name, options))


def method_label(spec: MethodSpec) -> str:
    """A method's short name for reports and run folders: its name and the settings that differ
    from its defaults (``global-local:masking=one-block``)."""
    defaults = method_entry(spec.name).options
    changed = [f"{key}={value}" for key, value in spec.options.items() if defaults.get(key) != value]
    return ":".join([spec.name, *changed])


#: The paper's Table 1 as ``--method table1`` runs it: its baselines, its method on both of its
#: backbones and its ablations (each a method with settings, and the tower it runs on), in the
#: paper's order. ResNet rows run on the chosen backbone where it is a ResNet, else RN50; ViT rows
#: on the chosen backbone where it is a ViT, else ViT-B/32. The upper bound is ``--gt-proposals``.
TABLE1 = (("grad-cam", "resnet"), ("score-map", "resnet"), ("cropping", "resnet"), ("global-local", "resnet"),
          ("global-local:masking=image-query", "resnet"),
          ("region-token", "vit"), ("cropping", "vit"), ("global-local", "vit"),
          ("global-local:masking=one-block", "vit"), ("global-local:masking=attention", "vit"),
          ("global-local:visual=global", "vit"), ("global-local:text=sentence", "vit"),
          ("global-local:text=phrase", "vit"))
#: The paper's two backbones: table1's rows of the tower the chosen backbone is not.
TABLE1_BACKBONES = {"resnet": "RN50", "vit": "ViT-B/32"}


def method_rows(text: str, backbone: str) -> list[tuple[str, MethodSpec]]:
    """The methods a ``--method`` value names, each with the backbone it runs on: one method, a
    comma-separated list (each on ``backbone``; a method that cannot use its tower is refused in
    one line), or ``table1`` (:data:`TABLE1`). The same method twice is refused."""
    if text.strip() == "table1":
        wanted = [(name, backbone if tower_of(backbone) == tower else TABLE1_BACKBONES[tower])
                  for name, tower in TABLE1]
    else:
        wanted = [(part, backbone) for part in text.split(",") if part.strip()]
    if not wanted:
        raise ZsrisError("--method names no method")
    rows, seen = [], set()
    for name, chosen in wanted:
        spec = parse_method(name)
        label = method_label(spec)
        if (label, chosen) in seen:
            raise ZsrisError(f"--method names {label} twice")
        seen.add((label, chosen))
        check_tower(spec, tower_of(chosen) == "vit")
        rows.append((chosen, spec))
    return rows
