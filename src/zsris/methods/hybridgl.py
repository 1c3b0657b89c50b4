"""HybridGL (Liu and Li, CVPR 2025): hybrid global-local features with spatial guidance.

Each proposal is seen twice by CLIP ViT-B/16: the *local* image (the proposal kept, the rest
filled with CLIP's pixel mean, the image otherwise normalised with ImageNet's statistics, as the
authors' script does) and the *global* image (the proposal sharp, the rest Gaussian-blurred with
a 15 x 15 kernel), both resized to 224 without antialiasing. The two pass the first
``masking_block`` blocks alone; in the last ones they are fused (``fusion``, the script's
``--fusion_mode``; ``G2L`` by default: the local stream adds twice the global stream's tokens
masked by the proposal, the global stream's class token attends only to the proposal's patches).

An expression scores each proposal with its sentence and noun phrase (``r`` = 0.5) at CLIP's
logit scale; the best is the *pure* answer. The answer *with spatial guidance* re-ranks the top
``k1`` = 3: spatial relationship guidance (the relation word between the candidate's box and the
top ``k2`` = 6 boxes of the other nouns' "a photo of ..." scores, or of the target's own top
``k1`` where the sentence has no other noun) and spatial coherence guidance (GEM's map of the
noun phrase, :mod:`zsris.gem`, weighted towards the direction word; ``alpha`` = 0.6). Both
answers are kept; the second is the result (:class:`zsris.scoring.ScoreTable` ``choice``).

What the script does and zsris keeps, documented in docs/method.md: its relation word "right" never
matches (it compares a word with a set); a sentence without a noun chunk uses the whole sentence
as its noun phrase and GEM's prompt; ``k1`` and ``k2`` shrink to the proposals there are, per
image (the script keeps the smaller value for the images after).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import SegmenterConfig
from ..encoder import ClipEncoder
from ..errors import ZsrisError
from ..extras import require_extra
from ..gem import GEM_PROMPT, gem_features, gem_input, gem_maps
from ..preprocess import ImageTensors
from ..scoring import ScoreTable
from ..text import LRUCache, ParsedExpression, _target, load_spacy
from ..types import Proposals
from ..visual import _run_blocks, _vit_embed, _vit_head, is_map_vit
from .registry import HYBRIDGL_FUSIONS as FUSIONS

#: The script's settings: sentence against noun phrase, GEM against relations, candidates, block.
HYBRIDGL_R = 0.5
HYBRIDGL_ALPHA = 0.6
HYBRIDGL_K1 = 3
HYBRIDGL_K2 = 6
HYBRIDGL_BLOCK = 9
#: The local image's normalisation (ImageNet's) and its fill (CLIP's pixel mean, unnormalised).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLUR_KERNEL = 15

#: Noun chunks whose root is one of these are not "other nouns" (the script's RELATION_WORDS).
RELATION_ROOTS = frozenset({"left", "west", "right", "east", "above", "north", "top", "back", "behind", "below",
                            "south", "under", "front", "bigger", "larger", "closer", "smaller", "tinier",
                            "further", "inside", "within", "contained", "who", "what", "which", "middle"})
#: Other nouns that turn the relation off (the script's NULL_KEYWORDS).
NULL_NOUNS = frozenset({"part", "image", "side", "picture", "half", "region", "section", "photo"})
#: Relation words in the script's order; its "right" never matches, so its words are none here.
RELATIONS = (("left", frozenset({"left", "west"})), ("right", frozenset()),
             ("up", frozenset({"above", "north", "top", "back", "behind"})),
             ("down", frozenset({"below", "south", "under", "front"})),
             ("big", frozenset({"bigger", "larger", "closer"})),
             ("small", frozenset({"smaller", "tinier", "further", "smallest"})),
             ("within", frozenset({"inside", "within", "contained"})))
#: Direction words in the script's order (only left, right and middle shape GEM's map).
DIRECTIONS = (("left", frozenset({"left"})), ("right", frozenset({"right"})),
              ("middle", frozenset({"middle", "between"})), ("up", frozenset({"up", "top", "above"})),
              ("down", frozenset({"down", "under", "bottom", "low"})))
#: GEM's weight against the outside of a proposal, by relation word.
GEM_WEIGHTS = {"big": 1.95, "small": 1.5}
GEM_WEIGHT = 1.8


@dataclass(frozen=True)
class Cues:
    """What HybridGL reads in a sentence: its noun phrase, the other noun phrases (and their
    root nouns), the direction word that shapes GEM's map and the relation word between boxes."""

    phrase: str
    others: tuple[str, ...]
    nouns: tuple[str, ...]
    direction: str
    relation: str


