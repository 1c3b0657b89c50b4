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
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


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
