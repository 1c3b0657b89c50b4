"""The README and the documentation site hold: the site builds with ``--strict`` (no broken link,
anchor or page), every command on every page parses, the ``bash`` blocks' zsris commands run as
written, and every Python snippet runs.

The pages' convention: a ``bash`` block runs here as written (from a folder that sees the
repository's ``src/``, with random weights); a ``text`` block needs what a test machine lacks
(your photos, real weights, a dataset, a server), so its zsris commands are parsed by the CLI's
own parser (every flag and choice exists) and its ``pip`` extras and scripts must exist.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from importlib.metadata import metadata
from pathlib import Path

import pytest

from zsris import EXAMPLE_IMAGE
from zsris.cli import make_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: How a page's block is found: its language and its body.
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)


def blocks(language: str | None = None) -> list[tuple[Path, str, str]]:
    """(page, language, body) of every fenced block, or those of one language."""
    found = []
    for page in PAGES:
        for lang, body in BLOCK.findall(page.read_text()):
            if language is None or lang == language:
                found.append((page, lang, body))
    return found


def commands(body: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines left out,
    ``a && b`` as two."""
    joined = re.sub(r"\\\n\s*", " ", body)
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [part.strip() for line in lines if line and not line.startswith("#") for part in line.split("&&")]


def argv(command: str) -> list[str]:
    """A zsris command's arguments, the example image where the shell would ask zsris for it."""
    return shlex.split(command.replace('"$(zsris example-image)"', shlex.quote(str(EXAMPLE_IMAGE))))[1:]


def test_the_site_builds_with_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    nav = set(re.findall(r":\s*(\w+)\.md$", (REPO / "mkdocs.yml").read_text(), flags=re.M))
    assert {f"{name}/index.html" for name in nav - {"index"}} <= built  # every page of the nav is built
    assert {p.stem for p in (REPO / "docs").glob("*.md")} == nav  # and none is left out of it


def test_every_command_on_every_page_parses_and_names_what_exists(capsys):
    """A flag renamed or removed, an extra or a script that no longer exists: the page says so."""
    extras = set(metadata("zsris").get_all("Provides-Extra"))
    parser, parsed = make_parser(), 0
    for page, _, body in blocks():
        for command in commands(body):
            if command.startswith("zsris ") and "${" not in command:  # a shell loop's variables: not ours to fill
                try:
                    parser.parse_args(argv(command))
                except SystemExit:
                    pytest.fail(f"{page.name}: `{command}` does not parse: {capsys.readouterr().err.strip()}")
                parsed += 1
            elif command.startswith("pip install -e"):
                named = set(re.findall(r"\[([\w,]+)\]", command)[0].split(",")) if "[" in command else set()
                assert named <= extras, f"{page.name}: `{command}` names an extra pyproject.toml lacks"
            elif re.match(r"python (benchmarks|scripts)/", command):
                script = command.split()[1]
                assert (REPO / script).is_file(), f"{page.name}: `{command}`: {script} does not exist"
    assert parsed >= 30


@pytest.mark.slow
def test_the_bash_blocks_zsris_commands_run_as_written(tmp_path):
    """Each distinct zsris command of a ``bash`` block, in one process (each builds its models, as
    the command line would), from a folder that sees ``src/`` as its own; with the proposals
    capped at 6 (``--max-proposals 6`` added, a flag each command takes) to keep the suite short."""
    runnable = list(dict.fromkeys(c for _, _, body in blocks("bash") for c in commands(body) if c.startswith("zsris ")))
    assert any(c.startswith("zsris batch") for c in runnable) and any("sam2" in c for c in runnable)
    (tmp_path / "src").symlink_to(REPO / "src")
    script = tmp_path / "run_pages.py"
    script.write_text(textwrap.dedent(f"""
        import contextlib, io, sys
        from zsris.cli import main
        if __name__ == "__main__":  # batch starts worker processes, which import this script
            for args in {[argv(c) + (["--max-proposals", "6"] if not c.startswith("zsris weights") else [])
                          for c in runnable]!r}:
                said = io.StringIO()
                with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
                    code = main(args)
                sys.stderr.write(said.getvalue())
                # without --weights (the quick start, zsris weights) exit 1 is the page's promise where no
                # weights are on the machine: a line saying how to supply them
                last = (said.getvalue().strip().splitlines() or [""])[-1]
                said_missing = "local copy: none" in said.getvalue()
                missing = said_missing if args[0] == "weights" else "no weights for CLIP" in last
                no_weights = code == 1 and "--weights" not in args and missing
                if code != 0 and not no_weights:
                    sys.exit(f"exit {{code}}: zsris {{' '.join(args)}}")
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "out").glob("*.mask.png"))) >= 4
    manifest = [json.loads(line) for line in (tmp_path / "batch-manifest" / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in manifest] == ["circle", "square", "right"]
    assert all((tmp_path / "batch-manifest" / r["files"]["mask"]).is_file() for r in manifest)


@pytest.mark.slow
def test_every_python_snippet_runs(tmp_path):
    """Every page's Python blocks, in the order of the pages, as one script."""
    snippets = [body for _, _, body in blocks("python")]
    assert len(snippets) >= 5
    script = tmp_path / "snippets.py"
    script.write_text("\n".join(snippets))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
