"""The pipelined engine: same results as serial, failures per image, clean stops, no orphans."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsris import EXAMPLE_IMAGE
from zsris.config import ProposalSpec
from zsris.engine import Engine, Prepared, Preparer, image_task
from zsris.errors import ZsrisError
from zsris.types import Proposals

from conftest import count_rows

FAST = ["--weights", "random", "--max-proposals", "8"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Three real image files (the example, flipped and darkened) and one that is not an image."""
    folder = tmp_path_factory.mktemp("images")
    pixels = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB"))
    paths = []
    for number, variant in enumerate((pixels, pixels[:, ::-1], pixels // 2)):
        path = folder / f"image{number}.png"
        Image.fromarray(np.ascontiguousarray(variant)).save(path)
        paths.append(path)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [*paths[:2], folder / "broken.png", paths[2]]


def _run(engine: Engine, tasks) -> list:
    seen = []
    times = engine.run(tasks, seen.append)
    return seen, times


@pytest.mark.slow
def test_workers_give_what_one_process_gives_in_order(images, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the workers' files wait
    tasks = [image_task(number, path) for number, path in enumerate(images)]
    preparer = Preparer(ProposalSpec(max_proposals=6))
    serial, _ = _run(Engine(preparer, 0), tasks)
    pooled, times = _run(Engine(preparer, 2, ahead=1), tasks)
    assert [p.key for p in pooled] == [0, 1, 2, 3]
    for a, b in zip(serial, pooled):
        assert (a.error is None) == (b.error is None)
        if a.error is None:
            np.testing.assert_array_equal(a.pixels, b.pixels)
            np.testing.assert_array_equal(a.proposals.masks, b.proposals.masks)
            np.testing.assert_array_equal(a.proposals.scores, b.proposals.scores)
            np.testing.assert_array_equal(a.proposals.boxes, b.proposals.boxes)
    assert "broken.png" in pooled[2].error and pooled[3].error is None  # one bad image, the run goes on
    summary = times.summary()
    assert summary["images"] == 4 and summary["images_failed"] == 1 and summary["proposal_workers"] == 2
    assert 0 <= summary["busy_workers"] <= 1 and summary["seconds_per_image"] > 0
    assert list(tmp_path.glob("zsris-engine-*")) == []  # every file read and the spool removed


def test_a_size_that_disagrees_with_the_annotations_fails_that_image(images):
    tasks = [image_task("wrong", images[0], size=(3, 4)), image_task("right", images[1])]
    prepared, _ = _run(Engine(Preparer(None), 0), tasks)
    assert "its annotations say 4x3" in prepared[0].error and prepared[1].pixels is not None
    assert prepared[1].proposals is None  # no spec: decoding only


def _descendants(pid: int) -> set[int]:
    """Children, grandchildren ...: the workers are forked by a fork server, the parent's child."""
    try:
        children = {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()
    return children.union(*(_descendants(child) for child in children))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _rows(database: Path) -> int:
    return count_rows(database, "predictions")


def _eval(refcoco_mini: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "zsris.cli", "eval", "--data", str(refcoco_mini), "--dataset", "refcoco",
            "--split", "train", "--out", str(out), "--limit", "8", "--no-cache", "--proposal-workers", "2",
            *FAST, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGKILL", "SIGINT"])
def test_workers_end_with_their_parent(refcoco_mini, tmp_path, stop):
    """SIGKILL (the OOM killer) leaves no orphan; Ctrl-C (SIGINT to the whole group) stops cleanly."""
    out, spools = tmp_path / "run", tmp_path / "tmp"
    spools.mkdir()
    process = subprocess.Popen(_eval(refcoco_mini, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, env={**os.environ, "TMPDIR": str(spools)})
    deadline = time.time() + 240
    workers: set[int] = set()
    database = out / "predictions.sqlite"
    while time.time() < deadline and process.poll() is None and (len(workers) < 3 or _rows(database) < 2):
        workers |= _descendants(process.pid)
        time.sleep(0.2)
    assert process.poll() is None and len(workers) >= 3, "the run should be under way with its workers"
    saved = _rows(database)
    if stop == "SIGKILL":
        process.kill()
    else:
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = process.communicate(timeout=120)
    gone = time.time() + 10
    while any(_alive(pid) for pid in workers) and time.time() < gone:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "worker processes outlived their parent"
    assert list(spools.glob("zsris-engine-*")) == [], "the workers' files outlived the run"
    assert _rows(database) >= saved  # nothing committed is lost
    if stop == "SIGINT":
        assert process.returncode == 130 and "Run the same command again to resume" in err, err[-3000:]
        assert "Traceback" not in err


@pytest.mark.slow
def test_an_image_whose_proposals_fail_is_counted_and_the_run_goes_on(refcoco_mini, tmp_path):
    from zsris.datasets import ReferDataset

    dataset = ReferDataset(refcoco_mini, "refcoco")
    ids = list(dataset.refs_by_image("train", 3))
    bad = dataset.images[ids[1]].file_name
    records = {dataset.images[i].file_name: [] for i in ids}  # no proposals at all: fine, counted as such
    records[bad] = [{"segmentation": {"size": [1, 1], "counts": "x"}}]  # malformed: the generator raises
    (tmp_path / "proposals.json").write_text(json.dumps(records))
    out = tmp_path / "run"
    proc = subprocess.run(_eval(refcoco_mini, out, "--proposals", "file", "--proposals-path",
                                str(tmp_path / "proposals.json"), "--limit", "3"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["metrics"]["images failed"] == 1 and result["timing"]["images_failed"] == 1
    with sqlite3.connect(out / "predictions.sqlite") as connection:
        failed = [json.loads(r[0]) for r in connection.execute("SELECT record FROM predictions")]
    failed = [r for r in failed if r.get("error")]
    assert failed and all(r["image_id"] == ids[1] and "malformed proposal" in r["error"] for r in failed)
    report = (out / "report.md").read_text()
    assert "## Time" in report
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]  # #38: named, not counted
    assert [e["image_id"] for e in errors] == [ids[1]] and "malformed proposal" in errors[0]["error"]
    assert f"image {ids[1]} ({len(failed)} sentences" in report and "errors.jsonl" in proc.stderr


def test_a_generator_loaded_here_serves_the_in_process_engine_only(images):
    from zsris.errors import ZsrisError
    from zsris.proposals import ClassicalProposals

    loaded = ClassicalProposals(max_proposals=3)
    engine = Engine(Preparer(ProposalSpec(max_proposals=50)), 0, generator=loaded)
    prepared, _ = _run(engine, [image_task(0, images[0])])
    assert 1 <= len(prepared[0].proposals) <= 3  # the loaded generator's cap, not the spec's
    with pytest.raises(ZsrisError, match="cannot serve worker processes"):
        Engine(Preparer(), 2, generator=loaded)


@pytest.mark.slow
def test_a_generator_loaded_here_prepares_ahead_in_a_thread_in_order(images):
    """SAM on the device: the next images' proposals are made while the caller works on this one."""
    import threading

    from zsris.proposals import ClassicalProposals

    loaded, threads = ClassicalProposals(max_proposals=4), []

    def generator(pixels, name=None):
        threads.append(threading.current_thread().name)
        return loaded(pixels, name)

    generator.cache_key = loaded.cache_key
    tasks = [image_task(number, path) for number, path in enumerate(images)]
    inline, _ = _run(Engine(Preparer(), 0, ahead=0, generator=generator), tasks)
    assert set(threads) == {threading.current_thread().name}
    threads.clear()
    ahead, times = _run(Engine(Preparer(), 0, ahead=2, generator=generator), tasks)
    assert threads and all(name.startswith("zsris-prepare") for name in threads)
    assert [p.key for p in ahead] == [0, 1, 2, 3] and "broken.png" in ahead[2].error
    for a, b in zip(inline, ahead):
        if a.error is None:
            np.testing.assert_array_equal(a.proposals.masks, b.proposals.masks)
    assert times.images == 4 and len(times.failed) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_groups_are_consecutive_images_in_order_whatever_the_timing(images, workers):
    """Groups of 3 over 5 tasks: [0, 1, 2] then [3, 4], failures kept in their place, each image
    counted once; the order alone decides the groups, so results do not depend on timing."""
    tasks = [image_task(number, path) for number, path in enumerate([*images, images[0]])]
    engine = Engine(Preparer(None), workers, ahead=1)
    seen = [[p.key for p in group] for group in engine.groups(tasks, 3)]
    assert seen == [[0, 1, 2], [3, 4]]
    assert engine.times.images == 5 and [key for key, _ in engine.times.failed] == [2]
    assert engine.times.first_seconds is not None and engine.times.wall_seconds >= engine.times.first_seconds
    with pytest.raises(ZsrisError, match="1 or more"):
        next(Engine(Preparer(None), 0).groups(tasks, 0))


@pytest.mark.slow
def test_leaving_the_groups_early_stops_the_workers_at_once(images, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    groups = Engine(Preparer(None), 2).groups([image_task(n, p) for n, p in enumerate(images)], 2)
    assert len(next(groups)) == 2
    groups.close()
    assert list(tmp_path.glob("zsris-engine-*")) == []  # the pool shut down and its spool removed


def test_a_ctrl_c_lost_in_a_finaliser_still_stops_the_engine_at_the_next_image(images):
    """Python drops a KeyboardInterrupt raised inside a __del__; the stop event the CLI hands
    the engine catches it, between two images."""
    import threading

    seen, stop = [], threading.Event()
    with pytest.raises(KeyboardInterrupt):
        for prepared in Engine(Preparer(None), 0, stop=stop).iterate([image_task(n, p) for n, p in enumerate(images)]):
            seen.append(prepared.key)
            stop.set()
    assert seen == [0]


def test_one_rule_says_where_proposals_are_made(tmp_path):
    """A model on the device (SAM), or a generator without a spec, runs in this process one image
    ahead; generators rebuilt from their spec go to the worker processes; ground-truth proposals
    (no generator) leave the workers only the decoding. Eval and batch share the rule."""
    from zsris.engine import engine_for
    from zsris.jobs.evaluation import DataSpec
    from zsris.jobs.run import Execution
    from zsris.proposals import ClassicalProposals

    class SamLike(ClassicalProposals):
        spec = ProposalSpec("sam", 3)

    class Specless(ClassicalProposals):
        spec = None

    classical = ClassicalProposals(max_proposals=3)
    for loaded in (SamLike(max_proposals=3), Specless(max_proposals=3)):
        here = engine_for(loaded, 3)
        assert here.workers == 0 and here.generator is loaded and here.ahead >= 1
    pooled = engine_for(classical, 3, max_pixels=1000)
    assert pooled.workers == 3 and pooled.generator is None and pooled.preparer.spec == classical.spec
    custom = ClassicalProposals(max_proposals=3, scales=(50,))  # non-default settings: its spec says them
    assert engine_for(custom, 3).preparer.spec == custom.spec and custom.spec.options["scales"] == [50]
    assert engine_for(classical, 0).generator is classical
    data = DataSpec(str(tmp_path), "refcoco", no_cache=True, gt_proposals=True)
    decode_only = data.engine(Execution(proposal_workers=3), classical, 1000)
    assert decode_only.workers == 3 and decode_only.preparer.spec is None and not decode_only.preparer.exif_transpose


@pytest.mark.slow
def test_a_worker_stuck_on_one_image_is_stopped_and_the_others_go_on(images, monkeypatch, tmp_path):
    """#26: an image whose preparation never ends used to block its worker and every image behind it."""
    from zsris.engine import engine_for
    from zsris.proposals import PROPOSAL_REGISTRY, create_proposals, register_generator

    monkeypatch.setitem(PROPOSAL_REGISTRY, "hangs", None)
    register_generator("hangs", "hanging_generator:factory")
    stuck = tmp_path / "hang.png"
    stuck.write_bytes(Path(images[0]).read_bytes())
    tasks = [image_task(0, stuck), image_task(1, images[0]), image_task(2, images[1])]
    engine = engine_for(create_proposals("hangs"), 1, image_timeout=15)  # the workers' start-up counts too
    assert engine.workers == 1
    started = time.perf_counter()
    prepared, _ = _run(engine, tasks)
    assert time.perf_counter() - started < 90
    assert [p.key for p in prepared] == [0, 1, 2]
    assert "took over 15 s (--image-timeout)" in prepared[0].error
    assert prepared[1].error is None and prepared[2].error is None and len(prepared[2].proposals) > 0


@pytest.mark.slow
def test_a_generator_registered_at_run_time_is_rebuilt_in_the_workers(images, monkeypatch):
    """The workers learn a generator their parent registered (its entry travels with the spec);
    one whose factory cannot travel (a lambda) runs here instead."""
    from zsris.engine import engine_for
    from zsris.proposals import PROPOSAL_REGISTRY, create_proposals, register_generator

    monkeypatch.setitem(PROPOSAL_REGISTRY, "classical-again", None)
    register_generator("classical-again", "zsris.proposals.classical:from_spec")
    generator = create_proposals("classical-again", max_proposals=5)
    engine = engine_for(generator, 1)
    assert engine.workers == 1 and engine.preparer.entry is PROPOSAL_REGISTRY["classical-again"]
    pooled, _ = _run(engine, [image_task(0, images[0])])
    expected = create_proposals("classical", max_proposals=5)(pooled[0].pixels)
    np.testing.assert_array_equal(pooled[0].proposals.masks, expected.masks)
    monkeypatch.setitem(PROPOSAL_REGISTRY, "inline", None)
    register_generator("inline", lambda spec, device: create_proposals("classical", max_proposals=spec.max_proposals))
    inline = create_proposals("inline", max_proposals=5)
    assert engine_for(inline, 1).workers == 0 and engine_for(inline, 1).generator is inline


@pytest.mark.parametrize("width", [13, 640])
def test_masks_cross_processes_packed_and_unpack_on_the_device_as_they_were(width):
    """#23: what a worker or a Ray task sends (masks 8 pixels a byte) comes back whole, prompts and
    presence too; the packed bytes stay with the proposals, and unpacking them on the device (a
    GPU's upload: an eighth of the bytes) gives the masks bit for bit, a selection's too."""
    import pickle

    import torch

    from zsris.engine import pack_prepared, unpack_prepared
    from zsris.errors import ProposalError
    from zsris.visual import masks_on

    rng = np.random.default_rng(width)
    masks = rng.random((5, 7, width)) > 0.6
    proposals = Proposals(masks, rng.random(5), prompts=["", "cat", "cat", "", "dog"], presence={"cat": 0.9})
    sent = pickle.loads(pickle.dumps(pack_prepared(Prepared("key", np.zeros((7, width, 3), np.uint8), proposals))))
    back = unpack_prepared(sent).proposals
    assert np.array_equal(back.masks, masks) and np.array_equal(back.boxes, proposals.boxes)
    assert np.array_equal(back.areas, proposals.areas) and np.array_equal(back.scores, proposals.scores)
    assert list(back.prompts) == list(proposals.prompts) and back.presence == {"cat": 0.9}
    assert np.array_equal(back.packed, np.packbits(masks, axis=-1))
    assert torch.equal(masks_on(back, torch.device("cpu"), packed=True), torch.from_numpy(masks))
    assert torch.equal(masks_on(back, torch.device("cpu")), torch.from_numpy(masks))  # the CPU: as they lie
    chosen = back.select(np.array([4, 1]))
    assert torch.equal(masks_on(chosen, torch.device("cpu"), packed=True), torch.from_numpy(masks[[4, 1]]))
    with pytest.raises(ProposalError, match="do not pack 5 masks of 7x"):
        Proposals(masks, np.ones(5), packed=np.packbits(masks[:, :, :-8], axis=-1))


def test_masks_in_any_memory_layout_give_the_same_features(tiny_vit):
    """Proposals keep their masks row-major whatever made them: pycocotools decodes column-major
    (a file's, the cache's, ground truth), a worker's unpacked masks are row-major, and on an AMD
    EPYC the masks' matrix products summed in another order for each layout, so
    --proposal-workers 0 scored 1e-8 away from the workers."""
    import torch

    from zsris.proposals import ClassicalProposals
    from zsris.segmenter import Segmenter

    masks = np.zeros((3, 120, 160), bool)
    masks[0, :10, :10] = masks[1, 20:60, 30:90] = masks[2, 60:, :] = True
    column = np.ascontiguousarray(masks.transpose(0, 2, 1)).transpose(0, 2, 1)  # pycocotools' layout
    assert np.array_equal(column, masks) and not column.flags.c_contiguous
    kept = Proposals(column, np.ones(3))
    assert kept.masks.flags.c_contiguous and np.array_equal(kept.masks, masks)
    segmenter = Segmenter(tiny_vit, ClassicalProposals(max_proposals=3))
    pixels = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    here = segmenter.image_features(pixels, proposals=kept).visual_features
    sent = segmenter.image_features(pixels, proposals=Proposals(masks.copy(), np.ones(3))).visual_features
    assert torch.equal(here, sent)
