"""Results for people: what decided an answer in words, a result's files, and its overlay.

The one place where a :class:`~zsris.types.SegmentResult` becomes something to read or look at:
``zsris segment`` prints :meth:`Explanation.line`, the page shows :meth:`Explanation.markdown`,
and Python callers use :func:`explain`, :func:`save_result` and :func:`overlay` (exported from
:mod:`zsris`). The data types stay data: they know nothing of files, fonts or wording. The
drawing itself is :mod:`zsris.render`'s, the file names :mod:`zsris.names`'s; both are imported
where used, so that reading an explanation loads no Pillow or SciPy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .types import DEFAULT_TOP_K, SegmentResult

if TYPE_CHECKING:
    from PIL import Image

#: What decided an answer (:attr:`Explanation.decided_by`): the scores chose a proposal, or "no
#: such object" because a prompted generator found the phrase's concept absent, because it left
#: nothing to choose from, or because the best score fell below the no-target threshold.
DECIDED_BY = ("score", "presence", "no candidates", "threshold")


def caption(expression: str, found: bool) -> str:
    """The expression, marked where no object answers it (for overlays, pages and tabs)."""
    return expression if found else f"{expression} (no such object)"


@dataclass(frozen=True)
class Explanation:
    """What decided an expression's answer (:func:`explain`), as its facts and in two wordings:
    one line for a terminal, Markdown for the page."""

    result: SegmentResult
    decided_by: str
    no_target_threshold: Optional[float] = None

    def line(self, files: str) -> str:
        """``zsris segment``'s report of the answer, ending with the ``files`` written; a second
        line says what the spatial words did, where they were read."""
        result, prompt = self.result, self.result.prompt or {}
        if self.decided_by == "presence":
            why = (f"no such object: {prompt['generator']}'s presence {prompt['presence']:.4f} is below "
                   f"{prompt['presence_threshold']}")
        elif self.decided_by == "no candidates":
            why = "no such object: nothing to choose from"
        elif self.decided_by == "threshold":
            why = (f"no such object: the best score {result.score:.4f} is below the no-target threshold "
                   f"{self.no_target_threshold}")
        else:
            why = f"score {result.score:.4f}, box {list(result.box)}, noun phrase {result.noun_phrase!r}"
        text = f"{result.expression!r} -> {why}: {files}"
        if result.spatial is not None:
            text += f"\n  spatial words: {result.spatial.summary()}"
        return text

    def markdown(self) -> str:
        """The page's account: the expression and its noun phrase, what a prompted generator was
        asked, the choice or why there is none, and what the spatial words did (where any acted)."""
        result, prompt = self.result, self.result.prompt
        lines = [f"**{result.expression}** (noun phrase: *{result.noun_phrase}*)"]
        if prompt is not None:
            asked = (f"asked for *{prompt['noun_phrase_sent']}*: {prompt['instances']} instance(s), presence "
                     f"{prompt['presence']:.3f}" if prompt["noun_phrase_sent"] is not None else prompt["fallback"])
            lines.append(f"{prompt['generator']} {asked}; {prompt['class_agnostic']} class-agnostic proposal(s).")
        if self.decided_by == "presence":
            lines.append(f"No such object: the presence {prompt['presence']:.3f} is below "
                         f"{prompt['presence_threshold']}.")
        elif self.decided_by == "no candidates":
            lines.append("No such object: nothing to choose from.")
        elif self.decided_by == "threshold":
            lines.append(f"No such object: the best score {result.score:.3f} is below the no-target "
                         f"threshold {self.no_target_threshold}.")
        else:
            lines.append(f"Chosen: proposal {result.proposal_index}, fused score {result.score:.3f}, "
                         f"box {list(result.box)}.")
        if result.spatial is not None and (result.spatial.steps or result.spatial.ignored):
            lines.append(f"Spatial words: {result.spatial.summary()}")
        return "\n\n".join(lines)


def explain(result: SegmentResult, no_target_threshold: Optional[float] = None) -> Explanation:
    """What decided ``result`` (one of :data:`DECIDED_BY`), for the command line, the page and
    Python alike; ``no_target_threshold`` is the segmenter's (the result does not carry it)."""
    refusal = (result.prompt or {}).get("decided_by")
    if result.found:
        decided_by = "score"
    elif refusal in ("presence", "no candidates"):
        decided_by = refusal
    else:
        decided_by = "threshold"
    return Explanation(result, decided_by, no_target_threshold)


def overlay(result: SegmentResult, image: Any, warning: str = "") -> "Image.Image":
    """The image (a path, PIL image or ``[H, W, 3]`` array) with ``result``'s mask tinted and
    outlined, its box drawn and the expression in a band below (what ``zsris segment`` saves);
    ``warning`` is written under it in red.

    Module functions, not methods: a result stays plain data (as segment-anything's masks are),
    and how it is drawn or written is the caller's tool, not the type's."""
    from .images import load_image
    from .render import draw_overlay

    pixels = load_image(image, max_pixels=max(result.mask.size, 1))  # the image the mask is of, no larger
    return draw_overlay(pixels, result.mask, result.box, caption(result.expression, result.found), warning=warning)


def save_result(result: SegmentResult, folder: str | Path, image: Any = None, top_k: Optional[int] = DEFAULT_TOP_K,
                *, stem: Optional[str] = None, name: Optional[str] = None, extra: Optional[dict[str, Any]] = None,
                warning: str = "") -> Path:
    """Write ``STEM.json`` and ``STEM.mask.png`` (and ``STEM.overlay.png`` when ``image`` is
    given) into ``folder``; ``stem`` defaults to the expression as a slug, and a name already
    there gets ``-2``, ``-3`` ... (:mod:`zsris.names`). ``name`` is the image in the record
    (default: ``image`` where it is a path), ``extra`` joins the record (a run's settings),
    ``warning`` is written on the overlay. The record names its picture files (``files``: mask,
    overlay), which sit beside it. Returns the files' common path stem."""
    from .names import RESULT_SUFFIXES, claim_stem, slug
    from .render import mask_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = claim_stem(folder, stem or slug(result.expression), RESULT_SUFFIXES)
    if name is None and isinstance(image, (str, Path)):
        name = str(image)
    files = {"mask": f"{base.name}.mask.png", **({"overlay": f"{base.name}.overlay.png"} if image is not None else {})}
    record = {**result.to_dict(name, top_k), **(extra or {}), "files": files}  # beside it, named as they are
    Path(f"{base}.json").write_text(json.dumps(record, indent=2))
    mask_image(result.mask).save(f"{base}.mask.png")
    if image is not None:
        overlay(result, image, warning).save(f"{base}.overlay.png")
    return base
