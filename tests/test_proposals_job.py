"""`zsris proposals`: a generator's proposals written once, read back by --proposals file
exactly (masks, scores, order and the generator's own boxes), resumed after an interruption."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zsris.cache import ProposalCache
from zsris.engine import image_task
from zsris.errors import ProposalError, ZsrisError
from zsris.jobs.proposals import ProposalsJob, image_tasks
from zsris.jobs.run import Execution
from zsris.proposals import ClassicalProposals, FileProposals
from zsris.types import Proposals


class ShiftedBoxes:
    """Classical proposals with boxes that are not the masks' tight ones, as FreeSOLO's are not."""

    name = "shifted"
    cache_key = "shifted-v1"

    def __init__(self) -> None:
        self.inner = ClassicalProposals(max_proposals=6)
        self.calls = 0

    def __call__(self, image, image_id=None) -> Proposals:
        self.calls += 1
        found = self.inner(image)
        return Proposals(found.masks, found.scores, found.boxes.astype(np.float32) - 0.5)


def _images(tmp_path, count=3):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = np.zeros((60, 80, 3), dtype=np.uint8)
        pixels[10 + 5 * i: 40, 15: 50 + 5 * i] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def test_written_proposals_read_back_exactly_with_their_boxes(tmp_path):
    folder = _images(tmp_path)
    generator = ShiftedBoxes()
    out = tmp_path / "props.json"
    summary = ProposalsJob(generator, image_tasks([folder]), out, Execution(progress=False)).run()
    assert summary.images == 3 and summary.made == 3 and not summary.failed
    assert not (tmp_path / "props.json.partial.jsonl").exists()
    reader = FileProposals(out)
    for path in sorted(folder.glob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        expected, got = generator(pixels), reader(pixels, path.name)
        assert np.array_equal(got.masks, expected.masks)
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6)
        np.testing.assert_array_equal(got.boxes, expected.boxes)


def test_an_interrupted_run_goes_on_where_it_stopped(tmp_path):
    folder = _images(tmp_path)
    tasks = image_tasks([folder])
    out = tmp_path / "props.json"
    first = ShiftedBoxes()
    ProposalsJob(first, tasks[:1], out, Execution(progress=False)).run()
    partial = tmp_path / "props.json.partial.jsonl"
    (tmp_path / "props.json").rename(tmp_path / "first.json")
    partial.write_text(json.dumps({"image": tasks[0].name,
                                   "proposals": json.loads((tmp_path / "first.json").read_text())[tasks[0].name]})
                       + "\n" + '{"image": "img1.png", "propos')  # the crash cut the second line short
    second = ShiftedBoxes()
    summary = ProposalsJob(second, tasks, out, Execution(progress=False)).run()
    assert summary.resumed == 1 and summary.made == 2 and second.calls == 2
    assert list(json.loads(out.read_text())) == [t.name for t in tasks]


def test_two_images_of_one_name_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / sub / "same.png")
    with pytest.raises(ZsrisError, match="two images are named same.png"):
        ProposalsJob(ShiftedBoxes(), [image_task("same.png", tmp_path / s / "same.png") for s in "ab"],
                     tmp_path / "p.json")


def test_the_cache_keeps_a_generators_own_boxes(tmp_path):
    cache = ProposalCache(tmp_path, "shifted-v1")
    masks = np.zeros((2, 10, 12), dtype=bool)
    masks[0, 2:5, 3:9] = masks[1, 6:9, 0:4] = True
    proposals = Proposals(masks, np.array([0.9, 0.5]), np.array([[2.5, 1.5, 8.5, 4.5], [-0.5, 5.5, 3.5, 8.5]]))
    cache.put("key", proposals, 1.0)
    got, _ = cache.get("key")
    np.testing.assert_array_equal(got.boxes, proposals.boxes.astype(np.float32))


def test_a_malformed_box_in_a_proposals_file_names_the_image(tmp_path):
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    from zsris.masks import encode_rle

    path = tmp_path / "p.json"
    path.write_text(json.dumps({"x.png": [{"segmentation": encode_rle(mask), "score": 1, "box": [9, 1, 2, 4]}]}))
    with pytest.raises(ProposalError, match="malformed proposal for image 'x.png'.*x1 <= x2"):
        FileProposals(path)(np.zeros((10, 12, 3), dtype=np.uint8), "x.png")


def test_the_command_refuses_images_and_a_dataset_together(tmp_path):
    done = subprocess.run([sys.executable, "-m", "zsris.cli", "proposals", str(tmp_path), "--data", str(tmp_path),
                           "-o", str(tmp_path / "p.json")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("zsris: error: give images")


def test_the_command_writes_what_file_proposals_read(tmp_path):
    folder = _images(tmp_path, 2)
    out = tmp_path / "classical.json"
    done = subprocess.run([sys.executable, "-m", "zsris.cli", "proposals", str(folder), "--max-proposals", "5",
                           "--proposal-workers", "0", "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--proposals file --proposals-path" in done.stdout
    pixels = np.asarray(Image.open(folder / "img1.png").convert("RGB"))
    expected = ClassicalProposals(max_proposals=5)(pixels)
    assert np.array_equal(FileProposals(out)(pixels, "img1.png").masks, expected.masks)


def test_a_resume_checks_the_settings_and_the_images_and_one_run_owns_the_output(tmp_path):
    """#38: a resume with another generator mixed two generators' proposals in one file; one after
    an image was replaced kept the old image's; two runs on one output failed on each other's file."""
    from zsris.store import lock_file

    folder = _images(tmp_path)
    tasks = image_tasks([folder])
    out = tmp_path / "props.json"
    partial = tmp_path / "props.json.partial.jsonl"
    (tmp_path / "bad.png").write_bytes(b"not a png")  # it fails, so the partial file stays
    ProposalsJob(ShiftedBoxes(), [*tasks[:2], image_task("bad.png", tmp_path / "bad.png")], out,
                 Execution(progress=False)).run()
    assert json.loads(partial.read_text().split("\n")[0]) == {"generator": "shifted-v1"}
    other = ShiftedBoxes()
    other.cache_key = "shifted-v2"
    with pytest.raises(ZsrisError, match="made by shifted-v1, not by this run's shifted-v2"):
        ProposalsJob(other, tasks, out, Execution(progress=False)).run()
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(folder / "img0.png")  # replaced: another size
    again = ShiftedBoxes()
    summary = ProposalsJob(again, tasks, out, Execution(progress=False)).run()
    assert summary.resumed == 1 and again.calls == 2  # img0 made again, img1 resumed, img2 new
    masks = FileProposals(out)(np.zeros((30, 40, 3), np.uint8), "img0.png").masks
    assert masks.shape[1:] == (30, 40)
    handle = lock_file(tmp_path / "props.json.lock", str(out), "-o")
    try:
        with pytest.raises(ZsrisError, match="in use by another zsris process"):
            ProposalsJob(ShiftedBoxes(), tasks, out, Execution(progress=False)).run()
    finally:
        import os

        os.close(handle)
