"""The paper preset: its settings, the flags it refuses, both accountings and the figures beside."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from zsris import SegmenterConfig
from zsris.cli import make_parser
from zsris.cli.flags import config_from_args
from zsris.errors import ZsrisError
from zsris.metrics import authors_accounting, summarize
from zsris.paper import comparison


def _config(argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return config_from_args(make_parser().parse_args(argv))


def test_the_paper_preset_is_the_papers_setting_per_dataset():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = SegmenterConfig.preset("paper", dataset="refcocog", weights="random")
        c = SegmenterConfig.preset("paper", dataset="refcoco")
    assert (g.backbone, g.pretrained, g.alpha, g.beta, g.k) == ("ViT-B/32", "openai", 0.85, 0.5, 3)
    assert (g.preprocess, g.fusion, g.proposals.name, g.proposals.max_proposals) == ("paper", "reference",
                                                                                      "freesolo", 100)
    assert c.alpha == 0.95 and g.weights == "random" and g.from_preset == "paper"
    assert "from_preset" not in g.settings()  # how a run is reported, not what it computes
    with pytest.raises(ZsrisError, match="unknown preset 'fast'"):
        SegmenterConfig.preset("fast")


def test_the_preset_names_the_spacy_model_it_could_not_use(monkeypatch):
    import spacy

    monkeypatch.setattr(spacy.util, "is_package", lambda name: name == "en_core_web_sm")
    with pytest.warns(UserWarning, match="en_core_web_lg is not installed.*come from en_core_web_sm instead"):
        assert SegmenterConfig.preset("paper").spacy_model is None


@pytest.mark.parametrize("flags, message", [
    (["--backbone", "RN101"], r"sets --backbone ViT-B/32 \(or RN50\); it contradicts --backbone RN101"),
    (["--alpha", "0.5"], "sets --alpha 0.95; it contradicts --alpha 0.5"),
    (["--proposals", "sam"], r"sets --proposals freesolo \(or file.*\); it contradicts --proposals sam"),
    (["--preprocess", "clip"], "sets --preprocess paper; it contradicts --preprocess clip"),
    (["--spatial", "on"], "sets --spatial off"),
    (["--no-target-threshold", "0.2"], "sets --no-target-threshold None"),
    (["--max-proposals", "20"], "keeps FreeSOLO's 100 masks; it contradicts --max-proposals 20"),
    (["--dataset", "refcocog", "--split-by", "google"], "on its umd split"),
    (["--dataset", "phrasecut", "--phrasecut-subset", "all"], "PhraseCut's unseen phrases"),
])
def test_flags_that_contradict_the_preset_are_refused_by_name(flags, message):
    with pytest.raises(ZsrisError, match=message):
        _config(["eval", "--data", "d", "--out", "o", "--preset", "paper", *flags])


def test_what_the_preset_leaves_open_is_taken():
    config = _config(["eval", "--data", "d", "--out", "o", "--preset", "paper", "--backbone", "RN50",
                      "--weights", "random", "--freesolo-checkpoint", "fs.pth", "--beta", "0.5",
                      "--device", "cpu"])
    assert (config.backbone, config.weights, config.device) == ("RN50", "random", "cpu")
    assert config.proposals.options["freesolo_checkpoint"] == "fs.pth" and config.preprocess == "paper"
    written = _config(["eval", "--data", "d", "--out", "o", "--preset", "paper", "--proposals", "file",
                       "--proposals-path", "fs.json"])
    assert written.proposals.name == "file" and written.proposals.options["path"] == "fs.json"
    gt = _config(["eval", "--data", "d", "--out", "o", "--preset", "paper", "--gt-proposals"])
    assert gt.proposals.name != "freesolo"  # ground-truth masks are the proposals: no FreeSOLO to load


def test_the_authors_accounting_skips_images_without_proposals():
    records = [{"image_id": 1, "iou": 0.5, "intersection": 5, "union": 10, "num_proposals": 3},
               {"image_id": 2, "iou": 0.0, "intersection": 0, "union": 30, "num_proposals": 0},
               {"image_id": 3, "iou": 1.0, "intersection": 10, "union": 10, "num_proposals": 9}]
    ours, theirs = summarize(records), authors_accounting(records)
    assert ours["sentences"] == 3 and round(ours["oIoU"], 2) == 30.0
    assert theirs["sentences (authors' accounting)"] == 2
    assert theirs["oIoU (authors' accounting)"] == 75.0 and theirs["mIoU (authors' accounting)"] == 75.0


def test_each_split_is_put_beside_the_papers_and_the_authors_rerun():
    assert comparison("refcoco", "val") == {"oIoU (paper)": 24.88, "mIoU (paper)": 26.20,
                                            "oIoU (authors' re-run)": 24.83, "mIoU (authors' re-run)": 26.23}
    assert comparison("refcocog", "test") == {"oIoU (paper)": 30.96, "mIoU (paper)": 33.67}
    assert comparison("phrasecut", "val") == {"oIoU (paper)": 23.64}
    assert comparison("refcoco", "train") == {}


def test_eval_with_the_preset_reports_both_accountings(refcoco_mini, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "zsris.cli", "eval", "--data", str(refcoco_mini), "--split", "train",
                           "--limit", "2", "--preset", "paper", "--gt-proposals", "--weights", "random",
                           "--proposal-workers", "0", "--no-cache", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "en_core_web_lg" in done.stderr or "en_core_web_lg" in (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics.get("metrics", metrics)
    assert summary["sentences (authors' accounting)"] == summary["sentences"]
    assert summary["oIoU (authors' accounting)"] == summary["oIoU"]
    settings = metrics.get("settings", {})
    assert settings.get("preprocess", "paper") == "paper"
