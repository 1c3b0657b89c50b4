"""What every job shares: how it runs (:class:`Execution`), the one runner that answers a job's
images on the local engine or on Ray (:func:`run_images`, over :class:`ImageWork`; Ray's side is
:class:`RayScheduler`), and the life cycle around the work (progress bar, Ctrl-C turned into a
message saying what was saved)."""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
import tempfile
import threading
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

from ..config import DEFAULT_IMAGE_TIMEOUT, DEFAULT_MAX_PIXELS, RAY_PREPARE, SegmenterConfig
from ..engine import (
    Engine,
    ImageTask,
    Prepared,
    Preparer,
    default_workers,
    engine_for,
    prepare_packed,
    refuse_while_importing_main,
    unpack_prepared,
    worker_preparer,
)
from ..errors import ZsrisError

if TYPE_CHECKING:
    from tqdm import tqdm

    from ..segmenter import Segmenter
    from ..types import ImageFeatures

ENGINES = ("local", "ray")


class JobInterrupted(KeyboardInterrupt):
    """A job stopped by Ctrl-C (or its ``stop`` event); the message says what is saved and how
    to go on. What was committed stays committed: running the job again resumes it."""


@dataclass(frozen=True)
class Execution:
    """How a job runs, apart from what it computes. ``engine`` "local": ``proposal_workers``
    processes (None: cores minus one; 0: all in this process) decode images and make proposals
    ahead of the model stage here; "ray": ``ray_workers`` Ray actors, each with its own models
    (on a cluster at ``ray_address``, else a local one) and ``gpus_per_worker`` GPUs (None: one
    when the model's device is CUDA, else none; a fraction shares a GPU), its images decoded and their
    proposals made as ``ray_prepare`` says (:class:`RayPreparation`). ``progress`` draws a bar; ``stop``,
    once set, ends the run between two images as Ctrl-C does; ``image_timeout`` bounds a worker
    process's time on one image (:class:`zsris.engine.Engine`)."""

    engine: str = "local"
    proposal_workers: Optional[int] = None
    ray_workers: int = 2
    ray_address: Optional[str] = None
    progress: bool = True
    stop: Optional[threading.Event] = None
    image_timeout: Optional[float] = DEFAULT_IMAGE_TIMEOUT
    gpus_per_worker: Optional[float] = None
    ray_prepare: str = "auto"

    def __post_init__(self) -> None:
        if self.ray_prepare not in RAY_PREPARE:
            raise ZsrisError(f"unknown Ray preparation {self.ray_prepare!r}; choose one of {', '.join(RAY_PREPARE)}")
        if self.gpus_per_worker is not None and not self.gpus_per_worker >= 0:
            raise ZsrisError(f"GPUs per worker must be 0 or more, not {self.gpus_per_worker}")
        if self.engine not in ENGINES:
            raise ZsrisError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.proposal_workers is not None and self.proposal_workers < 0:
            raise ZsrisError(f"proposal workers must be 0 or more, not {self.proposal_workers}")
        if self.ray_workers < 1:
            raise ZsrisError(f"Ray workers must be 1 or more, not {self.ray_workers}")
        if self.image_timeout is not None and not self.image_timeout > 0:
            raise ZsrisError(f"the image timeout must be a positive number of seconds, not {self.image_timeout}")

    def ray_gpus(self, device: Any) -> float:
        """GPUs per Ray actor for a model on ``device``: the setting, else 1 on CUDA and 0 elsewhere."""
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if getattr(device, "type", str(device)).startswith("cuda") else 0.0

    def ray_cpus(self, device: Any) -> int:
        """The CPUs of a Ray started here: one per actor and, where the images may be prepared in
        Ray tasks (:class:`RayPreparation`), the machine's other cores for them, at least one."""
        if not _tasks_wanted(self.ray_prepare, self.ray_gpus(device)):
            return self.ray_workers
        return max(self.ray_workers + 1, os.cpu_count() or 1)

    @property
    def workers(self) -> int:
        """The proposal worker processes: the setting, else cores minus one."""
        return default_workers() if self.proposal_workers is None else self.proposal_workers

    def check(self, generator: Any = None) -> None:
        """Refuse, before any model loads, an engine whose extra is missing; Ray for a
        ``generator`` that its actors could not rebuild (one without a spec: they would build
        another from the config); and a job that a worker process started because it imported a
        script without a main guard (:func:`zsris.engine.refuse_while_importing_main`)."""
        refuse_while_importing_main()
        if self.engine != "ray":
            return
        from ..extras import require_extra

        require_extra("ray", "--engine ray")
        if generator is not None and getattr(generator, "spec", None) is None:
            raise ZsrisError(f"Ray actors build their own proposal generator from its spec, and this "
                             f"{type(generator).__name__} has none: register it (zsris.proposals."
                             f"register_generator) or use the local engine")

    def local_engine(self, generator: Any, cache_root: Optional[str] = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                   exif_transpose: bool = True) -> Engine:
        """The local engine for ``generator`` (:func:`zsris.engine.engine_for`, the one rule of
        where proposals are made)."""
        refuse_while_importing_main()
        return engine_for(generator, self.workers, cache_root, max_pixels, exif_transpose, self.stop,
                          self.image_timeout)

    @contextlib.contextmanager
    def session(self, device: Any = "cpu") -> Iterator[None]:
        """Ray for the block where the engine is Ray (see :func:`ray_session`), for a model on ``device``."""
        with ray_session(self.ray_cpus(device), self.ray_address, enabled=self.engine == "ray"):
            yield


