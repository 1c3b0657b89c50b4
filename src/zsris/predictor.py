"""A predictor in segment-anything's manner: ``set_image`` pays for the visual work once, then
``predict`` answers each expression from the kept features with only the text left to do.

>>> from zsris import Predictor, create_segmenter
>>> predictor = Predictor(create_segmenter())
>>> predictor.set_image("photo.jpg")              # proposals and visual features: seconds
>>> predictor.predict("the cat on the left")      # a SegmentResult: milliseconds
>>> predictor.predict(["the cat", "the scooter"]) # one result each
"""
from __future__ import annotations

from typing import Optional, Sequence, overload

from .errors import ZsrisError
from .images import ImageInput
from .proposals import is_prompted
from .segmenter import Segmenter
from .text import check_expression
from .types import ImageFeatures, SegmentResult


class Predictor:
    """One image's features, kept for any number of expressions about it."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.features: Optional[ImageFeatures] = None
        self._image: Optional[tuple[ImageInput, Optional[str]]] = None

    def set_image(self, image: ImageInput, image_id: Optional[str] = None) -> Optional[ImageFeatures]:
        """Compute ``image``'s proposals and visual features (a path, PIL image or ``[H, W, 3]``
        array), replacing the previous image's. With a prompted generator (SAM 3) the proposals
        depend on the expressions, so the image is kept and the work done by ``predict``."""
        self.features, self._image = None, (image, image_id)
        if not is_prompted(self.segmenter.proposals):
            self.features = self.segmenter.image_features(image, image_id)
        return self.features

    @overload
    def predict(self, expressions: str) -> SegmentResult: ...

    @overload
    def predict(self, expressions: Sequence[str]) -> list[SegmentResult]: ...

    def predict(self, expressions):
        """The result of one expression, or one result per expression of a list."""
        if self._image is None:
            raise ZsrisError("no image yet: call set_image(image) before predict")
        one = isinstance(expressions, str)
        texts = [expressions] if one else list(expressions)
        for text in texts:
            check_expression(text)
        if self.features is None:  # a prompted generator
            results = self.segmenter.segment_many(self._image[0], texts, self._image[1])
        else:
            results = self.segmenter.score(self.features, texts)
        return results[0] if one else results

    def reset_image(self) -> None:
        """Let the image's features go (their proposals' masks are the bulk of the memory)."""
        self.features, self._image = None, None
