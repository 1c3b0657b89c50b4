"""The pipelined engine: image decoding and proposals in worker processes, ahead of the model.

The model stage (CLIP, on the GPU or the CPU) runs in the calling process and consumes the
images in their order; worker processes decode the images and make their proposals (reading
and writing the proposal cache) through a bounded window, so at most ``workers + ahead``
prepared images wait in memory. A worker ignores Ctrl-C (the parent stops the pool) and dies
with its parent, even one killed outright (Linux's parent-death signal). An error on one image
(a corrupt file, a generator failure) comes back as that image's error and the run goes on;
a worker process that dies takes only its current image with it. Prepared images come back
through files in a private temporary folder (not the pool's pipe, which the model stage's hold
on the GIL slows twentyfold), removed at the end, or by the workers when the run is killed.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from .config import DEFAULT_IMAGE_TIMEOUT, DEFAULT_MAX_PIXELS, ProposalSpec
from .errors import DatasetError, ZsrisError, failure_reason
from .proposals import PROPOSAL_REGISTRY, GeneratorEntry, ProposalGenerator, runs_in_model_process
from .types import Proposals


def default_workers() -> int:
    """Cores minus one (the model stage keeps one), at least one."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class ImageTask:
    """One image to prepare: ``key`` names it to the caller, ``name`` to file-based generators;
    ``size`` (height, width), when known, must match the decoded image."""

    key: Any
    path: str
    name: str
    size: Optional[tuple[int, int]] = None


@dataclass
class Prepared:
    """An image ready for the model stage, or the reason it is not."""

    key: Any
    pixels: Optional[np.ndarray] = None
    proposals: Optional[Proposals] = None
    seconds: float = 0.0  # decoding and proposals (or the cache read), in the worker
    proposal_seconds: float = 0.0  # the generator's own time (as first measured, for cached proposals)
    error: Optional[str] = None


def load_task_image(task: ImageTask, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True) -> np.ndarray:
    """The task's image as RGB; a size that disagrees with the task's (its annotations') is refused."""
    from .images import load_image

    pixels = load_image(task.path, max_pixels, exif_transpose=exif_transpose)
    if task.size is not None and pixels.shape[:2] != tuple(task.size):
        raise DatasetError(f"{task.path} is {pixels.shape[1]}x{pixels.shape[0]}, but its annotations "
                           f"say {task.size[1]}x{task.size[0]}")
    return pixels


@dataclass(frozen=True)
class Preparer:
    """What a worker does with a task: decode, check the size, make or read the proposals.

    ``spec`` None decodes only (ground-truth proposals, or a generator run by the model stage).
    ``entry`` is the spec's registry entry, shipped along so that a worker process knows a
    generator its parent registered at run time. Plain data, so that it can be shipped to
    worker processes."""

    spec: Optional[ProposalSpec] = None
    cache_root: Optional[str] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    exif_transpose: bool = True
    entry: Optional[GeneratorEntry] = None

    def build(self, generator: Optional[ProposalGenerator] = None) -> Callable[[ImageTask], Prepared]:
        """The function that prepares a task; ``generator``, when given, is used instead of a new
        one built from the spec (a model already loaded in this process, such as SAM)."""
        from .cache import ProposalCache
        from .proposals import create_proposals

        if generator is None and self.spec is not None:
            if self.entry is not None:
                PROPOSAL_REGISTRY.setdefault(self.spec.name, self.entry)
            generator = create_proposals(self.spec)
        cache = (ProposalCache(self.cache_root, generator.cache_key)
                 if generator is not None and self.cache_root else None)

        def prepare(task: ImageTask) -> Prepared:
            start = time.perf_counter()
            try:
                pixels = load_task_image(task, self.max_pixels, self.exif_transpose)
                proposals, proposal_seconds = None, 0.0
                if generator is not None:
                    make = lambda: generator(pixels, task.name)  # noqa: E731
                    if cache is not None:
                        proposals, proposal_seconds = cache.get_or_make(task.path, make, pixels.shape[:2])
                    else:
                        began = time.perf_counter()
                        proposals = make()
                        proposal_seconds = time.perf_counter() - began
            except Exception as error:  # noqa: BLE001 - one image's failure must not stop the run
                return Prepared(task.key, error=failure_reason(error), seconds=time.perf_counter() - start)
            return Prepared(task.key, pixels, proposals, time.perf_counter() - start, proposal_seconds)

        return prepare


