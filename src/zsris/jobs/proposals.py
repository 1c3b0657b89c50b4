"""`zsris proposals`: any generator's proposals written once to the file ``--proposals file`` reads.

An expensive generator (FreeSOLO: seconds an image on a CPU; SAM) then runs once per image
for every later evaluation, batch or setting sweep. The output is a JSON object from each
image's file name to its proposals as COCO result records (``segmentation`` in compressed RLE,
``score``, and ``box``, the generator's own ``x1, y1, x2, y2``, which for FreeSOLO is not the
mask's tight box), in the generator's order. Each image's proposals are appended to
``OUT.partial.jsonl`` as soon as they are made, so an interrupted run resumes where it stopped;
the JSON is written, whole, at the end. The partial file starts with the generator's settings (a
resume with other settings is refused rather than mixed in) and keeps each image's content key (an
image replaced since is made again); ``OUT.lock`` keeps a second run off the same output.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import DEFAULT_MAX_PIXELS
from ..engine import ImageTask
from ..errors import ZsrisError
from ..masks import encode_rle
from ..store import lock_file
from ..types import Proposals
from .run import Execution, progress_bar


def proposal_records(proposals: Proposals) -> list[dict[str, Any]]:
    """One image's proposals as the records :class:`~zsris.proposals.FileProposals` reads."""
    return [{"segmentation": encode_rle(mask), "score": float(score), "box": [float(v) for v in box]}
            for mask, score, box in zip(proposals.masks, proposals.scores, proposals.boxes)]


@dataclass
class ProposalsSummary:
    images: int
    made: int
    resumed: int
    failed: dict[str, str]
    proposals: int
    seconds_per_image: float
    out: Path


@dataclass
class ProposalsJob:
    """Write ``generator``'s proposals of ``tasks``' images to ``out`` (resumable, see the module)."""

    generator: Any
    tasks: Sequence[ImageTask]
    out: Path
    execution: Execution = field(default_factory=Execution)
    exif_transpose: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        seen: dict[str, str] = {}
        for task in self.tasks:
            if task.name in seen and seen[task.name] != task.path:
                raise ZsrisError(f"two images are named {task.name} ({seen[task.name]} and {task.path}); "
                                 f"proposal files find an image by its name: write them to separate files")
            seen[task.name] = task.path

    @property
    def partial(self) -> Path:
        return self.out.with_name(self.out.name + ".partial.jsonl")

    @property
    def generator_key(self) -> str:
        """What made the proposals: the generator's cache key (its settings and version)."""
        return str(getattr(self.generator, "cache_key", type(self.generator).__name__))

    def _resumed(self, keys: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
        """The proposals a partial file holds of images whose content is still ``keys``'s (by name)."""
        done: dict[str, list[dict[str, Any]]] = {}
        if not self.partial.exists():
            return done
        for number, line in enumerate(self.partial.read_text().split("\n")):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by the crash: that image is made again
            if not isinstance(entry, dict):
                continue
            if number == 0 and "generator" in entry:
                if entry["generator"] != self.generator_key:
                    raise ZsrisError(f"{self.partial} holds proposals made by {entry['generator']}, not by this "
                                     f"run's {self.generator_key}: delete it to start over, or write to another -o")
                continue
            name = entry.get("image")
            if name in keys and entry.get("key", keys[name]) == keys[name] and isinstance(entry.get("proposals"), list):
                done[name] = entry["proposals"]
            elif name in done:  # a newer line for a replaced image
                del done[name]
        return done

    def run(self) -> ProposalsSummary:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_file(self.out.with_name(self.out.name + ".lock"), str(self.out), "-o")
        try:
            return self._run()
        finally:
            os.close(handle)

    def _run(self) -> ProposalsSummary:
        keys = {task.name: _content_key(task.path) for task in self.tasks}
        done = self._resumed(keys)
        resumed = sum(1 for task in self.tasks if task.name in done)
        pending = [task for task in self.tasks if task.name not in done]
        failed: dict[str, str] = {}
        engine = self.execution.local_engine(self.generator, None, self.max_pixels, self.exif_transpose)
        seconds = 0.0

        def saved() -> str:
            return (f"zsris: interrupted; the proposals of {len(done)} image(s) are saved in {self.partial}: "
                    f"run the same command again to go on")

        fresh = not self.partial.exists() or self.partial.stat().st_size == 0
        with open(self.partial, "a") as stream, progress_bar(len(self.tasks), resumed, "proposals",
                                                              self.execution.progress, saved) as bar:
            if fresh:
                stream.write(json.dumps({"generator": self.generator_key}) + "\n")
                stream.flush()
            for prepared in engine.iterate(pending):
                if prepared.error is not None or prepared.proposals is None:
                    failed[prepared.key] = prepared.error or "no image"
                else:
                    done[prepared.key] = proposal_records(prepared.proposals)
                    seconds += prepared.proposal_seconds
                    stream.write(json.dumps({"image": prepared.key, "key": keys[prepared.key],
                                             "proposals": done[prepared.key]}) + "\n")
                    stream.flush()
                bar.update(1)
        ordered = {task.name: done[task.name] for task in self.tasks if task.name in done}
        handle, temp = tempfile.mkstemp(dir=self.out.parent, suffix=".tmp")
        with os.fdopen(handle, "w") as file:
            json.dump(ordered, file)
        os.replace(temp, self.out)
        if not failed:
            self.partial.unlink()
        made = len(pending) - len(failed)
        return ProposalsSummary(len(self.tasks), made, resumed, failed, sum(len(r) for r in ordered.values()),
                                seconds / made if made else 0.0, self.out)


def _content_key(path: Any) -> str:
    """An image file's content key (:func:`zsris.cache.image_key`); an unreadable one's reason
    (the image then fails when it is made)."""
    from ..cache import image_key

    try:
        return image_key(path)
    except OSError as error:
        return f"unreadable: {error.strerror}"


def image_tasks(paths: Sequence[Path]) -> list[ImageTask]:
    """A task for every image file given, or found (recursively, in path order) in a folder given;
    keyed by file name, which is how proposal files are read."""
    from ..engine import image_task
    from .pairs import images_under

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += images_under(path)
        elif path.is_file():
            files.append(path)
        else:
            raise ZsrisError(f"{path}: no such image or folder")
    return [image_task(p.name, p) for p in files]


def split_tasks(dataset: Any, split: str, limit: Optional[int]) -> list[ImageTask]:
    """A task for every image of a dataset split, keyed by its file name."""
    from .evaluation import dataset_task

    tasks = []
    for image_id in dataset.refs_by_image(split, limit):
        task = dataset_task(dataset, image_id)
        tasks.append(ImageTask(task.name, task.path, task.name, task.size))
    return tasks