def _nearest_to_root(doc, table: Sequence[tuple[str, frozenset]]) -> str:
    """The script's rule: scanning the tokens, a word of the table replaces the flag when its head
    comes earlier in the sentence than the head of the word that set it."""
    flag, depth = "none", 999
    for token in doc:
        for name, words in table:
            if token.text in words:
                if token.head.i < depth:
                    flag, depth = name, token.head.i
                break
    return flag


def read_cues(doc) -> Cues:
    """HybridGL's reading of a parsed sentence (``extract_noun_phrase``, ``extract_nouns``,
    ``extract_dir_phrase`` and ``extract_rela_word``)."""
    phrase, _ = _target(doc)
    others, nouns = [], []
    for chunk in doc.noun_chunks:
        if chunk.text == phrase or chunk.root.text in RELATION_ROOTS:
            continue
        others.append(chunk.text)
        nouns.append(chunk.root.text)
    relation = "none" if set(nouns) & NULL_NOUNS else _nearest_to_root(doc, RELATIONS)
    return Cues(phrase, tuple(others), tuple(nouns), _nearest_to_root(doc, DIRECTIONS), relation)


def direction_mask(direction: str, height: int, width: int) -> Tensor:
    """GEM's map weights for a direction word (``gen_dir_mask``): a ramp across the width towards
    the left, the right or the middle; ones otherwise."""
    if direction == "left":
        ramp = torch.linspace(1, 0, width)
    elif direction == "right":
        ramp = torch.linspace(0, 1, width)
    elif direction == "middle":
        ramp = torch.cat([torch.linspace(0, 1, width // 2), torch.linspace(1, 0, width - width // 2)])
    else:
        return torch.ones(height, width)
    return ramp.expand(height, width)


def relation_score(box_i: np.ndarray, box_j: np.ndarray, score_i: np.float32, score_j: np.float32,
                   relation: str) -> np.float32:
    """The script's ``relation_boxes`` for boxes (x, y, w, h): the product of the two scores where
    box ``i`` stands to box ``j`` as the relation says (for ``within``, times the share of ``i``
    inside ``j``); ``i``'s score alone without a relation."""
    if relation in ("none", "right"):  # "right" never reaches here from a sentence (the script's quirk)
        return score_i
    both = np.float32(score_i * score_j)
    xi, yi, wi, hi = (float(v) for v in box_i)
    xj, yj, wj, hj = (float(v) for v in box_j)
    if relation == "left":
        return np.float32(both * (xi + wi / 2 < xj + wj / 2))
    if relation == "up":
        return np.float32(both * (yi + hi / 2 < yj + hj / 2))
    if relation == "down":
        return np.float32(both * (yi + hi / 2 > yj + hj / 2))
    if relation == "big":
        return np.float32(both * (wi * hi > wj * hj))
    if relation == "small":
        return np.float32(both * (wi * hi < wj * hj))
    x1 = max(xi, xj)
    x2 = max(x1, min(xi + wi, xj + wj))
    y1 = max(yi, yj)
    y2 = max(y1, min(yi + hi, yj + hj))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.float32(both * np.float32(x2 - x1) * np.float32(y2 - y1) / np.float32(wi * hi))


def sam_boxes(proposals: Proposals) -> np.ndarray:
    """Boxes (x, y, w, h) as SAM's generator gives them: the first occupied column and row, and
    the distance to the last (inclusive) one."""
    boxes = np.asarray(proposals.boxes, dtype=np.int64)
    xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - 1 - boxes[:, 0], boxes[:, 3] - 1 - boxes[:, 1]], 1)
    xywh[(boxes[:, 2] == 0) & (boxes[:, 3] == 0)] = 0
    return xywh


#: Pixels (proposals x channels x image pixels) of the full-size images composed at once.
COMPOSE_PIXELS = 2 ** 26


def composed(masks: Tensor, inside: Tensor, outside: Tensor, size: int) -> Tensor:
    """``where(mask, inside, outside)`` for every mask, resized to ``size`` square without
    antialiasing (the script's ``T.Resize(..., antialias=None)``): ``[N, 3, size, size]``.
    ``inside``/``outside`` are ``[3, H, W]`` images or ``[3, 1, 1]`` constants."""
    height, width = masks.shape[1:]
    step = max(1, COMPOSE_PIXELS // (3 * height * width))
    return torch.cat([F.interpolate(torch.where(masks[start:start + step, None], inside, outside), size=(size, size),
                                    mode="bilinear") for start in range(0, len(masks), step)])


def hybrid_features(model: torch.nn.Module, local: Tensor, global_: Tensor, grid_masks: Tensor,
                    fusion: str = "G2L", block: int = HYBRIDGL_BLOCK) -> Tensor:
    """HybridGL's projected features ``[N, D]`` (``CLIPViTFM.forward``) of N proposals' local and
    global images ``[N, 3, S, S]`` with their masks on the patch grid ``[N, g, g]`` (bilinear, not
    antialiased). Blocks before ``block`` see each image alone; the rest fuse them by ``fusion``."""
    visual = model.visual
    blocks = list(visual.transformer.resblocks)
    weights = grid_masks.flatten(1)[:, :, None]
    n = len(local)
    alone = fusion in ("token_masking", "attn_masking")
    x = _vit_embed(visual, local if alone else torch.cat([local, global_]))
    x = _run_blocks(visual, blocks[:block], x)
    tail = blocks[block:]
    weights = weights.to(x.dtype)

    def masked(tokens: Tensor) -> Tensor:
        return torch.cat([tokens[:, :1], tokens[:, 1:] * weights], dim=1)

    # the class token attends to itself and the proposal's patches, every other token to all (made once)
    keep = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=x.device), weights[:, :, 0] != 0], dim=1)
    length, heads = x.shape[1], blocks[0].attn.num_heads
    bias = torch.zeros(n, length, length, dtype=x.dtype, device=x.device)
    bias[:, 0] = torch.zeros_like(keep, dtype=x.dtype).masked_fill(~keep, float("-inf"))
    bias = bias[:, None].expand(-1, heads, -1, -1).reshape(n * heads, length, length)
    batch_first = getattr(visual.transformer, "batch_first", True)

    def attending(tokens: Tensor, each: Sequence[torch.nn.Module]) -> Tensor:
        tokens = tokens if batch_first else tokens.transpose(0, 1)
        for one in each:
            tokens = one(tokens, attn_mask=bias)
        return tokens if batch_first else tokens.transpose(0, 1)

    if fusion == "token_masking":
        for one in tail:
            x = _run_blocks(visual, [one], masked(x))
        return _vit_head(visual, x[:, 0])
    if fusion == "attn_masking":  # the script stops one block early
        return _vit_head(visual, attending(x, tail[:-1])[:, 0])
    x_local, x_global = x[:n], x[n:]
    if fusion == "G2L":
        for position, one in enumerate(tail):
            x_local = _run_blocks(visual, [one], masked(x_global) * 2 + x_local)
            if position < len(tail) - 1:  # the global stream's last block feeds nothing
                x_global = attending(x_global, [one])
        return _vit_head(visual, x_local[:, 0])
    if fusion == "L2G":
        for one in tail:
            x_local, x_global = _run_blocks(visual, [one], x_local), attending(x_local + x_global * 2, [one])
        return _vit_head(visual, x_global[:, 0])
    hybrid_local, hybrid_global = x_local, x_global
    for position, one in enumerate(tail):
        global_masked = masked(x_global)
        hybrid_local = _run_blocks(visual, [one], hybrid_local + 2 * global_masked)
        hybrid_global = attending(x_local + 2 * hybrid_global, [one])
        if position < len(tail) - 1:
            x_local, x_global = _run_blocks(visual, [one], x_local), attending(x_global, [one])
    return _vit_head(visual, hybrid_local[:, 0]) + _vit_head(visual, hybrid_global[:, 0])