def writable_folder(out: Path) -> Path:
    """``out``, made with its parents and checked writable: called before any model loads, so
    that an unusable output folder (a read-only disk, /proc) is found before the work, not
    after it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ZsrisError(f"{out} is a file; the output names the folder that receives the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ZsrisError(f"{out}: cannot write the results there ({error.strerror or error})") from None
    return out


def check_writable(out: Path) -> None:
    """Refuse, before any model loads, an output folder that could not be written, without making
    it: a file in its place, or a folder (itself, else its nearest existing parent) where nothing
    can be created (read-only, immutable, another user's). A probe is made there and removed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ZsrisError(f"{out} is a file; the output names the folder that receives the results")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ZsrisError(f"{existing} is a file, so {out} cannot be made there")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".zsris-probe-"))
    except OSError as error:
        raise ZsrisError(f"{out}: cannot write the results there ({error.strerror or error})") from None


def images_per_pass(segmenter: "Segmenter") -> int:
    """How many images' proposals a job puts through CLIP together: the config's setting, else
    4 on CUDA (small passes leave a GPU waiting on kernel launches) and 1 elsewhere (a CPU gains
    nothing from it)."""
    if segmenter.config.images_per_pass is not None:
        return segmenter.config.images_per_pass
    return 4 if segmenter.device.type == "cuda" else 1


def prepared_features(segmenter: "Segmenter", engine: Engine, tasks: Sequence[ImageTask]
                      ) -> Iterator[tuple[Prepared, Optional["ImageFeatures"]]]:
    """Each task's image as ``engine`` prepares it, in order, with its visual features, computed
    :func:`images_per_pass` images at a time (None where there are none to share: a failed
    image, one without proposals given ...; :meth:`Segmenter.image_features` then says why)."""
    for group in engine.groups(tasks, images_per_pass(segmenter)):
        yield from zip(group, segmenter.image_features_many([(p.pixels, p.proposals) for p in group]))


def quiet_segmenter(config: SegmenterConfig) -> "Segmenter":
    """A segmenter for a worker (a Ray actor): the models of ``config``, without the random-weights
    warning, which the job's own process says once."""
    from ..segmenter import create_segmenter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zsris: CLIP has RANDOM")
        return create_segmenter(config)


#: What a job's progress bar says until its first image is done.
STARTING = "starting: loading the workers and preparing the first images"


class LogLines:
    """A progress bar's stream where it is not a terminal (a pipe, a log file): each update a line
    of its own, at most every :data:`LOG_INTERVAL` seconds, rather than carriage returns that
    pile up in one endless line."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


#: Seconds between a progress bar's lines in a log (:class:`LogLines`).
LOG_INTERVAL = 30.0


def bar_stream() -> dict[str, Any]:
    """tqdm's ``file`` and ``mininterval`` for standard error: the bar itself on a terminal,
    a line every :data:`LOG_INTERVAL` seconds elsewhere."""
    if sys.stderr.isatty():
        return {"file": sys.stderr}
    return {"file": LogLines(sys.stderr), "mininterval": LOG_INTERVAL, "ascii": True}


@contextlib.contextmanager
def progress_bar(total: int, initial: int, desc: str, enabled: bool,
                 saved: Callable[[], str]) -> Iterator["tqdm"]:
    """A progress bar over a job's images; a Ctrl-C inside the block closes it and becomes
    :class:`JobInterrupted` with the message ``saved`` returns (after making the outputs whole).
    Until the first image is done it says that the run is starting (workers load their models
    and prepare the first images: tens of seconds with nothing counted)."""
    from tqdm import tqdm

    class StartingBar(tqdm):
        def update(self, n: float = 1) -> Optional[bool]:
            if getattr(self, "postfix", None):  # (a disabled bar has none)
                self.set_postfix_str("", refresh=False)
            return super().update(n)

    bar = StartingBar(total=total, initial=initial, unit="image", desc=desc, dynamic_ncols=True,
                      disable=not enabled, postfix=STARTING if initial < total else None, **bar_stream())
    try:
        yield bar
    except KeyboardInterrupt:
        bar.close()
        raise JobInterrupted(saved()) from None
    finally:
        bar.close()


class RayWorker:
    """A Ray actor body: builds its worker (an image evaluator, a batch job ...) once, models
    included, then runs jobs on request. An actor given GPUs sees only those (Ray sets
    ``CUDA_VISIBLE_DEVICES``), so a config's ``cuda`` device is the actor's own GPU."""

    def __init__(self, build: Callable[[], Callable[..., Any]], threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self.worker = build()

    def run(self, *job: Any, prepared: Optional[tuple] = None) -> Any:
        """The job's answer; ``prepared``: its image as a Ray task prepared it (packed to travel)."""
        if prepared is None:
            return self.worker(*job)
        return self.worker(*job, prepared=unpack_prepared(prepared))


@contextlib.contextmanager
def ray_session(cpus: int, address: Optional[str] = None, enabled: bool = True) -> Iterator[None]:
    """Ray started with ``cpus`` (or joined at ``address``) for the block, and shut down after it if
    started here.

    Started before any progress bar is drawn, so that Ray's start-up notices do not land inside it."""
    if not enabled:
        yield
        return
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=None if address else cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def check_ray_resources(workers: int, gpus_per_worker: float) -> None:
    """Refuse, before any actor starts, a Ray cluster without the CPUs (one per actor) or the
    GPUs the actors ask for: Ray would wait for them for ever."""
    import ray

    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0))
    if cpus < workers:
        raise ZsrisError(f"{workers} Ray workers need a CPU each; the Ray cluster has {cpus:g} (use fewer --workers)")
    if gpus_per_worker <= 0:
        return
    have = float(resources.get("GPU", 0))
    needed = workers * gpus_per_worker
    if have < needed:
        raise ZsrisError(f"{workers} Ray workers with --gpus-per-worker {gpus_per_worker:g} need {needed:g} GPUs; "
                         f"the Ray cluster has {have:g} (use fewer --workers, a fraction of a GPU each, "
                         f"or --gpus-per-worker 0 for CPU actors)")