_PREPARE: Optional[Callable[[ImageTask], Prepared]] = None
#: Thread pools of the numeric libraries: one thread each in a worker, so that N workers do not
#: each start a pool as large as the machine and fight over its cores.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


#: Set for the engine's fork server, and so for its workers: the pid of the process running the engine.
OWNER_VARIABLE = "ZSRIS_ENGINE_OWNER"
#: Why a job cannot run from a script without a main guard, in one line.
UNGUARDED = ("the worker processes import your script to start, and it started this job again in them: put the "
             "code that runs the job under `if __name__ == \"__main__\":`")


def _unguarded_marker(owner: int) -> Path:
    """Where a worker that re-ran the owner's unguarded script leaves word of it."""
    return Path(tempfile.gettempdir()) / f"zsris-unguarded-{owner}"


def refuse_while_importing_main() -> None:
    """Refuse a job that a starting worker process runs because it imports the user's script,
    which has no ``if __name__ == "__main__":`` guard. In a zsris worker, it leaves word for the
    owner (which then raises :data:`UNGUARDED`) and ends the worker at once; elsewhere it raises."""
    if not getattr(multiprocessing.current_process(), "_inheriting", False):
        return
    owner = os.environ.get(OWNER_VARIABLE)
    if owner and owner.isdigit():
        _unguarded_marker(int(owner)).touch()
        os._exit(1)
    raise ZsrisError(UNGUARDED)


def _raise_if_unguarded() -> None:
    """Raise :data:`UNGUARDED` where a worker of this process left word that it re-ran the script."""
    marker = _unguarded_marker(os.getpid())
    if marker.exists():
        marker.unlink(missing_ok=True)
        raise ZsrisError(UNGUARDED)


@contextlib.contextmanager
def _one_thread_per_worker() -> Iterator[None]:
    """The environment that processes spawned in the block start with: single-threaded libraries,
    and the owner's pid (:func:`refuse_while_importing_main`)."""
    saved = {name: os.environ.get(name) for name in (*_THREAD_VARIABLES, OWNER_VARIABLE)}
    os.environ.update({name: "1" for name in _THREAD_VARIABLES})
    os.environ[OWNER_VARIABLE] = str(os.getpid())
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when its parent dies, however the parent dies."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _watch_owner(owner: int, spool: str) -> None:
    """Exit as soon as ``owner`` (the process running the engine) is gone, removing the files
    waiting for it in ``spool``. A forked worker's parent is the fork server, and the fork server
    lives as long as any worker does, so the parent-death signal alone would keep both alive
    after the owner is killed outright."""
    while _alive(owner):
        time.sleep(0.5)
    shutil.rmtree(spool, ignore_errors=True)
    os._exit(1)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (killed, not yet reaped by its parent) counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _init_worker(preparer: Preparer, owner: int, spool: str) -> None:
    """Make the worker die with its owner and its parent, ignore Ctrl-C, build the preparer once."""
    global _PREPARE
    _die_with_parent()
    threading.Thread(target=_watch_owner, args=(owner, spool), daemon=True, name="zsris-owner-watch").start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import torch

    torch.set_num_threads(1)
    _PREPARE = preparer.build()


