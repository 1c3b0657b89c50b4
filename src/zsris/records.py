"""JSON records of results: what `zsris segment` writes and the HTTP API returns."""
from __future__ import annotations

from typing import Any

from .masks import encode_rle
from .segmenter import SegmentResult, Segmenter


def settings(segmenter: Segmenter) -> dict[str, Any]:
    """The settings that produced a result, so a record says how to reproduce it: the config's
    (:meth:`SegmenterConfig.settings`), with what was actually loaded where the config leaves it
    open: the backbone's canonical name, the weights it resolved to, the proposal generator's
    cache key (its settings and version) and the spaCy pipeline that parsed the expressions."""
    return {
        **segmenter.config.settings(),
        "backbone": segmenter.backbone.name,
        "weights": segmenter.backbone.weights,
        "proposal_generator": getattr(segmenter.proposals, "cache_key", type(segmenter.proposals).__name__),
        "parser": segmenter.parser.info,
    }


def result_record(result: SegmentResult, image: str | None = None) -> dict[str, Any]:
    """A JSON-ready record: COCO RLE mask, box (x1, y1, x2, y2), score and the top-k proposals."""
    height, width = result.image_size
    return {
        "image": image,
        "image_size": [height, width],
        "expression": result.expression,
        "noun_phrase": result.noun_phrase,
        "found": result.found,
        "score": result.score,
        "box": list(result.box) if result.found else None,
        "proposal_index": result.proposal_index,
        **({"proposal_indices": result.proposal_indices} if len(result.proposal_indices) > 1 else {}),
        "mask": encode_rle(result.mask),
        "top_proposals": [
            {
                "index": r.index,
                "score": r.score,
                "global_score": r.global_score,
                "local_score": r.local_score,
                "box": list(r.box),
                "area": r.area,
            }
            for r in result.ranked
        ],
        **({"spatial": result.spatial.record()} if result.spatial is not None else {}),
    }
