"""Several methods evaluated in one pass over a split, as the paper's Table 1 compares them.

``zsris eval --method global-local,cropping,...`` (or ``--method table1``) runs every method on
the **same** proposals: each image is decoded once and its proposals made (or read from the
cache) once; methods on one CLIP share its image tensors and any visual part they both use (the
cropping baseline's local features are the paper's method's); each method's records go to its
own run folder under the run, ``OUT/<method>@<backbone>/``, a store exactly like ``zsris eval``'s. A rerun
resumes every method where it stopped, and a method added to a finished run is the only work
done. The run's ``report.md`` and ``metrics.json`` hold a row per method.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..datasets import Ref, ReferDataset
from ..engine import Prepared
from ..errors import ZsrisError
from ..methods.registry import method_label
from ..proposals import prompting
from ..store import PredictionStore
from .evaluation import (
    DataSpec,
    EvalJob,
    build_evaluator,
    check_split_images,
    dataset_task,
    image_content_key,
    pending_images,
    run_summary,
    sentence_ids,
)
from .run import Execution, progress_bar

if TYPE_CHECKING:
    from ..segmenter import Segmenter

#: The columns of the comparison, in the paper's layout (both accountings where asked for).
COLUMNS = ("oIoU", "mIoU", "mc-acc", "cc-oIoU", "oIoU (authors' accounting)", "mIoU (authors' accounting)",
           "oIoU (paper)", "mIoU (paper)", "oIoU (authors' re-run)", "mIoU (authors' re-run)")


def row_labels(segmenters: list["Segmenter"]) -> list[str]:
    """Each method's name in the report: its label (:func:`zsris.methods.registry.method_label`),
    with ``@backbone`` where the same method runs on two backbones (table1's cropping, on RN50 and
    on the ViT)."""
    labels = [method_label(s.config.method) for s in segmenters]
    return [f"{label}@{s.config.backbone}" if labels.count(label) > 1 else label
            for label, s in zip(labels, segmenters)]


def folder_name(segmenter: "Segmenter") -> str:
    """A method's run folder under the comparison's: its label and backbone, made safe for a file
    name (``global-local_masking_one-block@ViT-B_32``), the same in every run that has it."""
    label = f"{method_label(segmenter.config.method)}@{segmenter.config.backbone}"
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", label)


@dataclass
class CompareOutcome:
    """Each method's metrics (by label, in the order asked), the files written and the run's title."""

    summaries: dict[str, dict[str, Any]]
    title: str
    written: list[Path]
    backbones: dict[str, str] = field(default_factory=dict)


@dataclass
class CompareJob:
    """A resumable evaluation of several methods (``segmenters``, one per method, sharing one
    proposal generator) over ``split`` of ``data`` into the run folder ``out``."""

    segmenters: list["Segmenter"]
    data: DataSpec
    out: str | Path
    split: str = "val"
    limit: Optional[int] = None
    execution: Execution = field(default_factory=Execution)
    opened: Optional[ReferDataset] = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.segmenters:
            raise ZsrisError("a comparison needs at least one method")
        generators = {id(s.proposals) for s in self.segmenters}
        if len(generators) != 1:
            raise ZsrisError("the methods of a comparison share one proposal generator (the same proposals)")
        if prompting(self.segmenters[0].proposals).prompted:
            raise ZsrisError(f"{self.segmenters[0].proposals.name}'s proposals depend on each method's "
                             f"expressions; compare methods on class-agnostic proposals")
        if self.execution.engine == "ray":
            raise ZsrisError("several methods are compared in one process; leave out --engine ray")
        self.labels = row_labels(self.segmenters)
        self.jobs = [EvalJob(s, self.data, self.out / folder_name(s), self.split, self.limit,
                             execution=self.execution, opened=self.opened) for s in self.segmenters]
        self.dataset = self.jobs[0].dataset

    def run(self) -> CompareOutcome:
        """Evaluate what no method has done yet, then report every method over the whole split."""
        from ..report import write_report

        first = self.segmenters[0]
        self.execution.check(first.proposals)
        groups = self.dataset.refs_by_image(self.split, self.limit)
        check_split_images(self.dataset, groups, self.split)
        keys = {image_id: image_content_key(self.dataset, image_id, refs) for image_id, refs in groups.items()}
        evaluators = [build_evaluator(s.config, self.data, s, self.dataset) for s in self.segmenters]
        memos = _share(self.segmenters)
        with contextlib.ExitStack() as stack:
            stack.callback(_unshare, self.segmenters)
            stores = [stack.enter_context(PredictionStore(job.out / "predictions.sqlite", job.settings()))
                      for job in self.jobs]
            stack.enter_context(self.execution.session(first.device))
            for job, store in zip(self.jobs, stores):
                job._forget_changed(store, keys)
            unfinished = [set(pending_images(groups, store.done())) for store in stores]
            wanted = {image_id: [m for m, images in enumerate(unfinished) if image_id in images] for image_id in groups}
            pending = [image_id for image_id, methods in wanted.items() if methods]

            def saved() -> str:
                return (f"zsris: interrupted; every scored sentence is saved in {self.out}. "
                        f"Run the same command again to resume.")

            with progress_bar(len(groups), len(groups) - len(pending), "eval", self.execution.progress,
                              saved) as bar:
                def consume(prepared: Prepared) -> None:
                    refs: list[Ref] = groups[prepared.key]
                    try:
                        for m in wanted[prepared.key]:
                            stores[m].add(evaluators[m].evaluate_prepared(prepared, refs), keys)
                    finally:
                        for memo in memos:
                            memo.clear()
                    bar.update(1)

                engine = self.data.engine(self.execution, first.proposals, first.config.max_pixels)
                engine.run([dataset_task(self.dataset, image_id) for image_id in pending], consume)
            records = [store.records(sentence_ids(groups)) for store in stores]
        summaries, written = {}, []
        title = f"{self.data.dataset} {self.split} ({first.config.proposals.name} proposals"
        title += ", RANDOM WEIGHTS: these figures mean nothing)" if first.backbone.is_random else ")"
        for job, label, found in zip(self.jobs, self.labels, records):
            summary = run_summary(found, job.segmenter.config, self.data, self.split)
            write_report(job.out, summary, job.settings(), found, f"{label}: {title}")
            summaries[label] = summary
        backbones = {label: s.config.backbone for label, s in zip(self.labels, self.segmenters)}
        written += write_comparison(self.out, summaries, backbones, title, [job.out.name for job in self.jobs])
        return CompareOutcome(summaries, title, written, backbones)


def _share(segmenters: list["Segmenter"]) -> list[dict]:
    """One memo per CLIP model that several methods use: their preprocessors and encoders keep
    the image being worked on and its visual parts there (cleared after every image)."""
    memos: dict[int, dict] = {}
    for segmenter in segmenters:
        memo = memos.setdefault(id(segmenter.encoder.model), {})
        segmenter.preprocessor.memo = memo
        segmenter.encoder.memo = memo
    return list(memos.values())


def _unshare(segmenters: list["Segmenter"]) -> None:
    """The segmenters on their own again (no memo), as they were before the run."""
    for segmenter in segmenters:
        segmenter.preprocessor.memo = None
        segmenter.encoder.memo = None


def comparison_table(summaries: dict[str, dict[str, Any]], backbones: dict[str, str], title: str = "") -> str:
    """The methods as rows, the paper's columns (those any method has) as columns, in Markdown."""
    columns = [c for c in COLUMNS if any(c in s for s in summaries.values())]
    lines = [f"## {title}", ""] if title else []
    lines.append("| method | backbone | sentences | " + " | ".join(columns) + " |")
    lines.append("|---" * (len(columns) + 3) + "|")
    for label, summary in summaries.items():
        cells = ["–" if summary.get(c) is None else f"{summary[c]:.2f}" for c in columns]
        lines.append(f"| {label} | {backbones.get(label, '')} | {summary.get('sentences', 0)} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def write_comparison(out: Path, summaries: dict[str, dict[str, Any]], backbones: dict[str, str],
                     title: str, folders: list[str]) -> list[Path]:
    """``report.md`` (the table, then where each method's own report is) and ``metrics.json`` (every
    method's metrics) in the comparison's run folder."""
    report = [comparison_table(summaries, backbones, title), "",
              "Each method's own report, records and histogram are in its folder: "
              + ", ".join(f"`{folder}/`" for folder in folders) + ".",
              "The paper's and the authors' figures stand beside the rows that have them (zsris has the "
              "paper's global-local figures; the baselines' are in the paper's Table 1).", ""]
    metrics = {label: {"backbone": backbones.get(label), **summary} for label, summary in summaries.items()}
    (out / "report.md").write_text("\n".join(report))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return [out / "report.md", out / "metrics.json"]
