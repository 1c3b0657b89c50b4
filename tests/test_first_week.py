"""What a new user tripped on in their first week: a job in a script without a main guard, a batch
that read its own outputs, `segment` checking its output folder after the work."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from zsris.cli import main
from zsris.errors import ZsrisWarning
from zsris.jobs.pairs import folder_pairs


def _image(path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)


def test_a_folder_batch_never_reads_zsris_outputs(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    _image(photos / "alpha.png")
    _image(photos / "out" / "masks" / "alpha.png#1.png")  # a batch's -o inside the input folder
    (photos / "out" / "run.lock").write_text("1\n")
    _image(photos / "old-run" / "overlays" / "alpha.png--e1.png")  # an earlier batch's folder
    (photos / "old-run" / "run.lock").write_text("1\n")
    _image(photos / "zsris-out" / "alpha--the-cat--1a2b3c4d.mask.png")  # zsris segment's default folder
    _image(photos / "zsris-out" / "alpha--the-cat--1a2b3c4d.overlay.png")
    _image(photos / "more" / "beta.PNG")
    pairs = folder_pairs(photos, ["the cat"], skip=[photos / "out"])
    assert [p.image for p in pairs] == ["alpha.png", "more/beta.PNG"]
    unreadable = photos / "locked"
    unreadable.mkdir()
    scandir = os.scandir

    def refusing(path=".", *args):
        if os.fspath(path) == os.fspath(unreadable):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path, *args)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.warns(ZsrisWarning, match=r"1 folder\(s\) under .* could not be read .*locked: Permission denied"):
        assert len(folder_pairs(photos, ["the cat"], skip=[photos / "out"])) == 2


def test_segment_refuses_an_unusable_output_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import zsris.cli.segment as segment

    monkeypatch.setattr(segment, "build_segmenter", lambda *a, **k: pytest.fail("a model loaded"))
    _image(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["segment", str(tmp_path / "photo.png"), "the cat", "--weights", "random",
                 "-o", str(tmp_path / "notes.txt")]) != 0
    assert "notes.txt is a file" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_job_in_a_script_without_a_main_guard_says_so(refcoco_mini, tmp_path):
    """Worker processes import the script that started them: without the guard they would start
    the job again; zsris says in one line what to do instead of failing every image quietly."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from zsris import DataSpec, EvalJob, Execution, create_segmenter
        segmenter = create_segmenter(weights="random", max_proposals=4)
        EvalJob(segmenter, DataSpec({str(refcoco_mini)!r}, "refcoco", no_cache=True), {str(tmp_path / "run")!r},
                split="train", limit=2, execution=Execution(proposal_workers=1, progress=False)).run()
        print("finished")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "finished" not in done.stdout
    assert 'put the code that runs the job under `if __name__ == "__main__":`' in done.stderr