def _prepare_in_worker(task: ImageTask, spool: str) -> str:
    """Prepare ``task`` and write it, masks packed 8 per byte, to a file in ``spool``; return its path.

    A file rather than the pool's result pipe: the parent reads a pipe in 64 KB pieces, each
    needing the GIL, which the model stage holds most of the time; a 5 MB image then took 0.34 s
    to arrive instead of 0.02 s, and the workers waited on the pipe rather than working."""
    shipped = pack_prepared(_PREPARE(task))
    handle, path = tempfile.mkstemp(dir=spool, suffix=".pickle")
    with os.fdopen(handle, "wb") as file:
        pickle.dump(shipped, file, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _receive(path: str) -> Prepared:
    """The prepared image a worker wrote to ``path`` (one read); the file is removed."""
    with open(path, "rb") as file:
        shipped = pickle.loads(file.read())
    os.unlink(path)
    return unpack_prepared(shipped)


def pack_prepared(prepared: Prepared) -> tuple[Prepared, Optional[tuple]]:
    """``prepared`` as it crosses to another process: its proposals' masks packed 8 pixels a byte
    (an eighth of the bytes to write, pickle or send), the rest as it is."""
    proposals = prepared.proposals
    if proposals is None:
        return prepared, None
    packed = (proposals.packed_bits(), proposals.image_size[1], proposals.scores, proposals.boxes, proposals.areas,
              proposals.prompts, proposals.presence)
    return dataclasses.replace(prepared, proposals=None), packed


def unpack_prepared(shipped: tuple[Prepared, Optional[tuple]]) -> Prepared:
    """What :func:`pack_prepared` sent; the packed bits stay with the proposals, for a GPU's upload."""
    prepared, packed = shipped
    if packed is not None:
        bits, width, scores, boxes, areas, prompts, presence = packed
        masks = np.unpackbits(bits, axis=-1, count=width).view(bool)
        prepared.proposals = Proposals(masks, scores, boxes, areas, prompts, presence, bits)
    return prepared


_BUILT: list[tuple[Preparer, Callable[[ImageTask], Prepared]]] = []


def prepare_packed(preparer: Preparer, task: ImageTask) -> tuple[Prepared, Optional[tuple]]:
    """Prepare ``task`` in this process (a Ray task on a free core), packed to travel: the
    preparer is built once per process and reused by the tasks that follow on it."""
    if not _BUILT or _BUILT[0][0] != preparer:
        import torch

        torch.set_num_threads(1)  # one core, as the task asked for
        _BUILT[:] = [(preparer, preparer.build())]
    return pack_prepared(_BUILT[0][1](task))


@dataclass
class StageTimes:
    """Where the time went: the workers' busy seconds, the model stage's, and the wall clock."""

    workers: int = 0
    prepare_seconds: float = 0.0
    model_seconds: float = 0.0
    waiting_seconds: float = 0.0  # the model stage waiting for a prepared image
    first_seconds: Optional[float] = None  # until the first image (group) was ready: start-up and its latency
    wall_seconds: float = 0.0
    images: int = 0
    failed: list[tuple[Any, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Seconds per image per stage and how busy each stage was (1.0: never idle), by machine
        keys; :data:`zsris.report.LABELS` names them for people."""
        wall = max(self.wall_seconds, 1e-9)
        images = max(self.images, 1)
        lanes = max(self.workers, 1)
        first = self.first_seconds or 0.0  # start-up and the first image's preparation
        return {
            "images": self.images,
            "proposal_workers": self.workers,
            "seconds_per_image": round(wall / images, 3),
            "seconds_per_image_running": round((wall - first) / images, 3),
            "seconds_to_first_image": round(first, 3),
            "prepare_seconds_per_image": round(self.prepare_seconds / images, 3),
            "model_seconds_per_image": round(self.model_seconds / images, 3),
            "busy_workers": round(min(1.0, self.prepare_seconds / (wall * lanes)), 2),
            "busy_model": round(min(1.0, self.model_seconds / wall), 2),
            "waiting_seconds_per_image": round(self.waiting_seconds / images, 3),
            "images_failed": len(self.failed),
        }


class Engine:
    """Prepare images in ``workers`` processes (0: in this process, where ``generator`` may be a
    model already loaded here, run in a thread) ``ahead`` of the consumer (0 with a loaded
    generator: no thread, each image prepared when asked for). ``stop``, once set, ends the
    run between two images as a Ctrl-C would: the command line sets it on Ctrl-C, for the rare
    KeyboardInterrupt that lands inside a finaliser and is lost there. ``image_timeout``: a
    worker process still preparing an image that many seconds after the model stage began to
    wait for it (for the first images, the workers' start-up counts too) is stopped, and that
    image fails saying so (a file that blocks, a decoder that never ends); the other images go on
    in fresh workers. None waits for ever. Images prepared in this process have no limit."""

    def __init__(self, preparer: Preparer, workers: int = 0, ahead: Optional[int] = None,
                 generator: Optional[ProposalGenerator] = None, stop: Optional[threading.Event] = None,
                 image_timeout: Optional[float] = DEFAULT_IMAGE_TIMEOUT) -> None:
        if workers < 0:
            raise ZsrisError(f"proposal workers must be 0 or more, not {workers}")
        if generator is not None and workers:
            raise ZsrisError("a generator loaded in this process cannot serve worker processes")
        self.preparer = preparer
        self.workers = workers
        self.generator = generator
        self.ahead = ahead if ahead is not None else max(2, 2 * workers)
        self.stop = stop
        self.image_timeout = image_timeout
        self.times = StageTimes(workers=workers)

    def run(self, tasks: Iterable[ImageTask], consume: Callable[[Prepared], None]) -> StageTimes:
        """Call ``consume`` on every task's prepared image, in the tasks' order; the consumer's
        time counts as the model stage's."""
        for prepared in self.iterate(tasks):
            consume(prepared)
        return self.times

    def iterate(self, tasks: Iterable[ImageTask]) -> Iterator[Prepared]:
        """The tasks' prepared images, in the tasks' order; the time the caller spends between
        two of them counts as the model stage's."""
        for group in self.groups(tasks, 1):
            yield group[0]

    def groups(self, tasks: Iterable[ImageTask], size: int) -> Iterator[list[Prepared]]:
        """The tasks' prepared images in consecutive groups of ``size`` (the last may be smaller),
        in the tasks' order, for a model stage that puts a group through CLIP together. The
        groups follow from the order alone, never from which images happen to be ready, so a
        run's numbers do not depend on the workers' timing. The time the caller spends on a
        group counts as the model stage's."""
        if size < 1:
            raise ZsrisError(f"images per group must be 1 or more, not {size}")
        start = time.perf_counter()
        group: list[Prepared] = []
        source = self._prepared(list(tasks))
        try:
            for prepared in itertools.chain(source, [None]):
                if self.stop is not None and self.stop.is_set():
                    raise KeyboardInterrupt
                if prepared is not None:
                    group.append(prepared)
                    if len(group) < size:
                        continue
                if not group:
                    break
                if self.times.first_seconds is None:
                    self.times.first_seconds = time.perf_counter() - start
                began = time.perf_counter()
                yield group
                self.times.model_seconds += time.perf_counter() - began
                self.times.images += len(group)
                for done in group:
                    self.times.prepare_seconds += done.seconds
                    if done.error is not None:
                        self.times.failed.append((done.key, done.error))
                group = []
        finally:
            source.close()  # stops the workers now, not whenever the collector gets to it
            self.times.wall_seconds += time.perf_counter() - start

    def _prepared(self, tasks: list[ImageTask]) -> Iterator[Prepared]:
        if self.workers == 0:
            prepare = self.preparer.build(self.generator)
            if self.generator is not None and self.ahead:
                yield from self._prefetched(prepare, tasks)
                return
            for task in tasks:
                yield prepare(task)
            return
        queue = deque(tasks)
        fruitless = 0
        while queue:
            produced = 0
            for prepared in self._pool_pass(queue):
                produced += prepared.error is None
                yield prepared
            fruitless = 0 if produced else fruitless + 1
            if fruitless == 2 and queue:
                raise ZsrisError("the proposal worker processes die before preparing any image; "
                                 "run with --proposal-workers 0 to see why")

    def _prefetched(self, prepare: Callable[[ImageTask], Prepared], tasks: list[ImageTask]) -> Iterator[Prepared]:
        """A generator loaded here (SAM on the GPU) prepares the next ``ahead`` images in a
        thread while the caller works on this one, so that SAM's CPU post-processing overlaps
        CLIP's work instead of holding the device up. One thread: the images keep their order."""
        queue = deque(tasks)
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(1, thread_name_prefix="zsris-prepare") as pool:
            try:
                while queue and len(pending) < self.ahead:
                    pending.append(pool.submit(prepare, queue.popleft()))
                while pending:
                    waited = time.perf_counter()
                    prepared = pending.popleft().result()
                    self.times.waiting_seconds += time.perf_counter() - waited
                    if queue:
                        pending.append(pool.submit(prepare, queue.popleft()))
                    yield prepared
            finally:
                for future in pending:
                    future.cancel()

    def _pool_pass(self, queue: deque) -> Iterator[Prepared]:
        """Run tasks off ``queue`` through one pool; if a worker process dies, its image fails
        and the rest are resubmitted to a fresh pool by the caller's next pass."""
        # A fork server imports zsris once and forks the workers from it: a worker starts in a
        # fraction of a second, where a spawned one imports torch anew (seconds, times N at once);
        # and nothing is forked from this process, whose CUDA and threads would not survive it.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "zsris.engine", "zsris.proposals.classical", "zsris.images",
                                        "zsris.cache"])
        spool = tempfile.mkdtemp(prefix="zsris-engine-")
        pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                   initargs=(self.preparer, os.getpid(), spool))
        pending: deque[tuple[ImageTask, Future]] = deque()
        try:
            with _one_thread_per_worker():  # the fork server and its children start with this environment
                while queue and len(pending) < self.workers + self.ahead:
                    task = queue.popleft()
                    pending.append((task, pool.submit(_prepare_in_worker, task, spool)))
            while pending:
                task, future = pending[0]
                waited = time.perf_counter()
                try:
                    prepared = _receive(future.result(timeout=self.image_timeout))
                except (BrokenProcessPool, FutureTimeout) as error:
                    _raise_if_unguarded()
                    pending.popleft()
                    for other, _ in reversed(pending):
                        queue.appendleft(other)
                    pending.clear()
                    if isinstance(error, BrokenProcessPool):
                        yield Prepared(task.key, error="the worker process preparing this image died")
                        return
                    for process in list(getattr(pool, "_processes", {}).values()):  # the stuck one among them
                        process.kill()
                    yield Prepared(task.key, error=f"preparing this image took over {self.image_timeout:g} s "
                                                   f"(--image-timeout), so its worker was stopped")
                    return
                self.times.waiting_seconds += time.perf_counter() - waited
                pending.popleft()
                if queue:
                    nxt = queue.popleft()
                    pending.append((nxt, pool.submit(_prepare_in_worker, nxt, spool)))
                yield prepared
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            shutil.rmtree(spool, ignore_errors=True)


def engine_for(generator: Optional[ProposalGenerator], workers: int, cache_root: Optional[str] = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True,
               stop: Optional[threading.Event] = None, image_timeout: Optional[float] = DEFAULT_IMAGE_TIMEOUT
               ) -> Engine:
    """The engine that makes ``generator``'s proposals ahead of the model stage: the one rule of
    where proposals are made (:func:`worker_preparer`). With ``workers`` and a generator that can
    be rebuilt from its spec (classical, file), the workers rebuild it and do the work; a model
    on the device (SAM), a generator without a spec (or whose factory cannot be sent to a
    process), or no workers: the generator given runs here, one image ahead in a thread. No
    generator: the workers only decode (ground-truth proposals come later)."""
    preparer = worker_preparer(generator, cache_root, max_pixels, exif_transpose)
    if workers and (generator is None or preparer.spec is not None):
        return Engine(preparer, workers, stop=stop, image_timeout=image_timeout)
    return Engine(preparer, 0, generator=generator, stop=stop)


def worker_preparer(generator: Optional[ProposalGenerator], cache_root: Optional[str] = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True) -> Preparer:
    """What a process other than the model's does with an image: decode it and, where
    ``generator`` can be rebuilt there from its spec (classical, file: not a model on the device,
    nor a generator without a registered, shippable factory), make its proposals too; else
    decode only, the proposals left to the model's process."""
    if generator is not None and not runs_in_model_process(generator):
        entry = PROPOSAL_REGISTRY[generator.spec.name]
        if _shippable(entry):
            return Preparer(generator.spec, cache_root, max_pixels, exif_transpose, entry)
    return Preparer(None, cache_root, max_pixels, exif_transpose)


def _shippable(entry: GeneratorEntry) -> bool:
    """Whether a registry entry reaches a worker process: a ``"module:function"`` factory, or a
    function pickled by reference (a lambda is not)."""
    try:
        pickle.dumps(entry)
        return True
    except (pickle.PicklingError, AttributeError, TypeError):
        return False


def image_task(key: Any, path: str | Path, name: Optional[str] = None,
               size: Optional[tuple[int, int]] = None) -> ImageTask:
    """A task for the image file at ``path`` (``name`` defaults to its file name)."""
    path = str(path)
    return ImageTask(key, path, name or Path(path).name, size)
