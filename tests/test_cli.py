"""`zsris segment` end to end on real images, and its errors: one line, non-zero exit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsris.cli import main
from zsris.masks import decode_rle

FAST = ["--weights", "random", "--max-proposals", "8"]


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("backbone", ["ViT-B/32", "RN50"])
def test_segment_writes_mask_overlay_and_json(backbone, real_image_path, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = _run(["segment", str(real_image_path), "the man on the left", "baby elephant",
                                 "-o", str(out), "--backbone", backbone, "--top-k", "3", *FAST], capsys)
    assert code == 0, stderr
    assert "RANDOM weights" in stderr
    for slug in ["the-man-on-the-left", "baby-elephant"]:
        (record_file,) = out.glob(f"COCO_train2014_000000000312.jpg--{slug}--*.json")
        base = str(record_file)[:-len(".json")]
        mask = np.asarray(Image.open(f"{base}.mask.png")) > 0
        assert mask.shape == (427, 640) and mask.any()
        with Image.open(f"{base}.overlay.png") as overlay:
            assert overlay.width == 640 and overlay.height > 427  # caption band below the image
        record = json.loads(open(f"{base}.json").read())
        np.testing.assert_array_equal(decode_rle(record["mask"]), mask)
        assert record["image_size"] == [427, 640]
        assert len(record["top_proposals"]) == 3
        assert record["top_proposals"][0]["score"] == pytest.approx(record["score"])
        assert set(record["top_proposals"][0]) == {"index", "score", "global_score", "local_score", "box", "area"}
        assert record["settings"]["backbone"] == backbone.replace("/", "-")
        name = Path(base).name  # #37: the record names its pictures, which sit beside it
        assert record["files"] == {"mask": f"{name}.mask.png", "overlay": f"{name}.overlay.png"}
    assert stdout.count("score") == 2


def test_missing_image(tmp_path, capsys):
    code, _, err = _run(["segment", str(tmp_path / "none.jpg"), "a cat", *FAST], capsys)
    assert code == 1 and err.strip().endswith("none.jpg: no such file")


def test_truncated_image(tmp_path, real_image_path, capsys):
    path = tmp_path / "cut.jpg"
    path.write_bytes(real_image_path.read_bytes()[:5000])
    code, _, err = _run(["segment", str(path), "a cat", *FAST], capsys)
    assert code == 1 and "truncated" in err and len(err.strip().splitlines()) == 1


def test_empty_expression(real_image_path, tmp_path, capsys):
    code, _, err = _run(["segment", str(real_image_path), "   ", "-o", str(tmp_path), *FAST], capsys)
    assert code == 1 and "the expression is empty" in err


def test_image_without_proposals(real_image_path, tmp_path, capsys):
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.fromarray(np.zeros((427, 640), dtype=np.uint8)).save(folder / "0.png")
    code, _, err = _run(["segment", str(real_image_path), "a cat", "-o", str(tmp_path / "o"), "--proposals", "file",
                         "--proposals-path", str(folder), *FAST], capsys)
    assert code == 1 and "no mask proposals" in err


@pytest.mark.slow
def test_missing_weights_is_one_clear_line(real_image_path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ZSRIS_CLIP_WEIGHTS"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "zsris.cli", "segment", str(real_image_path), "a cat",
                           "-o", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "--weights" in proc.stderr and "ZSRIS_CLIP_WEIGHTS" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_local_checkpoint_is_loaded(real_image_path, tmp_path, capsys):
    import open_clip
    import torch

    model = open_clip.create_model("ViT-B-32", force_quick_gelu=True)
    torch.save(model.state_dict(), tmp_path / "vitb32.bin")
    code, _, err = _run(["segment", str(real_image_path), "a cat", "-o", str(tmp_path / "o"), "--max-proposals", "4",
                         "--weights", str(tmp_path / "vitb32.bin")], capsys)
    assert code == 0, err
    assert "RANDOM" not in err
    code, _, err = _run(["segment", str(real_image_path), "a cat", "--weights", str(tmp_path / "nope.pt")], capsys)
    assert code == 1 and "does not exist" in err
    damaged = model.state_dict()
    damaged["visual.proj"][0, 0] = float("nan")  # every score would be NaN, every answer arbitrary
    torch.save(damaged, tmp_path / "damaged.bin")
    code, _, err = _run(["segment", str(real_image_path), "a cat", "--weights", str(tmp_path / "damaged.bin")], capsys)
    assert code == 1 and err.strip().endswith("the weight visual.proj holds NaN or infinite values; the checkpoint "
                                              "is damaged")


@pytest.mark.slow
def test_unwritable_output_folder(real_image_path, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    code, _, err = _run(["segment", str(real_image_path), "a cat", "-o", str(blocker / "out"), *FAST], capsys)
    assert code == 1 and err.strip().splitlines()[-1].endswith(f"{blocker} is a file, so {blocker / 'out'} cannot be "
                                                                "made there")  # before any model loads
    assert "Traceback" not in err


def test_alpha_defaults_to_the_papers():
    from zsris.cli import make_parser
    from zsris.cli.flags import config_from_args
    from zsris.config import paper_alpha

    assert paper_alpha() == 0.95 and paper_alpha("refcoco+") == 0.95 and paper_alpha("refcocog") == 0.85
    parser = make_parser()
    segment = parser.parse_args(["segment", "x.jpg", "a cat"])
    evaluate = ["eval", "--data", "d", "--out", "o", "--dataset", "refcocog"]
    assert config_from_args(segment).alpha == 0.95
    assert config_from_args(parser.parse_args(evaluate)).alpha == 0.85
    assert config_from_args(parser.parse_args([*evaluate, "--alpha", "0.5"])).alpha == 0.5


@pytest.mark.slow
def test_help_reads_well():
    proc = subprocess.run([sys.executable, "-m", "zsris.cli", "segment", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for flag in ("--backbone", "--weights", "--proposals", "--alpha", "--beta", "--device", "--top-k", "-o"):
        assert flag in proc.stdout


def test_a_second_image_is_not_taken_for_an_expression(tmp_path, capsys):
    """#25: `zsris segment a.png b.jpg "the dot"` segmented "b.jpg" as text, without a word."""
    from PIL import Image

    from zsris import EXAMPLE_IMAGE

    other = tmp_path / "b.jpg"
    Image.new("RGB", (16, 16)).save(other)
    code = main(["segment", str(EXAMPLE_IMAGE), str(other), "the dot", "-o", str(tmp_path / "out"),
                 "--weights", "random", "--max-proposals", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith(f"zsris: error: '{other}' is an image file, not an expression")
    assert not (tmp_path / "out").exists()
