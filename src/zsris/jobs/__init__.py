"""The jobs layer: what runs the segmenter over many images and owns the results on disk.

:class:`BatchJob` (``zsris batch``), :class:`EvalJob` (``zsris eval`` and ``calibrate``) and
:class:`CompareJob` (several methods in one ``zsris eval``) own their store, resume, outputs and
engine (worker processes, an in-process generator, or Ray);
:func:`segment_pairs` streams answers in Python without a folder. The model below
(:mod:`zsris.segmenter`) knows nothing of them; the command line and the service above only
translate. Names are imported on first use, so ``import zsris.jobs`` loads no torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatchJob": "batch", "BatchSummary": "batch", "segment_pairs": "batch",
    "DataSpec": "evaluation", "EvalJob": "evaluation", "EvalOutcome": "evaluation",
    "evaluate_proposals": "evaluation",
    "ManifestError": "pairs", "Pair": "pairs", "PairResult": "pairs", "folder_pairs": "pairs",
    "read_manifest": "pairs",
    "Execution": "run", "JobInterrupted": "run",
    "CompareJob": "compare", "CompareOutcome": "compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zsris.jobs' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