@dataclass(frozen=True)
class RayPreparation:
    """Where a Ray run's images are decoded and their proposals made. ``mode`` "tasks": in Ray
    CPU tasks on the cluster's cores that the actors do not hold, ``preparer`` doing the work
    (:func:`zsris.engine.worker_preparer`), each image sent on to its actor with its masks packed;
    at most one image per spare core is prepared beyond the two each actor holds. "actors": each
    actor prepares its own, on its one core. "auto": tasks where the actors have GPUs (a GPU
    actor preparing its own image leaves its GPU waiting) and the cluster has a core to spare,
    else actors. ``task`` gives a job's image."""

    preparer: Preparer
    task: Callable[[tuple], ImageTask]
    mode: str = "auto"

    def cores_ahead(self, workers: int, gpus_per_worker: float) -> int:
        """How many images Ray tasks prepare ahead of the actors on this cluster: its whole cores
        that the actors do not hold; 0 where the actors prepare their own. "tasks" without a core
        to spare is refused in one line (the tasks would wait for ever)."""
        import ray

        if not _tasks_wanted(self.mode, gpus_per_worker):
            return 0
        spare = float(ray.cluster_resources().get("CPU", 0)) - workers
        if self.mode == "tasks" and spare < 1:
            raise ZsrisError(f"--ray-prepare tasks needs a CPU beyond the {workers} Ray workers' own; the Ray "
                             f"cluster has {spare + workers:g} (use fewer --workers, or --ray-prepare actors)")
        return max(0, int(spare))


