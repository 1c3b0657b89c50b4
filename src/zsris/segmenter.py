"""The global-local CLIP segmenter: proposals -> visual features -> scores against text -> mask.

Models load once (in :func:`create_segmenter`); the visual work of an image (proposals, the
shared ViT trunk, per-proposal features) is done once and scored against every expression.
The segmenter computes: what to answer from the scores is :func:`zsris.decide.decide`'s, and
running it over many images (batch jobs, evaluation) is :mod:`zsris.jobs`'.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence, overload

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from . import visual
from .backbones import ClipBackbone, load_backbone, preprocess_preset, resolve_device
from .config import ProposalSpec, SegmenterConfig
from .decide import Policy, decide, segment_result
from .errors import NoProposalsError, ZsrisError, ZsrisWarning
from .fusion import fuse_text, fuse_visual
from .images import ImageInput, load_image
from .precision import check_precision, compute_precision, weight_dtype
from .proposals import ProposalGenerator, create_proposals, is_prompted
from .text import ExpressionParser, ParsedExpression, TextEncoder, check_expression
from .types import Answer, ImageFeatures, Proposals, Scores, SegmentResult

RANDOM_WEIGHTS_WARNING = "zsris: CLIP has RANDOM weights (--weights random): its masks mean nothing"
#: Mask pixels (bytes, as bool) of the images whose proposals share CLIP passes: 100 masks of
#: eight 640 x 480 images; larger images go alone, so grouping never raises the peak memory.
MASK_PIXELS_PER_PASS = 2 ** 28
#: Mask pixels (proposals x image pixels) of one step of :meth:`Segmenter.image_features` when it
#: runs in steps: about two seconds of CPU work (8 proposals of a 16 MP image); every proposal of
#: an image up to 1.3 MP goes in one step.
STEP_MASK_PIXELS = 2 ** 27


class Segmenter:
    """Zero-shot referring segmentation with global-local CLIP features (Yu et al., CVPR 2023).

    Built from loaded models and a :class:`SegmenterConfig` (whose fields may also be given as
    keyword ``changes``); :func:`create_segmenter` loads the models the config names. The
    config's model fields describe how the models were made; the loaded objects themselves are
    ``backbone`` and ``proposals``. The config's proposal spec is the generator's own
    (``proposals.spec``) wherever the generator has one, so the two never disagree.

    The verbs: :meth:`image_features` (the per-image work, once), :meth:`score` (every
    expression against them), and :meth:`segment` / :meth:`segment_many` for both at once.
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
        visual.check_supported(backbone.model)
        k = self.config.k
        if backbone.is_vit and not 0 <= k <= visual.vit_num_blocks(backbone.model):
            raise ZsrisError(f"k must be between 0 and {visual.vit_num_blocks(backbone.model)}, not {k}")
        check_precision(self.config.precision, backbone.device)
        self.backbone = backbone
        self.model = backbone.model_in(weight_dtype(self.config.precision))  # what computes
        self.proposals = proposals
        self.preprocess_config = preprocess_preset(self.config.preprocess, backbone.model)
        self.parser = parser or ExpressionParser(model=self.config.spacy_model, cache_size=self.config.text_cache_size)
        self.text_encoder = TextEncoder(self.model, backbone.tokenizer, backbone.context_length,
                                        cache_size=self.config.text_cache_size)
        self.policy = Policy.from_config(self.config)
        self._last_features: Optional[tuple[Any, ImageFeatures]] = None
        if backbone.is_random:
            warnings.warn(RANDOM_WEIGHTS_WARNING, stacklevel=2)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # -- preprocessing -------------------------------------------------------------------
    def image_tensors(self, image: np.ndarray) -> tuple[Tensor, Tensor]:
        """The normalised image at full resolution ``[1, 3, H, W]`` (for the masks' crops) and the
        CLIP input ``[1, 3, S, S]`` (for the global pass), on the model's device. Under
        ``preprocess='paper'`` both are made, as the authors' loop makes them, from the image
        first resized to a shorter side of 800 (PIL), with unantialiased tensor resizes."""
        short_side = self.preprocess_config.short_side
        if short_side is None:
            full = self.image_tensor(image)
            return full, self.clip_input(full)
        resized = TF.resize(Image.fromarray(np.ascontiguousarray(image)), short_side)
        base = self._normalise(torch.tensor(np.asarray(resized), device=self.device))
        size = self.backbone.input_size
        return (TF.resize(base, list(image.shape[:2]), antialias=False),
                TF.resize(base, [size, size], antialias=False))

    def image_tensor(self, image: np.ndarray) -> Tensor:
        """The normalised full-resolution image ``[1, 3, H, W]`` on the model's device."""
        if self.preprocess_config.short_side is not None:
            return self.image_tensors(image)[0]
        return self._normalise(torch.tensor(image, device=self.device))

    def _normalise(self, pixels: Tensor) -> Tensor:
        pixels = pixels.permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.preprocess_config.mean, device=self.device)[:, None, None]
        std = torch.tensor(self.preprocess_config.std, device=self.device)[:, None, None]
        return ((pixels - mean) / std)[None]

    def clip_input(self, image_tensor: Tensor) -> Tensor:
        """The whole image resized (not cropped) to CLIP's input size, as the reference does."""
        size = self.backbone.input_size
        return TF.resize(image_tensor, [size, size], antialias=self.preprocess_config.antialias)

    # -- visual features ------------------------------------------------------------------
    def global_features(self, clip_input: Tensor, masks: Tensor | np.ndarray,
                        batch_size: Optional[int] = None) -> Tensor:
        """Global-context features ``[N, D]`` (raw) of ``masks`` on a preprocessed CLIP input."""
        masks = torch.as_tensor(masks, device=self.device)
        return visual.global_features(self.model, clip_input.to(self.device), masks, self.config.k,
                                      batch_size=batch_size or self.config.batch_size,
                                      antialias=self.preprocess_config.antialias)

    def local_features(self, image_tensor: Tensor, masks: Tensor | np.ndarray,
                       boxes: Optional[Tensor | np.ndarray] = None, batch_size: Optional[int] = None) -> Tensor:
        """Local-context features ``[N, D]`` (raw) of ``masks`` on a preprocessed full-size image."""
        masks = torch.as_tensor(masks)
        boxes = None if boxes is None else torch.as_tensor(boxes)
        return visual.local_features(self.model, image_tensor.to(self.device), masks,
                                     self.preprocess_config.fill, self.backbone.input_size, boxes,
                                     batch_size=batch_size or self.config.batch_size,
                                     antialias=self.preprocess_config.antialias)

    def _visual_features(self, image_tensors: Sequence[Tensor], clip_inputs: Sequence[Tensor],
                         masks: Sequence[Tensor], boxes: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Global and local features of each image at the configured precision, the images'
        proposals sharing forward passes. Out of GPU memory (a huge image, a large backbone), the
        same work is done again with half the batch, down to one proposal at a time, rather than
        failing the run."""
        batch_size, antialias = self.config.batch_size, self.preprocess_config.antialias
        while True:
            try:
                with compute_precision(self.config.precision, self.device):
                    g = visual.global_features_many(self.model, torch.cat(list(clip_inputs)), masks, self.config.k,
                                                    batch_size=batch_size, antialias=antialias)
                    loc = visual.local_features_many(self.model, image_tensors, masks, self.preprocess_config.fill,
                                                     self.backbone.input_size, boxes, batch_size=batch_size,
                                                     antialias=antialias)
                return [f.float() for f in g], [f.float() for f in loc]
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise ZsrisError("out of GPU memory even with one proposal per forward pass; "
                                     "lower --max-pixels or use a smaller backbone") from None
                batch_size = max(1, batch_size // 2)
                torch.cuda.empty_cache()
                which = "this image goes" if len(image_tensors) == 1 else f"these {len(image_tensors)} images go"
                warnings.warn(f"zsris: out of GPU memory; {which} again with --batch-size {batch_size}",
                              ZsrisWarning, stacklevel=2)

    def fuse_visual(self, global_features: Tensor, local_features: Tensor) -> Tensor:
        """The fused, L2-normalised visual feature of each proposal (see :mod:`zsris.fusion`)."""
        return fuse_visual(global_features, local_features, self.config.alpha, self.config.fusion,
                           self.backbone.is_vit)

    def image_features(self, image: ImageInput, image_id: Optional[str] = None,
                       proposals: Optional[Proposals] = None,
                       step: Optional[Callable[[], ContextManager[Any]]] = None,
                       step_pixels: Optional[int] = None, expressions: Sequence[str] = ()) -> ImageFeatures:
        """Proposals and their global, local and fused features: the per-image work.

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
        pixels, image_id = self._load(image, image_id)
        proposals = self.proposals_for(pixels, image_id, expressions, proposals)
        self._check_proposals(pixels, proposals, image_id)
        if step is None:
            return self._features([(pixels, proposals)])[0]
        per_step = max(1, (step_pixels or STEP_MASK_PIXELS) // max(1, pixels.shape[0] * pixels.shape[1]))
        if per_step >= len(proposals):
            with step():
                return self._features([(pixels, proposals)])[0]
        with step():
            tensors = self.image_tensors(pixels)
        parts = []
        for start in range(0, len(proposals), per_step):
            with step():
                part = proposals.select(np.arange(start, min(start + per_step, len(proposals))))
                parts.append(self._features_of([tensors], [part])[0])
        return ImageFeatures(proposals, *(torch.cat([getattr(f, name) for f in parts]) for name in
                                          ("global_features", "local_features", "visual_features")))

    def proposals_for(self, pixels: np.ndarray, image_id: Optional[str] = None, expressions: Sequence[str] = (),
                      base: Optional[Proposals] = None) -> Proposals:
        """The proposals that ``expressions`` about the image choose among: ``base`` (made here
        when not given), and with a prompted generator its instances of each expression's noun
        phrase, added once (one pass a distinct phrase; an expression without a noun phrase adds
        none; proposals that already have their instances are returned as they are)."""
        proposals = base if base is not None else self.proposals(pixels, image_id)
        if not is_prompted(self.proposals) or proposals.prompts is not None:
            return proposals
        phrases = [p.noun_phrase for p in self.parser.parse_many(list(expressions)) if p.has_noun_phrase]
        return self.proposals.with_instances(pixels, proposals, phrases)

    def image_features_many(
        self, images: Sequence[tuple[Optional[np.ndarray], Optional[Proposals]]]
    ) -> list[Optional[ImageFeatures]]:
        """:meth:`image_features` of several decoded images with their proposals, whose proposals
        share forward passes (``batch_size`` at a time): fewer, fuller passes on a GPU. None
        stands for an image left to :meth:`image_features`: one without pixels or proposals, or
        one it refuses (no proposals, sizes that disagree), so that it says why. Results equal
        one image at a time up to float rounding. Images go together only while their masks
        hold at most :data:`MASK_PIXELS_PER_PASS` pixels (on the device at once, as bool); a
        larger image goes alone, as it would with one image per pass."""
        if is_prompted(self.proposals):  # its proposals wait for each image's expressions
            return [None] * len(images)
        usable = []
        for position, (pixels, proposals) in enumerate(images):
            if pixels is None or proposals is None:
                continue
            try:
                self._check_proposals(pixels, proposals, None)
            except ZsrisError:
                continue
            usable.append(position)
        answers: list[Optional[ImageFeatures]] = [None] * len(images)
        for part in _within_budget(usable, [images[i][1].masks.size for i in usable], MASK_PIXELS_PER_PASS):
            for position, features in zip(part, self._features([images[i] for i in part])):
                answers[position] = features
        return answers

    def _check_proposals(self, pixels: np.ndarray, proposals: Proposals, image_id: Optional[str]) -> None:
        if len(proposals) == 0:
            raise NoProposalsError(
                f"no mask proposals in {image_id or 'the image'}: the {getattr(self.proposals, 'name', '')} "
                f"generator found nothing to choose from"
            )
        if proposals.image_size != pixels.shape[:2]:
            raise ZsrisError(f"proposals are {proposals.image_size}, the image is {pixels.shape[:2]}")

    def _features(self, images: Sequence[tuple[np.ndarray, Proposals]]) -> list[ImageFeatures]:
        if not images:
            return []
        return self._features_of([self.image_tensors(pixels) for pixels, _ in images],
                                 [proposals for _, proposals in images])

    def _features_of(self, image_tensors: Sequence[tuple[Tensor, Tensor]],
                     proposals: Sequence[Proposals]) -> list[ImageFeatures]:
        """Features of each image's proposals from its :meth:`image_tensors`."""
        tensors, clip_inputs = zip(*image_tensors)
        masks = [visual.masks_on(p, self.device) for p in proposals]  # once, as bool
        boxes = [torch.from_numpy(p.boxes) for p in proposals]
        g, loc = self._visual_features(tensors, clip_inputs, masks, boxes)
        return [ImageFeatures(p, gi, li, self.fuse_visual(gi, li)) for p, gi, li in zip(proposals, g, loc)]

    def _load(self, image: ImageInput, image_id: Optional[str]) -> tuple[np.ndarray, Optional[str]]:
        if image_id is None and isinstance(image, (str, Path)):
            image_id = Path(image).name
        return load_image(image, self.config.max_pixels), image_id

    # -- text ---------------------------------------------------------------------------
    def text_features(self, expressions: Sequence[str]) -> tuple[Tensor, list[ParsedExpression]]:
        """Fused, L2-normalised text features ``[E, D]`` and the parses behind them."""
        parsed = self.parser.parse_many(expressions)
        with compute_precision(self.config.precision, self.device):
            # one forward pass for the sentences and their noun phrases together
            both = self.text_encoder.encode([*(p.sentence for p in parsed), *(p.noun_phrase for p in parsed)]).float()
        sentences, phrases = both[:len(parsed)], both[len(parsed):]
        return fuse_text(sentences, phrases, self.config.beta, self.config.fusion, self.backbone.is_vit), parsed

    # -- scoring --------------------------------------------------------------------------
    def score(self, features: ImageFeatures, expressions: Sequence[str]) -> list[SegmentResult]:
        """Score every proposal against every expression; each result keeps all the scores and
        holds the answer the segmenter's policy (:func:`zsris.decide.decide`) gives."""
        text, parsed = self.text_features(expressions)
        fused = (text @ features.visual_features.T).cpu()
        global_scores = (text @ F.normalize(features.global_features, dim=-1).T).cpu()
        local_scores = (text @ F.normalize(features.local_features, dim=-1).T).cpu()
        order = torch.argsort(fused, dim=1, descending=True, stable=True)
        phrase_scores = self._phrase_scores(features, parsed).numpy() if self.policy.spatial else None
        proposals, results = features.proposals, []
        for row, parse in enumerate(parsed):
            if proposals.prompts is not None:
                results.append(self._prompted_result(parse, proposals, fused[row], global_scores[row],
                                                     local_scores[row], None if phrase_scores is None else
                                                     phrase_scores[row]))
                continue
            scores = Scores(fused[row].numpy(), global_scores[row].numpy(), local_scores[row].numpy(),
                            order[row].numpy())
            answer = decide(scores, proposals, self.policy, parse.spatial,
                            None if phrase_scores is None else phrase_scores[row])
            results.append(segment_result(parse, scores, proposals, answer))
        return results

    def _prompted_result(self, parse: ParsedExpression, proposals: Proposals, fused: Tensor, global_scores: Tensor,
                         local_scores: Tensor, phrase_scores: Optional[np.ndarray]) -> SegmentResult:
        """One expression's answer among its own candidates: its noun phrase's instances and the
        class-agnostic proposals (those alone for an expression without a noun phrase); the
        phrase's presence below the generator's threshold answers "no such object". The result's
        indices are the candidates'; its ``prompt`` record says what was sent and what decided."""
        phrase = parse.noun_phrase if parse.has_noun_phrase else None
        rows = proposals.candidates(phrase)
        presence = (proposals.presence or {}).get(phrase) if phrase is not None else None
        threshold = self.proposals.config.presence_threshold
        candidates = proposals.select(rows)
        index = torch.from_numpy(rows)
        sub_fused = fused[index]
        scores = Scores(sub_fused.numpy(), global_scores[index].numpy(), local_scores[index].numpy(),
                        torch.argsort(sub_fused, descending=True, stable=True).numpy())
        record = {"generator": self.proposals.name, "noun_phrase_sent": phrase,
                  "instances": int(np.count_nonzero(proposals.prompts == phrase)) if phrase is not None else 0,
                  "class_agnostic": int(np.count_nonzero(proposals.prompts == "")), "presence": presence,
                  "presence_threshold": threshold}
        if phrase is None:
            record["fallback"] = "no noun phrase: the class-agnostic proposals only"
        best = float(sub_fused.max()) if len(rows) else -1.0
        if presence is not None and presence < threshold:
            answer, record["decided_by"] = Answer(-1, best, found=False), "presence"
        elif not len(rows):
            answer, record["decided_by"] = Answer(-1, best, found=False), "no candidates"
        else:
            answer = decide(scores, candidates, self.policy, parse.spatial,
                            None if phrase_scores is None else phrase_scores[rows])
            record["decided_by"] = "clip" if answer.found else "no_target_threshold"
        result = segment_result(parse, scores, candidates, answer)
        result.prompt, result.candidates = record, rows.tolist()
        return result

    def _phrase_scores(self, features: ImageFeatures, parsed: Sequence[ParsedExpression]) -> Tensor:
        """``[E, N]``: each noun phrase alone against the proposals, which picks the spatial
        candidates (the sentence's own words of place mean little to CLIP)."""
        with compute_precision(self.config.precision, self.device):
            phrases = self.text_encoder.encode(p.noun_phrase for p in parsed).float()
        return (F.normalize(phrases, dim=-1) @ features.visual_features.T).cpu()

    def segment_many(self, image: ImageInput, expressions: Sequence[str],
                     image_id: Optional[str] = None) -> list[SegmentResult]:
        """Segment several expressions about one image; the visual work is done once, and kept
        for the next call about the same image (the same pixels and id): asking again about
        the last image costs only the text (:meth:`last_image_features`)."""
        if isinstance(expressions, str):
            raise ZsrisError("segment_many takes a list of expressions; use segment for one")
        for expression in expressions:
            check_expression(expression)
        return self.score(self.last_image_features(image, image_id, expressions), expressions)

    @overload
    def segment(self, image: ImageInput, expression: str, image_id: Optional[str] = None) -> SegmentResult: ...

    @overload
    def segment(self, image: ImageInput, expression: Sequence[str],
                image_id: Optional[str] = None) -> list[SegmentResult]: ...

    def segment(self, image, expression, image_id=None):
        """The mask of the object that ``expression`` refers to in ``image``; given a list of
        expressions, one result per expression (:meth:`segment_many`)."""
        if isinstance(expression, str):
            return self.segment_many(image, [expression], image_id)[0]
        return self.segment_many(image, list(expression), image_id)

    __call__ = segment

    def last_image_features(self, image: ImageInput, image_id: Optional[str] = None,
                            expressions: Sequence[str] = ()) -> ImageFeatures:
        """:meth:`image_features`, remembered for the last image: the same pixels (by a hash of
        their bytes) and id get the same features back without any visual work. One image's
        features are kept (its proposals' masks: 30 MB for 100 of a 640 x 480 image). With a
        prompted generator the expressions are part of the key (they decide the proposals)."""
        pixels, image_id = self._load(image, image_id)
        prompts = tuple(expressions) if is_prompted(self.proposals) else ()
        key = (hashlib.sha1(np.ascontiguousarray(pixels).data).hexdigest(), pixels.shape, image_id, prompts)
        if self._last_features is None or self._last_features[0] != key:
            self._last_features = None  # the old image's features go before the new ones are made
            self._last_features = (key, self.image_features(pixels, image_id, expressions=expressions))
        return self._last_features[1]


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
    parser = parser or ExpressionParser(model=config.spacy_model)  # first: a missing model fails in a second
    device = resolve_device(config.device)
    clip = load_backbone(config.backbone, config.pretrained, config.weights, device)
    if generator is None:
        generator = create_proposals(config.proposals, device)
    return Segmenter(clip, generator, config, parser)
