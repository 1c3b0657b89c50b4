"""Factories named as text: how the registries (proposal generators, methods, presets) find the
function that builds what they list, importing its module only when it is built, so that listing
them (``zsris --help``) loads no torch."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def load_factory(factory: str | Callable[..., Any]) -> Callable[..., Any]:
    """``factory`` itself where it is callable, else the function ``"module:function"`` names."""
    if callable(factory):
        return factory
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)