def _tasks_wanted(mode: str, gpus_per_worker: float) -> bool:
    """Whether ``mode`` asks for preparation tasks for actors with ``gpus_per_worker`` GPUs
    (where the cluster has a core to spare: :meth:`RayPreparation.cores_ahead`)."""
    return mode == "tasks" or (mode == "auto" and gpus_per_worker > 0)


@dataclass(eq=False)
class RayJob:
    """A job on its way through Ray: ``args``, what the worker is called with; ``retried``, whether
    an actor already died running it (it is tried once more, not again); ``image``, its image as
    a Ray task prepares it (an object ref; None until asked for, or where actors prepare their own)."""

    args: tuple
    retried: bool = False
    image: Any = None


@dataclass(frozen=True)
class Submitted:
    """A job handed to an actor, and the order it was handed in: an actor runs its jobs in that
    order, so its oldest unfinished one is the one it was running when it died."""

    actor: Any
    job: RayJob
    number: int


class RayScheduler:
    """Jobs spread over ``workers`` Ray actors, each with the worker that ``build`` makes (models
    loaded once each) and ``gpus_per_worker`` GPUs of its own (a fraction shares one), in a
    :func:`ray_session`. Where ``preparation`` puts the images in Ray tasks, the worker is called
    with the job's image prepared, as ``worker(*job, prepared=...)``; else as ``worker(*job)``.

    An actor that dies (out of memory, a lost node) is replaced. The job it was running is tried
    once more on another actor, and fails if that actor dies on it too; the jobs only queued
    behind it go back to the queue as they were, not charged for a death they did not cause. A
    job that fails otherwise (its preparation's process died twice; the worker raised) fails at
    once. The run goes on."""

    #: The jobs an actor holds: the one it runs and the next, so that it never waits for the driver.
    HELD = 2

    def __init__(self, build: Callable[[], Callable[..., Any]], workers: int = 2, gpus_per_worker: float = 0.0,
                 preparation: Optional[RayPreparation] = None) -> None:
        import ray

        check_ray_resources(workers, gpus_per_worker)
        self.build = build
        self.preparation = preparation
        self.ahead = preparation.cores_ahead(workers, gpus_per_worker) if preparation is not None else 0
        self._prepare = ray.remote(num_cpus=1, max_retries=1)(prepare_packed) if self.ahead else None
        # SPREAD: on a cluster, actors go to different nodes first (each node's cores and GPUs used)
        self._actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, scheduling_strategy="SPREAD")(RayWorker)
        self.alive = [self._actor.remote(build) for _ in range(workers)]
        self.replacements = 2 * workers + 2  # actors that may be started in place of dead ones
        self.queue: deque[RayJob] = deque()
        self.submitted: dict[Any, Submitted] = {}  # a call's object ref -> what it runs
        self.culprit: dict[Any, int] = {}  # a dead actor -> the number of the job it died running
        self._numbers = itertools.count()

    def run(self, jobs: Iterable[tuple], on_result: Callable[[Any], None],
            on_failure: Optional[Callable[[tuple, str], None]] = None) -> None:
        """Run ``jobs`` (argument tuples): ``on_result`` gets each job's answer as it finishes
        (committing it at once, so an interrupted Ray run resumes like a local one), ``on_failure``
        each job that failed, with the reason (without it, a failure raises)."""
        import ray
        from ray.exceptions import RayActorError, RayError

        def fail(job: RayJob, reason: str) -> None:
            if on_failure is None:
                raise ZsrisError(f"a job {reason}") from None
            on_failure(job.args, reason)

        self.queue.extend(RayJob(args) for args in jobs)
        self._refill()
        while self.submitted:
            ready, _ = ray.wait(list(self.submitted), num_returns=1)
            call = self.submitted.pop(ready[0])
            try:
                answer = ray.get(ready[0])
            except RayActorError as error:
                if self._actor_died(call):
                    fail(call.job, f"failed twice: its Ray actor died ({_first_line(error)})")
            except RayError as error:  # not the actor: the job itself, or its image's preparation
                fail(call.job, _task_failure(error))
            else:
                on_result(answer)
            self._refill()
        while self.queue:  # every actor died and none could replace them
            if on_failure is None:
                raise ZsrisError("every Ray actor died, and as many again that replaced them")
            on_failure(self.queue.popleft().args, "no Ray actor was left to run it: every one died")

    def _actor_died(self, call: Submitted) -> bool:
        """Replace ``call``'s dead actor (while replacements last) and requeue its job: at the
        front, as it was where it was only queued behind the job that killed the actor, marked
        retried where it was that job. True where it had been retried already: it has failed."""
        actor = call.actor
        if actor not in self.culprit:  # the first of its jobs to report: name the one it was running
            self.culprit[actor] = min([call.number] + [c.number for c in self.submitted.values() if c.actor is actor])
            self.alive.remove(actor)
            if self.replacements:
                self.replacements -= 1
                self.alive.append(self._actor.remote(self.build))
        if call.number == self.culprit[actor]:
            if call.job.retried:
                return True
            call.job.retried = True
        self.queue.appendleft(call.job)
        return False

    def _image(self, job: RayJob) -> Any:
        """The job's image as a Ray task prepares it, asked for once (None where actors prepare their own)."""
        if self.ahead and job.image is None:
            job.image = self._prepare.remote(self.preparation.preparer, self.preparation.task(job.args))
        return job.image

    def _refill(self) -> None:
        """Give every live actor work until it holds :attr:`HELD` jobs, and have the next
        ``ahead`` images prepared meanwhile."""
        for actor in self.alive:
            held = sum(1 for c in self.submitted.values() if c.actor is actor)
            for _ in range(self.HELD - held):
                if not self.queue:
                    break
                job = self.queue.popleft()
                image = self._image(job)
                call = actor.run.remote(*job.args, prepared=image) if self.ahead else actor.run.remote(*job.args)
                self.submitted[call] = Submitted(actor, job, next(self._numbers))
        for job in itertools.islice(self.queue, self.ahead):
            self._image(job)


