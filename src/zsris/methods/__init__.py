"""Methods that score proposals against expressions, behind one interface and a registry.

The paper's global-local CLIP (:mod:`zsris.methods.global_local`) is the default; a method of
one's own joins with :func:`register_method` and is chosen by name like a proposal generator
(``create_segmenter(method="mine")``). Importing this package loads no torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method
from .registry import (
    DEFAULT_METHOD,
    METHOD_REGISTRY,
    MethodEntry,
    MethodSpec,
    canonical_method,
    check_tower,
    method_entry,
    register_method,
)

if TYPE_CHECKING:
    from ..config import SegmenterConfig
    from ..encoder import ClipEncoder


def create_method(config: "SegmenterConfig", encoder: "ClipEncoder") -> Method:
    """Build the method ``config.method`` names, on ``encoder`` (refused on a tower it cannot use)."""
    check_tower(config.method, encoder.backbone.is_vit)
    return method_entry(config.method.name).load()(config, encoder)


__all__ = ["DEFAULT_METHOD", "METHOD_REGISTRY", "Method", "MethodEntry", "MethodSpec", "canonical_method",
           "check_tower", "create_method", "method_entry", "register_method"]
