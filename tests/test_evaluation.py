"""`zsris eval` on refcoco-mini: complete runs, kill-and-resume, Ray, the proposal cache."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsris.cli import main

from conftest import count_rows

LIMIT = "6"


def _eval_args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["eval", "--data", str(data), "--dataset", "refcoco", "--split", "train", "--out", str(out),
            "--limit", LIMIT, "--weights", "random", "--max-proposals", "8", "--cache", str(cache), *extra]


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())["metrics"]


def _rows(out: Path) -> int:
    return count_rows(out / "predictions.sqlite", "predictions")


@pytest.fixture(scope="module")
def uninterrupted(refcoco_mini, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    assert main(_eval_args(refcoco_mini, root / "run", root / "cache")) == 0
    return root


@pytest.mark.slow
def test_full_run_writes_every_output(uninterrupted):
    out = uninterrupted / "run"
    metrics = _metrics(out)
    assert metrics["images"] == 6 and metrics["sentences"] == _rows(out)
    for key in ("oIoU", "mIoU", "P@0.5", "P@0.9", "mc-acc", "cc-oIoU", "oracle mIoU", "proposals/image"):
        assert key in metrics
    assert 0 <= metrics["mIoU"] <= metrics["oracle mIoU"] <= 100
    assert (out / "report.md").read_text().startswith("# zsris evaluation")
    assert (out / "iou_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(refcoco_mini, uninterrupted, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "zsris.cli", *_eval_args(refcoco_mini, out, uninterrupted / "cache")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _rows(out) < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # a crash, not a polite stop
    process.wait()
    partial = _rows(out)
    total = _metrics(uninterrupted / "run")["sentences"]
    assert 0 < partial < total, "the kill should land halfway"
    assert not (out / "metrics.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(out) == total
    assert _metrics(out) == _metrics(uninterrupted / "run")


def test_rerun_of_a_finished_run_counts_nothing_twice(refcoco_mini, uninterrupted, capsys):
    out = uninterrupted / "run"
    before = _rows(out)
    assert main(_eval_args(refcoco_mini, out, uninterrupted / "cache")) == 0
    assert _rows(out) == before and "100%" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(refcoco_mini, uninterrupted, capsys):
    code = main(_eval_args(refcoco_mini, uninterrupted / "run", uninterrupted / "cache", "--alpha", "0.5"))
    assert code == 1 and "holds a run with other settings (alpha differ)" in capsys.readouterr().err


@pytest.mark.slow
def test_cached_proposals_are_reused(refcoco_mini, uninterrupted, tmp_path, monkeypatch):
    from zsris.proposals.classical import ClassicalProposals

    cache_files = list((uninterrupted / "cache").glob("*/*.json"))
    assert len(cache_files) == 6
    calls = []
    original = ClassicalProposals.__call__
    monkeypatch.setattr(ClassicalProposals, "__call__",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    # in this process (no workers), so that the patched generator would see any call
    args = _eval_args(refcoco_mini, tmp_path / "again", uninterrupted / "cache", "--alpha", "0.85",
                      "--proposal-workers", "0")
    assert main(args) == 0
    assert calls == []
    assert main(_eval_args(refcoco_mini, tmp_path / "fresh", tmp_path / "empty-cache", "--proposal-workers", "0")) == 0
    assert len(calls) == 6  # the patch does see the generator where nothing is cached


@pytest.mark.slow
def test_images_through_clip_together_give_the_same_answers(refcoco_mini, uninterrupted, tmp_path):
    """Groups of 4 of the 6 images (then 2) share CLIP's passes: the same proposal for every
    sentence, the same metrics, scores equal up to float rounding."""
    out = tmp_path / "grouped"
    assert main(_eval_args(refcoco_mini, out, uninterrupted / "cache", "--images-per-pass", "4")) == 0
    assert _metrics(out) == _metrics(uninterrupted / "run")
    query = "SELECT sent_id, record FROM predictions ORDER BY sent_id"
    rows = {}
    for run in (uninterrupted / "run", out):
        with sqlite3.connect(run / "predictions.sqlite") as db:
            rows[run] = [(sent_id, json.loads(record)) for sent_id, record in db.execute(query)]
    single, grouped = rows.values()
    assert [s for s, _ in single] == [s for s, _ in grouped] and len(single) > 6
    for (_, a), (_, b) in zip(single, grouped):
        assert a["proposal_index"] == b["proposal_index"] and a["iou"] == b["iou"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


@pytest.mark.slow
def test_ray_engine_equals_in_process(refcoco_mini, uninterrupted, tmp_path):
    """#23: one actor, its images decoded and given proposals by Ray tasks on the other core
    (which fill the proposal cache, as the local engine's workers do): the same metrics. Actors
    that prepare their own images are run by the same scheduler (jobs.run.run_images) in
    tests/test_batch.py's Ray test."""
    out, cache = tmp_path / "ray-tasks", tmp_path / "cache"
    env = {**os.environ, "RAY_DISABLE_IMPORT_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "zsris.cli",
                           *_eval_args(refcoco_mini, out, cache, "--engine", "ray", "--workers", "1",
                                       "--ray-prepare", "tasks")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _metrics(out) == _metrics(uninterrupted / "run")
    assert len([f for f in cache.rglob("*") if f.is_file()]) >= int(LIMIT)
    # Ray starts before the progress bar is drawn: whatever it says comes before the bar, never inside it
    bar_lines = [line.strip() for line in proc.stderr.replace("\r", "\n").splitlines() if "eval:" in line]
    assert bar_lines, proc.stderr[-2000:]
    bar = re.compile(r"eval: .*(image/s|s/image)(, starting: [^]]*)?\]")
    intruded = [line for line in bar_lines if not bar.fullmatch(line)]
    assert not intruded, proc.stderr[-3000:]


@pytest.mark.slow
def test_ground_truth_proposals_reach_the_oracle(refcoco_mini, tmp_path, capsys):
    assert main(_eval_args(refcoco_mini, tmp_path / "gt", tmp_path / "cache", "--gt-proposals")) == 0
    metrics = _metrics(tmp_path / "gt")
    assert metrics["oracle mIoU"] == 100.0 and metrics["mc-acc"] > 0


@pytest.mark.slow
def test_proposals_eval(refcoco_mini, tmp_path, capsys):
    out = tmp_path / "proposals.json"
    code = main(["proposals-eval", "--data", str(refcoco_mini), "--dataset", "refcoco", "--split", "train",
                 "--limit", "3", "--max-proposals", "20", "--no-cache", "--out", str(out)])
    assert code == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["images"] == 3 and metrics["objects"] == 3
    assert 0 < metrics["oracle mIoU"] <= 100 and metrics["proposals/image"] <= 20 and metrics["seconds/image"] > 0
    assert "oracle mIoU" in capsys.readouterr().out


def test_proposals_eval_offers_only_proposal_flags(capsys):
    with pytest.raises(SystemExit):
        main(["proposals-eval", "--help"])
    text = capsys.readouterr().out
    assert "--max-proposals" in text and "--sam-checkpoint" in text and "--device" in text
    assert "--weights" not in text and "--alpha" not in text and "--backbone" not in text


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    code = main(["eval", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--weights", "random"])
    assert code == 1 and "no such dataset folder" in capsys.readouterr().err
