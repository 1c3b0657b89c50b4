"""The shape of the code, checked by reading it: data flows one way, and the light edges stay light.

- no import circle among zsris's modules, counting imports inside functions too;
- nothing below the jobs layer imports it (only the command line above it does);
- the data, the engine, the cache, the records and the registry load no torch, scikit-image or
  SciPy, and neither does answering ``zsris --help``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "zsris"


def _imports() -> dict[str, set[str]]:
    """Each zsris module -> the zsris modules it imports anywhere in its text."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                found = [target, *(f"{target}.{alias.name}" for alias in node.names)]
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
    graph = _imports()
    assert graph["zsris.jobs.batch"] >= {"zsris.segmenter", "zsris.engine"}  # the reading sees imports
    assert _cycle(graph) == []


def test_a_circle_would_be_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_nothing_below_the_jobs_layer_imports_it():
    above = ("zsris.jobs", "zsris.cli")
    importers = {name for name, targets in _imports().items()
                 if any(t == "zsris.jobs" or t.startswith("zsris.jobs.") for t in targets)}
    assert importers and all(name.startswith(above) for name in importers), sorted(importers)


@pytest.mark.slow
def test_light_modules_load_no_model_library():
    code = ("import sys\n"
            "import zsris.types, zsris.records, zsris.engine, zsris.cache, zsris.config, zsris.decide\n"
            "import zsris.proposals, zsris.jobs, zsris.jobs.pairs, zsris.jobs.run, zsris.store, zsris.report\n"
            "from zsris.cli import make_parser\n"
            "make_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'skimage', 'scipy', 'open_clip', 'spacy') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
