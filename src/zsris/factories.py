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


#: The entry-point groups already read (each once per process).
_READ_GROUPS: set[str] = set()


def add_plugins(registry: dict[str, Any], group: str, kind: type) -> None:
    """Add to ``registry`` what installed packages declare under the entry-point ``group``
    (``[project.entry-points."zsris.methods"]``, ``"zsris.proposals"``), once per process: an entry
    point names a ``kind`` (a ``MethodEntry``, a ``GeneratorEntry``) or a factory function, which
    becomes one with no settings of its own. A plug-in that cannot be loaded, or names something
    else, is one warning naming it and is left out: it never stops zsris; a built-in name is never
    replaced."""
    if group in _READ_GROUPS:
        return
    _READ_GROUPS.add(group)
    import warnings
    from importlib.metadata import entry_points

    from .errors import ZsrisWarning

    for point in entry_points(group=group):
        where = f"the plug-in {point.name!r} ({point.value}, entry point {group})"
        if point.name in registry:
            warnings.warn(f"zsris: {where} is left out: zsris has its own {point.name!r}", ZsrisWarning, stacklevel=2)
            continue
        try:
            value = point.load()
        except Exception as error:  # noqa: BLE001 - a broken plug-in: anything its import raises
            warnings.warn(f"zsris: {where} could not be loaded and is left out ({type(error).__name__}: {error})",
                          ZsrisWarning, stacklevel=2)
            continue
        if not isinstance(value, kind) and not callable(value):
            warnings.warn(f"zsris: {where} is left out: it names a {type(value).__name__}, not a {kind.__name__} "
                          f"or a factory", ZsrisWarning, stacklevel=2)
            continue
        registry[point.name] = value if isinstance(value, kind) else kind(value)


def registry_entry(registry: dict[str, Any], name: str, group: str, kind: type, what: str,
                   error: type[Exception]) -> Any:
    """``registry[name]``, looking among the plug-ins of ``group`` first where it is not a built-in
    (:func:`add_plugins`); an unknown name is ``error`` in one line listing the ``what`` there are."""
    if name not in registry:
        add_plugins(registry, group, kind)
    entry = registry.get(name)
    if entry is None:
        raise error(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return entry
