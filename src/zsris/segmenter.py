"""The segmenter: the stages composed, image -> proposals -> features -> scores -> an answer.

Each stage is its own module, in the order data flows: :mod:`zsris.proposals` (class-agnostic
masks), :mod:`zsris.preprocess` (the tensors CLIP sees), :mod:`zsris.encoder` (CLIP at its
precision, batched, retrying out of memory), a method (:mod:`zsris.methods`: per-proposal
features and their scores against each expression; the paper's global-local CLIP by default),
:mod:`zsris.scoring` (the candidates each expression chooses among) and :func:`zsris.decide.decide`
(the answer). Models load once (in :func:`create_segmenter`); the visual work of an image is done
once and scored against every expression. Running it over many images (batch jobs, evaluation)
is :mod:`zsris.jobs`'.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence, overload

import numpy as np
import torch

from .backbones import ClipBackbone, load_backbone, preprocess_preset, resolve_device
from .config import ProposalSpec, SegmenterConfig
from .decide import Policy
from .encoder import ClipEncoder
from .errors import NoProposalsError, ZsrisError
from .images import ImageInput, load_image
from .methods import Method, check_tower, create_method
from .methods.registry import tower_of
from .preprocess import Preprocessor
from .proposals import ProposalGenerator, create_proposals, prompting
from .scoring import results
from .text import ExpressionParser, check_expression
from .types import Proposals, SegmentResult

RANDOM_WEIGHTS_WARNING = "zsris: CLIP has RANDOM weights (--weights random): its masks mean nothing"
#: Mask pixels (bytes, as bool) of the images whose proposals share CLIP passes: 100 masks of
#: eight 640 x 480 images; larger images go alone, so grouping never raises the peak memory.
MASK_PIXELS_PER_PASS = 2 ** 28
#: Mask pixels (proposals x image pixels) of one step of :meth:`Segmenter.image_features` when it
#: runs in steps: about two seconds of CPU work (8 proposals of a 16 MP image); every proposal of
#: an image up to 1.3 MP goes in one step.
STEP_MASK_PIXELS = 2 ** 27


class Segmenter:
    """Zero-shot referring segmentation: proposals scored by a method on a frozen CLIP (by default
    the paper's global-local features, Yu et al., CVPR 2023).

    Built from loaded models and a :class:`SegmenterConfig` (whose fields may also be given as
    keyword ``changes``); :func:`create_segmenter` loads the models the config names. The
    config's model fields describe how the models were made; the loaded objects themselves are
    ``backbone`` and ``proposals``. The config's proposal spec is the generator's own
    (``proposals.spec``) wherever the generator has one, so the two never disagree. The stages
    are attributes: ``preprocessor``, ``encoder`` (CLIP's towers at the configured precision),
    ``method`` and ``parser``.

    The verbs: :meth:`image_features` (the per-image work, once), :meth:`score` (every
    expression against them), and :meth:`segment` for both at once, like a transformers
    pipeline's preprocess, forward and postprocess.
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        proposals: ProposalGenerator,
        config: Optional[SegmenterConfig] = None,
        parser: Optional[ExpressionParser] = None,
        **changes,
    ) -> None:
        self.config = (config or SegmenterConfig()).replace(**changes)
        spec = getattr(proposals, "spec", None)
        if isinstance(spec, ProposalSpec):
            self.config = self.config.replace(proposals=spec)
        self.backbone = backbone
        self.proposals = proposals
        preprocess = preprocess_preset(self.config.preprocess, backbone.model)
        self.encoder = ClipEncoder.create(backbone, preprocess, self.config)
        self.preprocessor = Preprocessor(preprocess, backbone.input_size, backbone.device)
        self.method: Method = create_method(self.config, self.encoder)
        _check_generator(self.method, proposals)
        self.parser = parser or ExpressionParser(model=self.config.spacy_model, cache_size=self.config.text_cache_size)
        self.policy = Policy.from_config(self.config)
        self._last_features: Optional[tuple[Any, Any]] = None
        if backbone.is_random:
            warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def image_features(self, image: ImageInput, image_id: Optional[str] = None,
                       proposals: Optional[Proposals] = None,
                       step: Optional[Callable[[], ContextManager[Any]]] = None,
                       step_pixels: Optional[int] = None, expressions: Sequence[str] = ()) -> Any:
        """Proposals and the method's features of them (the paper's: :class:`zsris.types.ImageFeatures`,
        global, local and fused): the per-image work.

        With a prompted generator (SAM 3) the proposals depend on the ``expressions`` that will
        be scored: their noun phrases' instances join the class-agnostic ``proposals``
        (:meth:`proposals_for`), so the features serve those expressions.

        ``step`` (a service passes its model lock) splits the visual work into steps, each run
        inside ``step()``, so that other callers of the model can run between a large image's
        steps instead of waiting for all of it: the image tensors, then the proposals' features
        ``step_pixels`` (default :data:`STEP_MASK_PIXELS`) mask pixels (proposals x image
        pixels) at a time. Proposals made here are made outside the steps: a caller that shares
        a model generator passes them in. An image whose proposals fit in one step is computed
        exactly as without ``step``; one split into several equals it up to float rounding
        (other forward-pass batches).
        """
        pixels, image_id = _load(image, image_id, self.config.max_pixels)
        proposals = self.proposals_for(pixels, image_id, expressions, proposals)
        _check_proposals(self.proposals, pixels, proposals, image_id)
        if step is None:
            return self._features([(pixels, proposals)])[0]
        return features_in_steps(self, pixels, proposals, step, step_pixels or STEP_MASK_PIXELS)

    def proposals_for(self, pixels: np.ndarray, image_id: Optional[str] = None, expressions: Sequence[str] = (),
                      base: Optional[Proposals] = None) -> Proposals:
        """The proposals that ``expressions`` about the image choose among: ``base`` (made here
        when not given), completed by a prompted generator for the expressions' noun phrases
        (one pass a distinct phrase; an expression without a noun phrase adds none; proposals
        that already have their instances are returned as they are)."""
        proposals = base if base is not None else self.proposals(pixels, image_id)
        strategy = prompting(self.proposals)
        if not strategy.prompted:
            return proposals
        phrases = [p.noun_phrase for p in self.parser.parse_many(list(expressions)) if p.has_noun_phrase]
        return strategy.complete(pixels, proposals, phrases)

    def image_features_many(self, images: Sequence[tuple[Optional[np.ndarray], Optional[Proposals]]]) -> list[Any]:
        """:meth:`image_features` of several decoded images with their proposals, whose proposals
        share forward passes (``batch_size`` at a time): fewer, fuller passes on a GPU. None
        stands for an image left to :meth:`image_features`: one without pixels or proposals, or
        one it refuses (no proposals, sizes that disagree), so that it says why. Results equal
        one image at a time up to float rounding. Images go together only while their masks
        hold at most :data:`MASK_PIXELS_PER_PASS` pixels (on the device at once, as bool); a
        larger image goes alone, as it would with one image per pass."""
        if prompting(self.proposals).prompted:  # its proposals wait for each image's expressions
            return [None] * len(images)
        usable = []
        for position, (pixels, proposals) in enumerate(images):
            if pixels is None or proposals is None:
                continue
            try:
                _check_proposals(self.proposals, pixels, proposals, None)
            except ZsrisError:
                continue
            usable.append(position)
        answers: list[Any] = [None] * len(images)
        for part in _within_budget(usable, [images[i][1].masks.size for i in usable], MASK_PIXELS_PER_PASS):
            for position, features in zip(part, self._features([images[i] for i in part])):
                answers[position] = features
        return answers

    def over(self, proposals: ProposalGenerator) -> "Segmenter":
        """This segmenter over another proposal generator: the same CLIP, encoder, method and
        parser (a server that offers several generators loads each model once), the config's
        proposal spec the generator's own."""
        _check_generator(self.method, proposals)
        other = copy.copy(self)
        other.proposals, other._last_features = proposals, None
        spec = getattr(proposals, "spec", None)
        if isinstance(spec, ProposalSpec):
            other.config = self.config.replace(proposals=spec)
        return other

    def score(self, features: Any, expressions: Sequence[str], policy: Optional[Policy] = None) -> list[SegmentResult]:
        """Score every proposal against every expression; each result keeps all the scores and
        holds the answer the policy (:func:`zsris.decide.decide`; default the segmenter's own,
        a server's request may bring its own) gives among the candidates the generator allows
        the expression (:mod:`zsris.scoring`)."""
        policy = policy or self.policy
        parsed = self.parser.parse_many(expressions)
        table = self.method.scores(features, parsed, policy.spatial)
        return results(table, parsed, features.proposals, policy, prompting(self.proposals))

    @overload
    def segment(self, image: ImageInput, expression: str, image_id: Optional[str] = None) -> SegmentResult: ...

    @overload
    def segment(self, image: ImageInput, expression: Sequence[str],
                image_id: Optional[str] = None) -> list[SegmentResult]: ...

    def segment(self, image, expression, image_id=None):
        """The mask of the object that ``expression`` refers to in ``image``; given a list of
        expressions, one result per expression. The visual work is done once, and kept for the
        next call about the same image (the same pixels and id): asking again about the last
        image costs only the text (:meth:`last_image_features`)."""
        one = isinstance(expression, str)
        expressions = [expression] if one else list(expression)
        for text in expressions:
            check_expression(text)
        found = self.score(self.last_image_features(image, image_id, expressions), expressions)
        return found[0] if one else found

    __call__ = segment

    def segment_many(self, image: ImageInput, expressions: Sequence[str],
                     image_id: Optional[str] = None) -> list[SegmentResult]:
        """Segment several expressions about one image (:meth:`segment` with a list)."""
        if isinstance(expressions, str):
            raise ZsrisError("segment_many takes a list of expressions; use segment for one")
        return self.segment(image, list(expressions), image_id)

    def last_image_features(self, image: ImageInput, image_id: Optional[str] = None,
                            expressions: Sequence[str] = ()) -> Any:
        """:meth:`image_features`, remembered for the last image: the same pixels (by a hash of
        their bytes) and id get the same features back without any visual work. One image's
        features are kept (its proposals' masks: 30 MB for 100 of a 640 x 480 image). With a
        prompted generator the expressions are part of the key (they decide the proposals)."""
        pixels, image_id = _load(image, image_id, self.config.max_pixels)
        prompts = tuple(expressions) if prompting(self.proposals).prompted else ()
        key = (hashlib.sha1(np.ascontiguousarray(pixels).data).hexdigest(), pixels.shape, image_id, prompts)
        if self._last_features is None or self._last_features[0] != key:
            self._last_features = None  # the old image's features go before the new ones are made
            self._last_features = (key, self.image_features(pixels, image_id, expressions=expressions))
        return self._last_features[1]

    def _features(self, images: Sequence[tuple[np.ndarray, Proposals]]) -> list[Any]:
        if not images:
            return []
        return self.method.features([self.preprocessor(pixels) for pixels, _ in images],
                                    [proposals for _, proposals in images])



def features_in_steps(segmenter: Segmenter, pixels: np.ndarray, proposals: Proposals,
                      step: Callable[[], ContextManager[Any]], step_pixels: int) -> Any:
    """:meth:`Segmenter.image_features` in steps, each inside ``step()``: the image tensors, then
    ``step_pixels`` mask pixels of proposals at a time (all of them in one step where they fit,
    computed exactly as without steps)."""
    per_step = max(1, step_pixels // max(1, pixels.shape[0] * pixels.shape[1]))
    if per_step >= len(proposals):
        with step():
            return segmenter._features([(pixels, proposals)])[0]
    with step():
        tensors = segmenter.preprocessor(pixels)
    parts = []
    for start in range(0, len(proposals), per_step):
        with step():
            part = proposals.select(np.arange(start, min(start + per_step, len(proposals))))
            parts.append(segmenter.method.features([tensors], [part])[0])
    return segmenter.method.join(proposals, parts)


def _check_generator(method: Method, proposals: ProposalGenerator) -> None:
    """Refuse a method that chooses among all of an image's proposals over a prompted generator."""
    if getattr(method, "chooses", False) and prompting(proposals).prompted:
        raise ZsrisError(f"the {method.name} method chooses among every proposal of an image; the "
                         f"{getattr(proposals, 'name', 'prompted')} generator's proposals depend on each "
                         f"expression: choose another generator")


def _load(image: ImageInput, image_id: Optional[str], max_pixels: int) -> tuple[np.ndarray, Optional[str]]:
    """The image as RGB pixels, and its id (a path's file name where none is given)."""
    if image_id is None and isinstance(image, (str, Path)):
        image_id = Path(image).name
    return load_image(image, max_pixels), image_id


def _check_proposals(generator: ProposalGenerator, pixels: np.ndarray, proposals: Proposals,
                     image_id: Optional[str]) -> None:
    """Refuse proposals that give nothing to choose from, or that are of another image size."""
    if len(proposals) == 0:
        raise NoProposalsError(
            f"no mask proposals in {image_id or 'the image'}: the {getattr(generator, 'name', '')} "
            f"generator found nothing to choose from{_untrained_hint(generator)}"
        )
    if proposals.image_size != pixels.shape[:2]:
        raise ZsrisError(f"proposals are {proposals.image_size}, the image is {pixels.shape[:2]}")


def _untrained_hint(generator: ProposalGenerator) -> str:
    """Why an untrained generator finds nothing, and the settings that show its masks anyway: its
    quality scores are random, so they seldom pass thresholds set for a trained model."""
    options = getattr(generator, "quality_options", ())
    if getattr(generator, "checkpoint", None) != "random" or not options:
        return ""
    lowered = " ".join(f"--proposal-option {name}=0" for name in options)
    return (f" (it is untrained, checkpoint random, and its random quality scores seldom pass its thresholds: "
            f"lower them to see its masks, {lowered})")


def _within_budget(items: Sequence[Any], sizes: Sequence[int], budget: int) -> list[list[Any]]:
    """``items`` in consecutive runs whose ``sizes`` add up to at most ``budget`` (an item larger
    than the budget alone), in their order."""
    runs: list[list[Any]] = []
    total = 0
    for item, size in zip(items, sizes):
        if not runs or total + size > budget:
            runs.append([])
            total = 0
        runs[-1].append(item)
        total += size
    return runs


def create_segmenter(
    config: Optional[SegmenterConfig] = None,
    *,
    proposals: str | ProposalSpec | ProposalGenerator | None = None,
    parser: Optional[ExpressionParser] = None,
    **changes,
) -> Segmenter:
    """Load the models ``config`` names, once, and return a ready :class:`Segmenter`.

    Fields of :class:`SegmenterConfig` may be given as keywords instead of (or on top of) a
    config, proposal fields flat: ``create_segmenter(weights="random", max_proposals=50)``.
    ``proposals`` is a generator name, a :class:`ProposalSpec`, or an already built generator.
    """
    generator = None
    if proposals is not None and not isinstance(proposals, (str, ProposalSpec)):
        generator = proposals
    elif proposals is not None:
        changes["proposals"] = proposals
    config = (config or SegmenterConfig()).replace(**changes)
    check_tower(config.method, tower_of(config.backbone) == "vit")  # before CLIP loads
    parser = parser or ExpressionParser(model=config.spacy_model)  # first: a missing model fails in a second
    device = resolve_device(config.device)
    clip = load_backbone(config.backbone, config.pretrained, config.weights, device)
    if generator is None:
        generator = create_proposals(config.proposals, device)
    return Segmenter(clip, generator, config, parser)


def create_segmenters(configs: Sequence[SegmenterConfig], parser: Optional[ExpressionParser] = None) -> list[Segmenter]:
    """One segmenter per config (several methods to compare), loading each CLIP once and the
    proposal generator once: the configs must agree on the proposals, the device and the parser."""
    if not configs:
        return []
    first = configs[0]
    for config in configs[1:]:
        if (config.proposals, config.device, config.spacy_model) != (first.proposals, first.device, first.spacy_model):
            raise ZsrisError("segmenters made together share their proposals, device and spaCy model")
    for config in configs:
        check_tower(config.method, tower_of(config.backbone) == "vit")
    parser = parser or ExpressionParser(model=first.spacy_model)
    device = resolve_device(first.device)
    backbones: dict[tuple, ClipBackbone] = {}
    for config in configs:
        key = (config.backbone, config.pretrained, config.weights)
        if key not in backbones:
            backbones[key] = load_backbone(*key, device)
    generator = create_proposals(first.proposals, device)
    return [Segmenter(backbones[c.backbone, c.pretrained, c.weights], generator, c, parser) for c in configs]