def run_ray(build: Callable[[], Callable[..., Any]], jobs: Iterable[tuple], on_result: Callable[[Any], None],
            workers: int = 2, gpus_per_worker: float = 0.0,
            on_failure: Optional[Callable[[tuple, str], None]] = None,
            preparation: Optional[RayPreparation] = None) -> None:
    """``jobs`` (argument tuples) run by a :class:`RayScheduler` of ``workers`` actors built by
    ``build``: ``on_result`` gets each answer, ``on_failure`` each failed job with the reason."""
    RayScheduler(build, workers, gpus_per_worker, preparation).run(jobs, on_result, on_failure)


@dataclass(frozen=True)
class ImageSource:
    """Where a job's images come from, whichever engine prepares them: decoded up to
    ``max_pixels`` (EXIF orientation applied or not), with ``generator``'s proposals (None: decoded
    only, the proposals coming later) cached under ``cache_root`` (None: not cached)."""

    generator: Any
    cache_root: Optional[str] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    exif_transpose: bool = True

    def engine(self, execution: Execution) -> Engine:
        """The local engine over these images (:meth:`Execution.local_engine`)."""
        return execution.local_engine(self.generator, self.cache_root, self.max_pixels, self.exif_transpose)

    def preparer(self) -> Preparer:
        """What a Ray task does with one of these images, as the local engine's workers do it."""
        return worker_preparer(self.generator, self.cache_root, self.max_pixels, self.exif_transpose)


