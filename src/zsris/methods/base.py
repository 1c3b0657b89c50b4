"""What a method implements: the seam between the shared stages and a way of scoring proposals.

The segmenter runs the stages every method shares (decoding, proposals, preprocessing, CLIP at
its precision: :class:`zsris.encoder.ClipEncoder`) and what follows the scores (the candidates a
generator allows, :func:`zsris.decide.decide`, the result). A method fills the middle, in two
steps, so that the per-image work is done once for every expression about the image:

- :meth:`Method.features`: per-proposal features of several images at once (anything with a
  ``proposals`` attribute; the paper's method gives :class:`zsris.types.ImageFeatures`), and
  :meth:`Method.join` for one image's features computed in parts (the service's steps);
- :meth:`Method.scores`: every parsed expression against every proposal of one image, as a
  :class:`zsris.scoring.ScoreTable`.

A method with a rule of its own for the answer (HybridGL's spatial guidance) gives each row's
choice in the table (:attr:`zsris.scoring.ScoreTable.choice`) and sets ``chooses = True``; the
shared rules (threshold, multi-target) then apply around its choice. It is built by its registry
entry's factory from the segmenter's config and encoder (:func:`zsris.methods.register_method`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from ..preprocess import ImageTensors
    from ..scoring import ScoreTable
    from ..text import ParsedExpression
    from ..types import Proposals


@runtime_checkable
class Method(Protocol):
    """A way of scoring proposals against expressions (see the module's docstring)."""

    name: str

    def features(self, images: Sequence["ImageTensors"], proposals: Sequence["Proposals"]) -> list[Any]:
        """Each image's per-proposal features, the images' proposals sharing forward passes."""
        ...

    def join(self, proposals: "Proposals", parts: Sequence[Any]) -> Any:
        """One image's features from those of consecutive parts of its ``proposals``."""
        ...

    def scores(self, features: Any, parsed: Sequence["ParsedExpression"], phrases: bool) -> "ScoreTable":
        """Every expression against every proposal; ``phrases``: also the noun phrase alone (the
        spatial rule's candidates)."""
        ...
