"""What a new user meets first: help, missing extras, progress, warnings, weights, README snippets."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsris import EXAMPLE_IMAGE
from zsris.render import RANDOM_WEIGHTS_NOTE, WARNING_COLOUR, draw_overlay

REPO = Path(__file__).resolve().parents[1]
FAST = ["--weights", "random", "--max-proposals", "5"]
LONG = "the " + " ".join(f"very{i} big" for i in range(45)) + " dog"
LONGER = "a " + " ".join(f"small{i} red" for i in range(45)) + " cat"


def _zsris(*args: str, env: dict | None = None, timeout: int = 300, prelude: str = "") -> subprocess.CompletedProcess:
    """The real command line in a fresh interpreter; ``prelude`` runs first (to hide a module)."""
    code = f"import sys\n{prelude}\nfrom zsris.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_help_and_argument_errors_load_no_torch():
    probe = textwrap.dedent("""
        import sys
        from zsris.cli import main
        for argv in (["--help"], ["segment", "--help"], ["segment", "x.png", "a", "--max-proposals", "0"]):
            try:
                main(argv)
            except SystemExit:
                pass
        heavy = sorted(m for m in ("torch", "open_clip", "spacy", "gradio", "ray") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "must be at least 1, not 0" in proc.stderr


def test_serve_help_shows_the_port_and_the_extra():
    proc = _zsris("serve", "--help")
    assert proc.returncode == 0
    assert "(default: 7860)" in proc.stdout and "zsris[serve]" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("module, args, extra", [
    ("uvicorn", ["serve", "--weights", "random"], "serve"),
    ("gradio", ["serve", "--weights", "random"], "serve"),
    ("ray", ["eval", "--data", "nowhere", "--out", "nowhere", "--engine", "ray"], "ray"),
    ("segment_anything", ["segment", str(EXAMPLE_IMAGE), "a dog", "--proposals", "sam", "--sam-checkpoint", "random",
                          "--weights", "random"], "sam"),
    ("transformers", ["segment", str(EXAMPLE_IMAGE), "a dog", "--backbone", "hf:openai/clip-vit-base-patch32",
                      "--weights", "random"], "hf"),
])
def test_a_missing_extra_is_one_line_naming_it(module, args, extra):
    proc = _zsris(*args, prelude=f"sys.modules[{module!r}] = None  # as if not installed")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("zsris: error:") and f"pip install 'zsris[{extra}]'" in last, last


@pytest.mark.slow
def test_cli_warns_once_per_overlong_expression_and_marks_random_overlays(tmp_path):
    out = tmp_path / "out"
    proc = _zsris("segment", str(EXAMPLE_IMAGE), LONG, "the red circle", LONGER, LONG, "-o", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "truncated" in line]
    assert len(warned) == 2, proc.stderr  # LONG given twice is one expression's text: warned once
    assert any("very0 big" in line for line in warned) and any("small0 red" in line for line in warned)
    assert all(line.startswith("zsris: warning: expression of") for line in warned)
    overlays = sorted(out.glob("*.overlay.png"))
    assert len(overlays) == 4
    height = Image.open(EXAMPLE_IMAGE).height
    for path in overlays:
        band = np.asarray(Image.open(path).convert("RGB"))[height:]
        assert (np.abs(band.astype(int) - WARNING_COLOUR).sum(-1) < 60).sum() > 20, f"{path.name} lacks the note"


def test_overlay_warning_line_is_drawn_only_when_given():
    image = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB"))
    mask = np.zeros(image.shape[:2], bool)
    mask[10:40, 10:40] = True
    plain = np.asarray(draw_overlay(image, mask, (10, 10, 40, 40), "the red circle"))
    marked = np.asarray(draw_overlay(image, mask, (10, 10, 40, 40), "the red circle", warning=RANDOM_WEIGHTS_NOTE))
    assert marked.shape[0] > plain.shape[0]
    red = lambda a: (np.abs(a[image.shape[0]:].astype(int) - WARNING_COLOUR).sum(-1) < 60).sum()  # noqa: E731
    assert red(plain) == 0 and red(marked) > 20


def _segment_stderr(tty: bool, out: Path) -> str:
    args = [sys.executable, "-m", "zsris.cli", "segment", str(EXAMPLE_IMAGE), "the red circle", "-o", str(out), *FAST]
    if not tty:
        return subprocess.run(args, capture_output=True, text=True, timeout=300).stderr
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty has 0 columns
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=300)
    os.close(primary)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_segment_shows_its_stages_on_a_terminal_only(tmp_path):
    shown = _segment_stderr(True, tmp_path / "tty")
    for stage in ("segment: proposals", "segment: visual features", "segment: scoring"):
        assert stage in shown, shown
    assert re.search(r"\d/3 stages", shown) and ": :" not in shown
    assert "stages" not in _segment_stderr(False, tmp_path / "pipe")


@pytest.mark.slow
def test_weights_says_where_weights_come_from(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "ZSRIS_CLIP_WEIGHTS": "", "ZSRIS_SAM_CHECKPOINT": ""}
    no_weights = _zsris("segment", str(EXAMPLE_IMAGE), "the red circle", "-o", str(tmp_path / "out"), env=env)
    assert no_weights.returncode == 1 and no_weights.stderr.count("\n") == 1
    assert "--weights random" in no_weights.stderr and "`zsris weights` shows where" in no_weights.stderr
    missing = _zsris("weights", env=env)
    assert missing.returncode == 1
    assert "timm/vit_base_patch32_clip_224.openai" in missing.stdout
    assert "openaipublic.azureedge.net/clip/models/" in missing.stdout and "ViT-B-32.pt" in missing.stdout
    assert "none in the Hugging Face cache" in missing.stdout
    assert "sam_vit_h_4b8939.pth" in missing.stdout
    assert _zsris("weights", "--weights", "random", env=env).returncode == 0
    gone = _zsris("weights", "--weights", str(tmp_path / "nope.pt"), env=env)
    assert gone.returncode == 1 and "MISSING" in gone.stdout
    no_sam = _zsris("weights", "--weights", "random", "--proposals", "sam", env=env)
    assert no_sam.returncode == 1 and "--sam-checkpoint PATH" in no_sam.stdout


@pytest.mark.slow
def test_weights_placed_in_the_hugging_face_cache_load_offline(tmp_path):
    """The README's offline recipe: the open_clip file under HF_HOME is found and loaded, no network."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    hub = tmp_path / "hf" / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    snapshot = hub / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0123456789abcdef")
    torch.manual_seed(5)
    model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "open_clip_model.safetensors")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "ZSRIS_CLIP_WEIGHTS": ""}
    proc = _zsris("weights", "--load", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "open_clip_model.safetensors: found" in proc.stdout
    assert re.search(r"loaded CLIP ViT-B-32 \(openai\): 151\.\d M parameters", proc.stdout), proc.stdout


@pytest.mark.slow
def test_benchmarks_without_data_say_so_in_one_line(tmp_path):
    for script in ("segment_timing.py", "eval_throughput.py", "model_zoo.py"):
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--data", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.strip().count("\n") == 0 and "pass --data DIR" in proc.stderr, proc.stderr
