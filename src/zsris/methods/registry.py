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

from ..errors import ZsrisError
from ..factories import load_factory

if TYPE_CHECKING:
    from ..config import SegmenterConfig
    from ..encoder import ClipEncoder
    from .base import Method

#: The kinds of CLIP image tower a method may need.
TOWERS = ("vit", "resnet")
DEFAULT_METHOD = "global-local"


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

    def load(self) -> Callable[["SegmenterConfig", "ClipEncoder"], "Method"]:
        return load_factory(self.factory)


METHOD_REGISTRY: dict[str, MethodEntry] = {
    DEFAULT_METHOD: MethodEntry("zsris.methods.global_local:from_config",
                                summary="the paper's global-local CLIP features (Yu et al., CVPR 2023)"),
}


def register_method(name: str, factory: str | Callable[["SegmenterConfig", "ClipEncoder"], "Method"],
                    options: Optional[Mapping[str, Any]] = None, towers: tuple[str, ...] = TOWERS,
                    summary: str = "") -> None:
    """Make a method known by ``name`` to :func:`zsris.create_segmenter` and every command."""
    unknown = sorted(set(towers) - set(TOWERS))
    if unknown or not towers:
        raise ZsrisError(f"a method's towers are some of {', '.join(TOWERS)}, not {', '.join(unknown) or 'none'}")
    METHOD_REGISTRY[name] = MethodEntry(factory, dict(options or {}), tuple(towers), summary)


def method_entry(name: str) -> MethodEntry:
    entry = METHOD_REGISTRY.get(name)
    if entry is None:
        raise ZsrisError(f"unknown method {name!r}; choose one of {', '.join(METHOD_REGISTRY)}")
    return entry


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
    return dataclasses.replace(spec, options={**entry.options, **options})


def check_tower(name: str, is_vit: bool) -> None:
    """Refuse a method on an image tower it cannot use, in one line."""
    tower = "vit" if is_vit else "resnet"
    towers = method_entry(name).towers
    if tower not in towers:
        wanted = " or ".join("a ViT" if t == "vit" else "a ResNet" for t in towers)
        raise ZsrisError(f"the {name} method needs {wanted} backbone, not a {'ViT' if is_vit else 'ResNet'}")