@dataclass(frozen=True)
class ImageWork:
    """A job's pending work in the one form that :func:`run_images` runs on either engine.

    ``jobs`` holds one argument tuple per image, ``(key, items)``: the image, and what is asked of
    it (a batch's pairs, an evaluation's refs). ``task`` gives a job's image (``source`` says how it
    is read). A job is answered by a worker, called as ``worker(*job, prepared=...)`` with its image
    prepared (or as ``worker(*job)`` on a Ray actor that prepares its own): ``here`` in this process,
    also given the image's visual features (``features=``), or on Ray the worker each actor builds
    with ``build`` (module level, so that Ray can ship it). ``failed`` answers a job that Ray could
    not run, with the reason. The two workers give the same answer for a job."""

    jobs: Sequence[tuple]
    source: ImageSource
    task: Callable[[tuple], ImageTask]
    here: Callable[..., Any]
    build: Callable[[], Callable[..., Any]]
    failed: Callable[[tuple, str], Any]


def answers_here(segmenter: "Segmenter", engine: Engine, jobs: Sequence[tuple], task: Callable[[tuple], ImageTask],
                 worker: Callable[..., Any]) -> Iterator[Any]:
    """Each job's answer, in this process: ``worker(*job, prepared=..., features=...)`` on its image
    as ``engine`` prepares it (in its worker processes) and its visual features, computed
    :func:`images_per_pass` images at a time."""
    tasks = [task(job) for job in jobs]
    by_key = {image.key: job for image, job in zip(tasks, jobs)}
    for prepared, features in prepared_features(segmenter, engine, tasks):
        yield worker(*by_key[prepared.key], prepared=prepared, features=features)


def run_images(segmenter: "Segmenter", execution: Execution, work: ImageWork,
               on_answer: Callable[[Any], None]) -> Optional[dict[str, Any]]:
    """Answer every job of ``work`` on the engine ``execution`` names, handing each answer to
    ``on_answer`` as soon as it exists (the job commits it there): the one place where a job runs
    locally or on Ray. Returns the local engine's time per stage (None on Ray)."""
    if execution.engine == "ray":
        preparation = RayPreparation(work.source.preparer(), work.task, execution.ray_prepare)
        scheduler = RayScheduler(work.build, execution.ray_workers, execution.ray_gpus(segmenter.device), preparation)
        scheduler.run(work.jobs, on_answer, lambda job, reason: on_answer(work.failed(job, reason)))
        return None
    engine = work.source.engine(execution)
    for answer in answers_here(segmenter, engine, work.jobs, work.task, work.here):
        on_answer(answer)
    return engine.times.summary()


def _task_failure(error: BaseException) -> str:
    """Why a job failed on Ray other than by its actor's death, in one line: its preparation task's
    process died (on both tries), or the worker raised."""
    from ray.exceptions import WorkerCrashedError

    cause = getattr(error, "cause", None) or error
    if isinstance(cause, WorkerCrashedError):
        return "its image's preparation died twice in its Ray task's process (out of memory, a crash)"
    return f"failed on its Ray worker: {type(cause).__name__}: {_first_line(cause)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
