"""Ray that uses the machines it is given (#23): one actor per GPU (or a share of one), each on
the GPU Ray assigns it; a cluster without the GPUs asked for is refused before any work; an
actor that dies has its images retried once on another, then recorded as failures; an eval
spread over a two-node cluster, one node removed mid-run, gives the local run's metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from zsris.errors import ZsrisError
from zsris.jobs.run import Execution, run_ray

from conftest import count_rows

pytestmark = pytest.mark.slow  # Ray clusters start here
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def fake_gpus():
    """Ray on this machine with two GPUs it is told exist: scheduling and assignment are Ray's
    real ones; no CUDA work is asked of them."""
    here = os.path.dirname(os.path.abspath(__file__))  # the tasks import this folder's test generators by name
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, saved]))
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved


def _reporter_factory():
    """A worker builder that reports which GPUs its actor sees (nested, so that Ray ships it by
    value: the actors cannot import this test module)."""
    def build():
        def report(job: int) -> tuple[int, str, tuple]:
            import os

            import ray
            return job, os.environ.get("CUDA_VISIBLE_DEVICES", ""), tuple(str(g) for g in ray.get_gpu_ids())
        return report
    return build


_reporter = _reporter_factory()


def test_each_actor_gets_a_gpu_of_its_own(fake_gpus):
    answers: list = []
    run_ray(_reporter, [(n,) for n in range(8)], answers.append, workers=2, gpus_per_worker=1)
    assert sorted(job for job, _, _ in answers) == list(range(8))
    assigned = {gpus for _, _, gpus in answers}
    assert assigned == {("0",), ("1",)}  # two actors, two different devices
    assert {visible for _, visible, _ in answers} == {"0", "1"}  # and each sees only its own


def test_a_fraction_of_a_gpu_shares_one(fake_gpus):
    answers: list = []
    run_ray(_reporter, [(n,) for n in range(6)], answers.append, workers=2, gpus_per_worker=0.5)
    assert len(answers) == 6 and len({gpus for _, _, gpus in answers}) == 1  # two actors, half a GPU each: one GPU


def test_a_cluster_without_the_cores_for_every_worker_is_refused(fake_gpus):
    with pytest.raises(ZsrisError, match="3 Ray workers need a CPU each; the Ray cluster has 2"):
        run_ray(_reporter, [(1,)], lambda answer: pytest.fail("work ran"), workers=3)


def test_a_cluster_without_the_gpus_asked_for_is_one_line_before_any_work(fake_gpus):
    started = time.perf_counter()
    with pytest.raises(ZsrisError, match="2 Ray workers with --gpus-per-worker 1.5 need 3 GPUs; the Ray cluster has 2"):
        run_ray(_reporter, [(1,)], lambda answer: pytest.fail("work ran"), workers=2, gpus_per_worker=1.5)
    assert time.perf_counter() - started < 10  # refused, not waiting for GPUs that never come


def test_the_default_is_one_gpu_per_worker_on_cuda_only():
    assert Execution(engine="ray").ray_gpus("cuda") == 1 and Execution(engine="ray").ray_gpus("cpu") == 0
    assert Execution(engine="ray", gpus_per_worker=0.25).ray_gpus("cuda") == 0.25
    with pytest.raises(ZsrisError, match="GPUs per worker must be 0 or more"):
        Execution(engine="ray", gpus_per_worker=-1)


def test_a_dying_actor_has_its_jobs_retried_once_then_failed(fake_gpus, tmp_path):
    marker = str(tmp_path / "died-once")

    def build():
        def work(job: str) -> str:
            import time

            if job == "always dies" or (job == "dies once" and not os.path.exists(marker)):
                if job == "dies once":
                    open(marker, "w").close()
                time.sleep(1)  # the answer of the job before this one reaches the driver first
                os._exit(1)  # the actor's process dies, as out of memory or a lost node would end it
            return job
        return work

    answers, failures = [], []
    jobs = [("fine 1",), ("dies once",), ("fine 2",), ("always dies",), ("fine 3",), ("fine 4",)]
    # one actor: its jobs run in a known order (the replacements included)
    run_ray(build, jobs, answers.append, workers=1, on_failure=lambda job, why: failures.append((job, why)))
    assert sorted(answers) == ["dies once", "fine 1", "fine 2", "fine 3", "fine 4"], (answers, failures)
    assert len(failures) == 1 and failures[0][0] == ("always dies",)
    assert "failed twice" in failures[0][1] and "died" in failures[0][1]


def test_an_eval_over_two_nodes_with_one_removed_mid_run_gives_the_local_metrics(refcoco_mini, tmp_path):
    from ray.cluster_utils import Cluster

    common = ["eval", "--data", str(refcoco_mini), "--dataset", "refcoco", "--split", "train", "--limit", "8",
              "--weights", "random", "--max-proposals", "6"]
    env = {**os.environ, "RAY_DISABLE_IMPORT_WARNING": "1"}
    local = subprocess.run([sys.executable, "-m", "zsris.cli", *common, "--out", str(tmp_path / "local")],
                           capture_output=True, text=True, timeout=600, env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "cluster"
        run = subprocess.Popen([sys.executable, "-m", "zsris.cli", *common, "--out", str(out), "--engine", "ray",
                                "--workers", "2", "--ray-address", cluster.address],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + 300
        while count_rows(out / "predictions.sqlite", "predictions") == 0 and run.poll() is None:
            assert time.time() < deadline, "no prediction committed in 300 s"
            time.sleep(0.5)
        cluster.remove_node(node)  # the second node, and the actor on it, gone mid-run
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
    finally:
        cluster.shutdown()
    metrics = [json.loads((folder / "metrics.json").read_text())["metrics"] for folder in (tmp_path / "local", out)]
    assert metrics[0] == metrics[1]
    assert metrics[0]["images"] == 8


def _image_folder(tmp_path, count: int):
    """``count`` small photos (crops of the bundled example, each its own file)."""
    from PIL import Image

    from zsris import EXAMPLE_IMAGE

    base = Image.open(EXAMPLE_IMAGE).convert("RGB")
    paths = []
    for n in range(count):
        path = tmp_path / f"image{n}.png"
        base.crop((4 * n, 0, 4 * n + 160, 120)).save(path)
        paths.append(str(path))
    return paths


def _prepared_reporter_factory():
    """A worker builder whose worker reports, for the image a Ray task prepared, its process, the
    proposals it was given and how many images had been started by then (nested: shipped by value)."""
    def build():
        def report(key: str, notes: str, prepared=None) -> tuple:
            import os
            import time
            from pathlib import Path

            started = len(list(Path(notes).glob("*.started")))  # before this job's own work
            time.sleep(0.5)  # a model stage slower than the preparation: the tasks could run far ahead
            return (key, os.getpid(), started, prepared is not None and prepared.error is None,
                    None if prepared is None or prepared.proposals is None else prepared.proposals.masks.copy())
        return report
    return build


_prepared_reporter = _prepared_reporter_factory()


def test_gpu_actors_are_fed_by_cpu_tasks_on_the_free_cores_a_bounded_way_ahead(fake_gpus, monkeypatch, tmp_path):
    """One GPU actor on a two-core cluster: its images are decoded and given proposals by Ray
    tasks on the other core (another process), each exactly as the local engine prepares it, and
    no more than one image beyond the two the actor holds is started before the actor needs it."""
    from zsris.engine import Preparer, image_task
    from zsris.jobs.run import RayPreparation
    from zsris.proposals import PROPOSAL_REGISTRY, create_proposals, register_generator

    monkeypatch.setitem(PROPOSAL_REGISTRY, "records", None)
    register_generator("records", "recording_generator:factory", {"folder": None})
    notes = tmp_path / "notes"
    notes.mkdir()
    generator = create_proposals("records", folder=str(notes))
    from zsris.engine import worker_preparer

    preparer = worker_preparer(generator)
    assert preparer.spec is not None  # the tasks rebuild the generator
    paths = _image_folder(tmp_path, 8)
    answers: list = []
    preparation = RayPreparation(preparer, lambda job: image_task(job[0], job[0]), "auto")
    run_ray(_prepared_reporter, [(path, str(notes)) for path in paths], answers.append, workers=1,
            gpus_per_worker=1, preparation=preparation)
    assert sorted(a[0] for a in answers) == paths
    actor_pid = {a[1] for a in answers}
    assert len(actor_pid) == 1 and all(a[3] for a in answers)
    task_pids = {int(note.read_text().split()[0]) for note in notes.glob("*.started")}
    assert task_pids and not task_pids & actor_pid  # prepared elsewhere than in the actor
    local = Preparer(None).build(create_proposals("records", folder=str(tmp_path)))
    for key, _, _, _, masks in answers:
        assert np.array_equal(masks, local(image_task(key, key)).proposals.masks)
    order = sorted(answers, key=lambda a: paths.index(a[0]))
    ahead = [started - position for position, (_, _, started, _, _) in enumerate(order)]
    assert max(ahead) <= 3, ahead  # the one it runs, the one it holds, one for the spare core


def test_cpu_actors_prepare_their_own_images_unless_told(fake_gpus):
    from zsris.engine import Preparer
    from zsris.jobs.run import RayPreparation

    preparation = RayPreparation(Preparer(None), lambda job: None, "auto")
    assert preparation.cores_ahead(1, 0) == 0 and preparation.cores_ahead(1, 1) == 1
    assert RayPreparation(Preparer(None), lambda job: None, "tasks").cores_ahead(1, 0) == 1
    assert RayPreparation(Preparer(None), lambda job: None, "actors").cores_ahead(1, 1) == 0
    with pytest.raises(ZsrisError, match="--ray-prepare tasks needs a CPU beyond the 2 Ray workers' own; "
                                         "the Ray cluster has 2"):
        RayPreparation(Preparer(None), lambda job: None, "tasks").cores_ahead(2, 0)
    assert RayPreparation(Preparer(None), lambda job: None, "auto").cores_ahead(2, 1) == 0  # no core to spare
    with pytest.raises(ZsrisError, match="unknown Ray preparation 'gpu'"):
        Execution(engine="ray", ray_prepare="gpu")
    assert Execution(engine="ray", ray_workers=1).ray_cpus("cpu") == 1
    assert Execution(engine="ray", ray_workers=1).ray_cpus("cuda") >= 2


def test_an_image_whose_preparation_kills_its_process_fails_alone(fake_gpus, monkeypatch, tmp_path):
    """A preparation task's process that dies (twice: Ray tries it once more) fails its image with
    the reason; the actor lives and the other images are answered."""
    from zsris.engine import image_task, worker_preparer
    from zsris.jobs.run import RayPreparation
    from zsris.proposals import PROPOSAL_REGISTRY, create_proposals, register_generator

    monkeypatch.setitem(PROPOSAL_REGISTRY, "records", None)
    register_generator("records", "recording_generator:factory", {"folder": None})
    notes = tmp_path / "notes"
    notes.mkdir()
    paths = _image_folder(tmp_path, 3)
    deadly = tmp_path / "dies.png"
    deadly.write_bytes(open(paths[0], "rb").read())
    paths.insert(1, str(deadly))
    preparation = RayPreparation(worker_preparer(create_proposals("records", folder=str(notes))),
                                 lambda job: image_task(job[0], job[0]), "tasks")
    answers, failures = [], []
    run_ray(_prepared_reporter, [(path, str(notes)) for path in paths], answers.append, workers=1,
            preparation=preparation, on_failure=lambda job, why: failures.append((job[0], why)))
    assert sorted(a[0] for a in answers) == sorted(p for p in paths if p != str(deadly))
    assert len({a[1] for a in answers}) == 1  # one actor throughout: it was not the one that died
    assert failures == [(str(deadly), "its image's preparation died twice in its Ray task's process "
                                      "(out of memory, a crash)")]


def test_a_job_that_raises_fails_alone_with_its_reason(fake_gpus):
    def build():
        def work(job: str) -> str:
            if job == "bad":
                raise ValueError("no such thing")
            return job
        return work

    answers, failures = [], []
    run_ray(build, [("a",), ("bad",), ("b",)], answers.append, workers=1,
            on_failure=lambda job, why: failures.append((job, why)))
    assert sorted(answers) == ["a", "b"]
    assert failures == [(("bad",), "failed on its Ray worker: ValueError: no such thing")]