@dataclass
class HybridFeatures:
    """One image's HybridGL features: its proposals' hybrid features ``[N, D]`` (raw), their boxes
    as SAM gives them, and GEM's patch features of the image (for any phrase)."""

    proposals: Proposals
    hybrid: Tensor
    gem: Tensor
    boxes: np.ndarray = field(repr=False)


class HybridGL:
    """HybridGL on ``encoder`` (a CLIP ViT; ViT-B/16 is the paper's), with the script's settings."""

    name = "hybridgl"
    #: It makes its own choice (:attr:`zsris.scoring.ScoreTable.choice`) among every proposal.
    chooses = True

    def __init__(self, encoder: ClipEncoder, spacy_model: Optional[str] = None, fusion: str = "G2L",
                 r: float = HYBRIDGL_R, alpha: float = HYBRIDGL_ALPHA, k1: int = HYBRIDGL_K1, k2: int = HYBRIDGL_K2,
                 masking_block: int = HYBRIDGL_BLOCK) -> None:
        require_extra("hybridgl", "the hybridgl method")
        model = encoder.backbone.model
        blocks = getattr(getattr(getattr(model, "visual", None), "transformer", None), "resblocks", None)
        if is_map_vit(model) or blocks is None or not hasattr(blocks[0].attn, "in_proj_weight"):
            raise ZsrisError("the hybridgl method needs an open_clip ViT with a class token (ViT-B/16 is the paper's)")
        if fusion not in FUSIONS:
            raise ZsrisError(f"the hybridgl method's fusion is one of {', '.join(FUSIONS)}, not {fusion!r}")
        if not 0 < masking_block < len(blocks) - 1:
            raise ZsrisError(f"the hybridgl method's masking_block is between 1 and {len(blocks) - 2}, "
                             f"not {masking_block}")
        if k1 < 1 or k2 < 1:
            raise ZsrisError("the hybridgl method's k1 and k2 are at least 1")
        self.encoder = encoder
        self.fusion, self.r, self.alpha, self.k1, self.k2, self.block = fusion, r, alpha, k1, k2, masking_block
        self.spacy_model = spacy_model
        self._cues: LRUCache[Cues] = LRUCache(4096)

    # -- visual --------------------------------------------------------------------------------

    def features(self, images: Sequence[ImageTensors], proposals: Sequence[Proposals]) -> list[HybridFeatures]:
        """Each image's hybrid features (its blur made once, both images of every proposal in
        shared passes of ``batch_size``) and GEM's features (one pass an image)."""
        return [self._one(tensors, props) for tensors, props in zip(images, proposals)]

    def _one(self, tensors: ImageTensors, proposals: Proposals) -> HybridFeatures:
        import cv2

        if tensors.pixels is None:
            raise ZsrisError("the hybridgl method needs the image's pixels (ImageTensors.pixels)")
        encoder, device = self.encoder, self.encoder.device
        pixels = np.ascontiguousarray(tensors.pixels)
        size = encoder.backbone.input_size
        blurred = cv2.GaussianBlur(pixels, (BLUR_KERNEL, BLUR_KERNEL), 0)
        image = torch.tensor(pixels, device=device).permute(2, 0, 1).float().div(255)
        blur = torch.tensor(blurred, device=device).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
        if encoder.preprocess.short_side is None:
            normalised = image.sub(mean).div(std)
        else:  # --preprocess paper (the PhraseCut script's image: resized to 800 first, then back)
            normalised = tensors.full[0].to(device)
        fill = torch.tensor(CLIP_PIXEL_MEAN, device=device)[:, None, None]
        grid = size // encoder.backbone.model.visual.patch_size[0]
        masks = torch.from_numpy(np.ascontiguousarray(proposals.masks)).to(device)

        def compute(batch: int) -> Tensor:
            parts = []
            for start in range(0, len(proposals), batch):
                part = masks[start:start + batch]
                local = composed(part, normalised, fill, size)
                global_ = composed(part, image, blur, size).sub(mean).div(std)
                on_grid = F.interpolate(part[:, None].float(), size=(grid, grid), mode="bilinear")[:, 0]
                parts.append(hybrid_features(encoder.model, local, global_, on_grid, self.fusion, self.block).float())
            return torch.cat(parts) if parts else torch.zeros(0, encoder.model.visual.output_dim, device=device)

        with torch.inference_mode():
            hybrid = encoder.retrying(compute)
            gem = encoder.retrying(lambda _: gem_features(encoder.model, gem_input(pixels, device))[0])
        return HybridFeatures(proposals, hybrid, gem, sam_boxes(proposals))

    def join(self, proposals: Proposals, parts: Sequence[HybridFeatures]) -> HybridFeatures:
        return HybridFeatures(proposals, torch.cat([p.hybrid for p in parts]), parts[0].gem, sam_boxes(proposals))

    # -- text and the two answers ----------------------------------------------------------------

    def cues(self, sentence: str) -> Cues:
        """HybridGL's reading of a normalised sentence (:func:`read_cues`), remembered."""
        return self._cues.get_many([sentence], lambda s: [read_cues(load_spacy(self.spacy_model)(t)) for t in s])[0]

    def scores(self, features: HybridFeatures, parsed: Sequence[ParsedExpression], phrases: bool) -> ScoreTable:
        """Cosines of the hybrid features with each expression's sentence-phrase text (what ranks the
        proposals), with each row's answer after spatial guidance as the table's ``choice`` and both
        answers in its ``records``."""
        encoder = self.encoder
        cues = [self.cues(p.sentence) for p in parsed]
        text = encoder.text([*(p.sentence for p in parsed), *(c.phrase for c in cues)])
        ensemble = F.normalize(self.r * text[:len(parsed)] + (1 - self.r) * text[len(parsed):], dim=-1)
        visual = F.normalize(features.hybrid, dim=-1)
        scale = float(encoder.model.logit_scale.detach().exp())
        logits = (scale * visual) @ ensemble.T  # [N, E], as the script computes it
        cosines = (visual @ ensemble.T).T.cpu()
        maps = self._maps(features, sorted({c.phrase for c in cues}))
        choices, records = [], []
        for row, cue in enumerate(cues):
            pure = int(torch.argmax(logits[:, row]))
            chosen = self._guided(features, logits[:, row], cue, maps[cue.phrase])
            choices.append(chosen)
            records.append({"pure_proposal_index": pure, "spatial_proposal_index": chosen,
                            "direction": cue.direction, "relation": cue.relation, "other_nouns": list(cue.others)})
        return ScoreTable(cosines, choice=choices, records=records)

    def _maps(self, features: HybridFeatures, phrases: list[str]) -> dict[str, Tensor]:
        """GEM's map of each phrase on the image, from the image's one GEM pass."""
        text = self.encoder.text([GEM_PROMPT.format(p) for p in phrases])
        maps = gem_maps(features.gem, text, features.proposals.image_size)
        return dict(zip(phrases, maps))

    def _negatives(self, cue: Cues) -> Tensor:
        """The mean of the other nouns' "a photo of ..." features, summed in the script's order."""
        found = self.encoder.text(["a photo of " + other for other in cue.others])
        total = torch.zeros(1, found.shape[1], device=found.device)
        for one in found:
            total = total + one
        return total / len(cue.others)

    def _guided(self, features: HybridFeatures, logits: Tensor, cue: Cues, attention: Tensor) -> int:
        """The answer with spatial relationship and coherence guidance among the top ``k1``."""
        count = len(logits)
        k1, k2 = min(self.k1, count), min(self.k2, count)
        probabilities = torch.softmax(logits, dim=0)
        top = torch.topk(probabilities, k=k1).indices
        boxes = features.boxes
        if cue.nouns:
            negative = (float(self.encoder.model.logit_scale.detach().exp()) * F.normalize(features.hybrid, dim=-1)) @ \
                F.normalize(self._negatives(cue), dim=-1).T
            negative = torch.softmax(negative[:, 0], dim=0)
            others, other_scores = torch.topk(negative, k=k2).indices, negative
        else:
            others, other_scores = top, probabilities
        p = probabilities.cpu().numpy()
        q = other_scores.cpu().numpy()
        sums = np.zeros(k1, dtype=np.float32)  # the script adds float32 tensors into its array
        for i, candidate in enumerate(top.tolist()):
            for other in others.tolist():
                sums[i] = sums[i] + relation_score(boxes[candidate], boxes[other], p[candidate], q[other], cue.relation)
        guided = torch.softmax(torch.from_numpy(sums), dim=0)
        attention = attention.to(logits.device)
        attention = (attention - attention.min()) / (attention.max() - attention.min())
        attention = attention * direction_mask(cue.direction, *attention.shape).to(attention.device)
        attention = attention / attention.mean()
        weight = GEM_WEIGHTS.get(cue.relation, GEM_WEIGHT)
        candidates = features.proposals.masks[top.cpu().numpy()]
        inside = torch.from_numpy(candidates.reshape(len(candidates), -1)).to(attention.device).float()
        flat = attention.reshape(-1)
        coherence = ((2 - weight) * (inside @ flat) / inside.sum(1)
                     - weight * ((1 - inside) @ flat) / (1 - inside).sum(1)).cpu()
        guided = guided * (1 - self.alpha) + self.alpha * coherence
        return int(top[int(torch.argmax(guided))])


def from_config(config: SegmenterConfig, encoder: ClipEncoder) -> HybridGL:
    """The registry's factory: HybridGL with the config's spaCy model and the method's settings."""
    if config.spatial == "on":
        raise ZsrisError("the hybridgl method has its own spatial guidance; --spatial on is the global-local "
                         "method's rule (leave it out)")
    return HybridGL(encoder, config.spacy_model, **config.method.options)
