"""Evaluation outputs: the terminal table, metrics.json, report.md and an IoU histogram PNG."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

#: What people read for the machine keys of a run's timing and summary (the metrics keep the
#: names the field reports them by: oIoU, mIoU, P@0.5 ...).
LABELS = {
    "proposal_workers": "proposal workers",
    "seconds_per_image": "seconds/image (end to end)",
    "seconds_per_image_running": "seconds/image (once the first was ready)",
    "seconds_to_first_image": "seconds until the first image",
    "prepare_seconds_per_image": "seconds/image (decode + proposals, per worker)",
    "model_seconds_per_image": "seconds/image (model)",
    "busy_workers": "busy (proposal workers)",
    "busy_model": "busy (model)",
    "waiting_seconds_per_image": "seconds/image (model stage waiting)",
    "images_failed": "images failed",
    "done": "done (this run)",
    "failed": "failed (this run)",
    "skipped": "skipped (done before)",
    "retried": "retried (failed before)",
    "images_this_run": "images (this run)",
    "wall_seconds_per_image": "seconds/image",
}


def labelled(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with its machine keys named for people (:data:`LABELS`); other keys as they are."""
    return {LABELS.get(key, key): value for key, value in summary.items()}


def table(summary: dict[str, Any], title: str = "") -> str:
    """A two-column Markdown table of the metrics (it reads well in a terminal too); machine
    keys are shown by their :data:`LABELS`."""
    summary = labelled(summary)
    width = max(len(k) for k in summary) if summary else 10
    lines = [f"### {title}", ""] if title else []
    lines += [f"| {'metric':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {key:<{width}} | {value} |" for key, value in summary.items()]
    return "\n".join(lines)


#: Characters per line of the histogram's title: a longer one would be cut at the figure's edge.
TITLE_WIDTH = 70


def histogram_title(title: str) -> str:
    """The title in lines that fit the figure (a run's title names the dataset, split, backbone,
    proposals and, with random weights, says so at length)."""
    return textwrap.fill(title, TITLE_WIDTH)


def iou_histogram(ious: Sequence[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    axis.hist(np.asarray(ious, dtype=float), bins=20, range=(0, 1), color="#d9534f", edgecolor="white")
    axis.set_xlabel("IoU of the chosen mask")
    axis.set_ylabel("sentences")
    axis.set_title(histogram_title(title), fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


#: The failures report.md lists (errors.jsonl holds every one).
REPORTED_FAILURES = 20


def failed_images(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each failure of an evaluation, once: the image, why, and how many of its sentences it
    cost (they count as misses), in the records' order."""
    found: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record.get("error"):
            key = (record.get("image_id"), record["error"])
            entry = found.setdefault(key, {"image_id": record.get("image_id"), "error": record["error"],
                                           "sentences": 0})
            entry["sentences"] += 1
    return list(found.values())


def write_report(out: Path, summary: dict[str, Any], settings: dict[str, Any], records: Sequence[dict[str, Any]],
                 title: str, timing: Optional[dict[str, Any]] = None) -> list[Path]:
    """metrics.json, report.md, the IoU histogram of the ``records`` and, where images failed,
    errors.jsonl (one line a failure; report.md names the first ones); ``timing`` (per-stage
    seconds and how busy each stage was) describes the last run of the command, not the whole
    resumed evaluation. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    content = {"metrics": summary, "settings": settings, **({"timing": timing} if timing else {})}
    (out / "metrics.json").write_text(json.dumps(content, indent=2))
    iou_histogram([r["iou"] for r in records], out / "iou_histogram.png", title)
    settings_table = "\n".join(f"- `{k}`: {v}" for k, v in settings.items())
    failures = failed_images(records)
    errors = out / "errors.jsonl"
    if failures:
        errors.write_text("".join(json.dumps(f) + "\n" for f in failures))
    else:
        errors.unlink(missing_ok=True)  # a rerun that has no failure left
    listed = "\n".join(f"- image {f['image_id']} ({f['sentences']} sentences, counted as misses): {f['error']}"
                        for f in failures[:REPORTED_FAILURES])
    extra = len(failures) - REPORTED_FAILURES
    more = f"\n- ... {extra} more in errors.jsonl" if extra > 0 else ""
    (out / "report.md").write_text(
        f"# zsris evaluation: {title}\n\n{table(summary)}\n\n![IoU histogram](iou_histogram.png)\n\n"
        + (f"## What failed (every one in errors.jsonl)\n\n{listed}{more}\n\n" if failures else "")
        + f"## Settings\n\n{settings_table}\n"
        + (f"\n## Time (the last run of the command)\n\n{table(timing)}\n" if timing else "")
    )
    return [out / "metrics.json", out / "report.md", out / "iou_histogram.png", *([errors] if failures else [])]
