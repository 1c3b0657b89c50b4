"""The shape of the code, checked by reading it: data flows one way, and the light edges stay light.

- no import circle among zsris's modules, counting imports inside functions too (not those made
  for type checking alone, which never run);
- each module imports only its own floor and the floors below it (:data:`FLOORS`, as docs/architecture.md's
  "Development" section states them); imports for type checking alone do not count;
- the data, the engine, the cache, the records and the registries load no torch, scikit-image or
  SciPy, and neither does answering ``zsris --help``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "zsris"


#: The floors, lowest first: a module may import its own floor and those below. A module is on the
#: floor of the longest prefix listed (``zsris.jobs`` holds ``zsris.jobs.batch``).
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data and settings", ("zsris.errors", "zsris.extras", "zsris.factories", "zsris.config", "zsris.types",
                           "zsris.masks", "zsris.images", "zsris.names", "zsris.datasets", "zsris.phrasecut",
                           "zsris.metrics",
                           "zsris.records", "zsris.cache", "zsris.store", "zsris.calibration", "zsris.report",
                           "zsris.paper", "zsris.hybridgl_preset", "zsris.proposals", "zsris.proposals.base",
                           "zsris.proposals.registry",
                           "zsris.proposals.configs", "zsris.methods", "zsris.methods.base",
                           "zsris.methods.registry")),
    ("presentation", ("zsris.render", "zsris.present")),
    ("the model", ("zsris.backbones", "zsris.hf_clip", "zsris.checkpoints", "zsris.precision", "zsris.resample",
                   "zsris.visual", "zsris.text", "zsris.spatial", "zsris.fusion", "zsris.preprocess",
                   "zsris.encoder", "zsris.scoring", "zsris.decide", "zsris.proposals.classical",
                   "zsris.proposals.file", "zsris.proposals.sam", "zsris.proposals.sam2", "zsris.proposals.sam3",
                   "zsris.proposals.freesolo", "zsris.maps", "zsris.methods.global_local",
                   "zsris.methods.baselines", "zsris.gem", "zsris.methods.hybridgl", "zsris.segmenter",
                   "zsris.predictor")),
    ("the engine", ("zsris.engine",)),
    ("jobs", ("zsris.jobs",)),
    ("apps", ("zsris.cli", "zsris.service", "zsris.page", "zsris")),
)


def _floor(module: str) -> int:
    """The floor of ``module``: that of the longest listed name it is or lies under."""
    best, found = -1, None
    for level, (_, names) in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), level
    if found is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS (and to docs/architecture.md's list)")
    return found


def _type_checking(node: ast.AST) -> bool:
    """Whether ``node`` is an ``if TYPE_CHECKING:`` block (imports for annotations only)."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those inside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not _type_checking(child))


def _imports(runtime_only: bool = False) -> dict[str, set[str]]:
    """Each zsris module -> the zsris modules it imports anywhere in its text (with
    ``runtime_only``, leaving out imports made for type checking alone)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        for node in (_runtime_nodes(tree) if runtime_only else ast.walk(tree)):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                # `from . import visual` imports the module, not the package's own names
                found = [*([target] if node.module else []), *(f"{target}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(f for f in found if f in modules and f != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        stack.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                return stack[stack.index(other):] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        state[name] = 2
        stack.pop()
        return []

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return []


def test_there_is_no_import_circle():
    graph = _imports(runtime_only=True)  # an import for annotations alone runs never, so closes no circle
    assert graph["zsris.jobs.batch"] >= {"zsris.engine", "zsris.jobs.run"}  # the reading sees imports
    assert _cycle(graph) == []


def test_a_circle_would_be_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_nothing_below_the_jobs_layer_imports_it():
    above = ("zsris.jobs", "zsris.cli")
    importers = {name for name, targets in _imports().items()
                 if any(t == "zsris.jobs" or t.startswith("zsris.jobs.") for t in targets)}
    assert importers and all(name.startswith(above) for name in importers), sorted(importers)


def _violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} ({FLOORS[_floor(name)][0]}) imports {target} ({FLOORS[_floor(target)][0]})"
                  for name, targets in graph.items() for target in targets if _floor(target) > _floor(name))


def test_each_module_imports_only_its_floor_and_those_below():
    graph = _imports(runtime_only=True)
    assert "zsris.engine" in graph["zsris.jobs.batch"]  # the reading sees imports
    assert _violations(graph) == []


def test_an_import_upwards_would_be_found():
    graph = {"zsris.types": {"zsris.render"}, "zsris.render": {"zsris.types"}, "zsris.jobs.run": {"zsris.engine"}}
    assert _violations(graph) == ["zsris.types (data and settings) imports zsris.render (presentation)"]
    assert _floor("zsris.jobs.batch") == _floor("zsris.jobs") and _floor("zsris.proposals.sam") > _floor("zsris.types")
    with pytest.raises(AssertionError, match="on no floor"):
        _floor("elsewhere.module")


def test_imports_for_type_checking_alone_are_left_out():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nimport b\n")
    names = [alias.name for node in _runtime_nodes(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert names == ["b"]


@pytest.mark.slow
def test_light_modules_load_no_model_library():
    code = ("import sys\n"
            "import zsris.types, zsris.records, zsris.engine, zsris.cache, zsris.config, zsris.decide\n"
            "import zsris.methods, zsris.proposals.registry\n"
            "import zsris.proposals, zsris.jobs, zsris.jobs.pairs, zsris.jobs.run, zsris.store, zsris.report\n"
            "from zsris.cli import make_parser\n"
            "make_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'skimage', 'scipy', 'open_clip', 'spacy') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
