"""What a new user tripped on in their first week: a job in a script without a main guard, a batch
that read its own outputs, `segment` checking its output folder after the work."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

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


def test_help_and_messages_say_what_holds(capsys, monkeypatch, tmp_path):
    from zsris.errors import WeightsError
    from zsris.proposals.freesolo import FREESOLO_CHECKPOINT_ENV, resolve_checkpoint
    from zsris.report import TITLE_WIDTH, histogram_title

    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    assert "CPU with bf16 units" in " ".join(capsys.readouterr().out.split())  # not "CUDA only"
    monkeypatch.delenv(FREESOLO_CHECKPOINT_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="--freesolo-checkpoint random for an untrained model"):
        resolve_checkpoint(None)
    title = "refcoco val (ViT-B/32, classical), RANDOM WEIGHTS: these figures mean nothing at all"
    lines = histogram_title(title).split("\n")
    assert len(lines) > 1 and all(len(line) <= TITLE_WIDTH for line in lines) and " ".join(lines) == title


def test_a_progress_bar_in_a_log_writes_lines(capsys):
    from zsris.jobs.run import progress_bar

    with progress_bar(3, 0, "eval", True, lambda: "saved") as bar:
        for _ in range(3):
            bar.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err and "3/3" in err.splitlines()[-1]


@pytest.fixture()
def image_server(tmp_path):
    """A web server on 127.0.0.1 serving ``tmp_path``."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_images_by_url(image_server, tmp_path, capsys):
    from zsris import images
    from zsris.errors import ImageError, ImageTooLargeError

    _image(tmp_path / "photo.png")
    url = f"{image_server}/photo.png"
    assert np.array_equal(images.load_image(url), images.load_image(tmp_path / "photo.png"))
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        images.load_image(url, max_pixels=100)  # the header's size, before decoding
    with pytest.raises(ImageError, match="answered 404"):
        images.load_image(f"{image_server}/missing.png")
    with pytest.raises(ImageTooLargeError, match="over 100 bytes"):
        images.fetch_url(url, max_bytes=100)
    assert main(["segment", "http://127.0.0.1:9/photo.png", "the cat", "--weights", "random"]) != 0
    err = capsys.readouterr().err
    assert "cannot be fetched" in err and "offline" in err and "Traceback" not in err


PLUGIN = '''
import numpy as np

from zsris.methods.global_local import GlobalLocal
from zsris.methods.registry import MethodEntry
from zsris.types import Proposals


class Scaled(GlobalLocal):
    """The paper's scores times a setting of its own."""

    name = "scaled"

    def __init__(self, config, encoder):
        super().__init__(encoder, config.alpha, config.beta, config.fusion)
        self.scale = config.method.options["scale"]

    def scores(self, features, parsed, phrases):
        table = super().scores(features, parsed, phrases)
        table.fused = table.fused * self.scale
        return table


METHOD = MethodEntry("zsris_plugin_example:Scaled", {"scale": 2.0}, summary="the paper's scores, scaled")
NOT_AN_ENTRY = 42


class Quarters:
    name = "quarters"
    cache_key = "quarters-v1"

    def __call__(self, image, image_id=None):
        height, width = image.shape[:2]
        masks = np.zeros((4, height, width), bool)
        for number, (rows, cols) in enumerate([(slice(0, height // 2), slice(0, width // 2)),
                                               (slice(0, height // 2), slice(width // 2, None)),
                                               (slice(height // 2, None), slice(0, width // 2)),
                                               (slice(height // 2, None), slice(width // 2, None))]):
            masks[number, rows, cols] = True
        return Proposals(masks, np.ones(4))


def quarters(spec, device):
    return Quarters()
'''


def _plugin_package(folder, group: str = "zsris.methods", proposals_group: str = "zsris.proposals"):
    """A small package, installed as Python finds installed packages: a module and its dist-info."""
    (folder / "zsris_plugin_example.py").write_text(PLUGIN)
    info = folder / "zsris_plugin_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zsris-plugin-example\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{group}]\nscaled = zsris_plugin_example:METHOD\nbroken = zsris_plugin_missing:METHOD\n"
        f"global-local = zsris_plugin_example:METHOD\nodd = zsris_plugin_example:NOT_AN_ENTRY\n\n"
        f"[{proposals_group}]\nquarters = zsris_plugin_example:quarters\n")


def test_plugins_join_a_registry_and_a_broken_one_is_one_warning(tmp_path, monkeypatch):
    from zsris.factories import add_plugins
    from zsris.methods.registry import METHOD_REGISTRY, MethodEntry

    _plugin_package(tmp_path, "zsris.test-methods", "zsris.test-proposals")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = dict(METHOD_REGISTRY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_plugins(registry, "zsris.test-methods", MethodEntry)
    assert registry["scaled"].options == {"scale": 2.0} and registry["global-local"] is METHOD_REGISTRY["global-local"]
    said = sorted(str(w.message) for w in caught)
    assert len(said) == 3 and all(m.startswith("zsris: the plug-in") and "\n" not in m for m in said)
    assert "'broken'" in said[0] and "ModuleNotFoundError" in said[0]
    assert "'global-local'" in said[1] and "zsris has its own" in said[1] and "'odd'" in said[2]
    assert "odd" not in registry and "broken" not in registry


@pytest.mark.slow
def test_an_installed_plugin_is_offered_by_every_command(tmp_path):
    _plugin_package(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    run = [sys.executable, "-m", "zsris.cli"]
    shown = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0
    assert [line for line in shown.stderr.splitlines() if "plug-in" in line] == [
        line for line in shown.stderr.splitlines() if line.startswith("zsris:")] and "'broken'" in shown.stderr
    example = tmp_path / "photo.png"
    _image(example)
    done = subprocess.run([*run, "segment", str(example), "the top left quarter", "--method", "scaled:scale=3",
                           "--proposals", "quarters", "--weights", "random", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["settings"]["method"] == {"name": "scaled", "options": {"scale": 3}}
    assert record["settings"]["proposals"]["name"] == "quarters" and len(record["top_proposals"]) == 4
    weights = subprocess.run([*run, "weights", "--proposals", "quarters", "--weights", "random"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert weights.returncode == 0, weights.stderr[-2000:]
