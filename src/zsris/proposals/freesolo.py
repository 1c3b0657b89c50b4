"""FreeSOLO proposals (Wang et al., CVPR 2022), the paper's own, in plain PyTorch.

The paper takes its mask proposals from FreeSOLO: SOLOv2 with a ResNet-101-FPN trained without
labels (checkpoint ``FreeSOLO_R101_30k_pl.pth``). Its released code runs on a 2021 detectron2
fork; this module is the same network and the same inference, written from the architecture
and FreeSOLO's test settings, with detectron2's parameter names so that its checkpoint loads
tensor by tensor:

- the input as the authors' dataset feeds it: the PIL image resized to a shorter side of 800
  (bilinear), ImageNet-normalised, zero-padded to a multiple of 32;
- ResNet-101 in detectron2's layout (stride in the 3x3 conv, frozen batch norm) and its FPN
  (P2-P6, P6 a stride-2 subsampling of P5);
- the SOLOv2 instance head (coordinate channels, features resized to each level's grid,
  category and kernel towers with group norm) and mask head (levels merged at 1/4 scale);
- inference: point NMS on the category map, score threshold 0.1, masks from the dynamic
  kernels, the mask-area-above-stride filter, maskness-weighted scores, the 500 best, Gaussian
  matrix NMS (sigma 2), update threshold 0.05, the 100 best, masks brought back to the input's
  size and then to the original size (bilinear) and thresholded at 0.5;
- FreeSOLO's boxes, which are not tight: centred on the centre of mass of the mask's row and
  column projections and as wide and high as those projections (``Proposals.boxes``, floats,
  in FreeSOLO's order). The local crops truncate them to integers, as the authors' loop does.

``scripts/compare_freesolo.py`` checks every mask and box against the authors' model built on
detectron2, on the same checkpoint and images.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn

from ..checkpoints import find_checkpoint, read_state_dict
from ..errors import WeightsError
from .base import Proposals, check_max_proposals, config_key
from .configs import FREESOLO_CHECKPOINT_ENV, FREESOLO_FILE, FREESOLO_HUB_REPO, FREESOLO_WEIGHTS, FreeSoloConfig
from .registry import Configured, ProposalSpec, config_of

RANDOM = "random"
#: What FreeSOLO's training leaves in its checkpoint beside the network's weights.
TRAINING_ONLY = ("_iter",)
#: Longest side over shortest beyond which an image gets no FreeSOLO proposals (a 10 x 4000 strip
#: would become 800 x 320,000 pixels).
MAX_ASPECT = 20
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- the network --------------------------------------------------------------------------------
class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all buffers (detectron2's)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels) - eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, eps=self.eps)


class ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by its frozen batch norm, named ``norm`` as in detectron2."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(inputs, outputs, kernel, stride=stride, padding=padding, bias=False)
        self.norm = FrozenBatchNorm2d(outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    def __init__(self, inputs: int, bottleneck: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.shortcut = ConvNorm(inputs, outputs, 1, stride) if inputs != outputs else None
        self.conv1 = ConvNorm(inputs, bottleneck, 1)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride, padding=1)
        self.conv3 = ConvNorm(bottleneck, outputs, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, 64, 7, stride=2, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet-101's stem and stages res2-res5 (3, 4, 23 and 3 bottleneck blocks)."""

    def __init__(self, depths: Sequence[int] = (3, 4, 23, 3)) -> None:
        super().__init__()
        self.stem = Stem()
        inputs, bottleneck, outputs = 64, 64, 256
        for stage, depth in enumerate(depths, start=2):
            blocks = [Bottleneck(inputs if i == 0 else outputs, bottleneck, outputs,
                                 2 if i == 0 and stage > 2 else 1) for i in range(depth)]
            self.add_module(f"res{stage}", nn.Sequential(*blocks))
            inputs, bottleneck, outputs = outputs, bottleneck * 2, outputs * 2

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for stage in range(2, 6):
            x = getattr(self, f"res{stage}")(x)
            features.append(x)
        return features


class ResNetFPN(nn.Module):
    """The FPN over res2-res5: 1x1 laterals, nearest-neighbour top-down sums, 3x3 outputs, and
    P6 taken from P5 with stride 2. Its input must be padded to a multiple of 32."""

    size_divisibility = 32

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.bottom_up = ResNet()
        for stage, inputs in zip(range(2, 6), (256, 512, 1024, 2048)):
            self.add_module(f"fpn_lateral{stage}", nn.Conv2d(inputs, channels, 1))
            self.add_module(f"fpn_output{stage}", nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.bottom_up(x)
        previous = getattr(self, "fpn_lateral5")(features[-1])
        outputs = [getattr(self, "fpn_output5")(previous)]
        for stage in (4, 3, 2):
            top_down = F.interpolate(previous, scale_factor=2.0, mode="nearest")
            previous = getattr(self, f"fpn_lateral{stage}")(features[stage - 2]) + top_down
            outputs.insert(0, getattr(self, f"fpn_output{stage}")(previous))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2, padding=0))
        return outputs  # P2 ... P6


def _conv_gn_relu(inputs: int, outputs: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2, bias=False), nn.GroupNorm(32, outputs),
            nn.ReLU(inplace=True)]


def coordinates(x: Tensor) -> Tensor:
    """``x`` with two channels appended: the x and y position of each cell, from -1 to 1."""
    ys = torch.linspace(-1, 1, x.shape[-2], device=x.device)
    xs = torch.linspace(-1, 1, x.shape[-1], device=x.device)
    y, xx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.cat([xx.expand(x.shape[0], 1, -1, -1), y.expand(x.shape[0], 1, -1, -1)], 1)
    return torch.cat([x, grid], 1)


class InstanceHead(nn.Module):
    """Per grid cell: category scores and a dynamic 1x1 kernel for the mask features. The
    embedding branch (a training signal) is kept for the checkpoint's sake, never run."""

    def __init__(self, num_classes: int, num_grids: Sequence[int], channels: int = 512, inputs: int = 256,
                 kernels: int = 256, embeddings: int = 128, convs: int = 4) -> None:
        super().__init__()
        self.num_grids = tuple(num_grids)
        for name, extra in (("cate", 0), ("kernel", 2)):
            tower = []
            for i in range(convs):
                tower += _conv_gn_relu((inputs + extra) if i == 0 else channels, channels)
            self.add_module(f"{name}_tower", nn.Sequential(*tower))
        self.cate_pred = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.kernel_pred = nn.Conv2d(channels, kernels, 3, padding=1)
        self.emb_pred = nn.Conv2d(channels, embeddings, 3, padding=1)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        categories, kernels = [], []
        for feature, grid in zip(features, self.num_grids):
            resized = F.interpolate(coordinates(feature), size=grid, mode="bilinear")
            kernels.append(self.kernel_pred(self.kernel_tower(resized)))
            categories.append(self.cate_pred(self.cate_tower(resized[:, :-2])))
        return categories, kernels


class MaskHead(nn.Module):
    """Unified mask features at 1/4 scale: each FPN level (P5 with coordinate channels)
    convolved and upsampled to P2's size, summed, projected to 256 channels."""

    def __init__(self, inputs: int = 256, channels: int = 128, masks: int = 256, levels: int = 4) -> None:
        super().__init__()
        self.convs_all_levels = nn.ModuleList()
        for level in range(levels):
            stage = nn.Sequential()
            for j in range(max(level, 1)):
                first = inputs + (2 if level == levels - 1 else 0) if j == 0 else channels
                stage.add_module(f"conv{j}", nn.Sequential(*_conv_gn_relu(first, channels)))
                if level > 0:
                    stage.add_module(f"upsample{j}", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.convs_all_levels.append(stage)
        self.conv_pred = nn.Sequential(*_conv_gn_relu(channels, masks, kernel=1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        total = self.convs_all_levels[0](features[0])
        last = len(features) - 1
        for level in range(1, len(features)):
            feature = coordinates(features[level]) if level == last else features[level]
            total = total + self.convs_all_levels[level](feature)
        return self.conv_pred(total)


class FreeSolo(nn.Module):
    """FreeSOLO's network: ``forward`` gives the category maps after point NMS, the kernels and
    the mask features of a padded, normalised batch."""

    def __init__(self, config: FreeSoloConfig = FreeSoloConfig()) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNetFPN()
        self.ins_head = InstanceHead(config.num_classes, config.num_grids)
        self.mask_head = MaskHead()

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        p2, p3, p4, p5, p6 = self.backbone(images)
        levels = [F.interpolate(p2, scale_factor=0.5, mode="bilinear"), p3, p4, p5,
                  F.interpolate(p6, size=p5.shape[-2:], mode="bilinear")]
        categories, kernels = self.ins_head(levels)
        categories = [point_nms(c.sigmoid()).permute(0, 2, 3, 1) for c in categories]
        return categories, kernels, self.mask_head([p2, p3, p4, p5])


def random_init(model: FreeSolo, seed: int = 0) -> FreeSolo:
    """Random weights of the real architecture that still give proposals (tests and timing):
    He-initialised convolutions, batch-norm statistics left at the identity, and category biases
    at zero so that scores spread around 0.5 instead of FreeSOLO's 0.01 training prior."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.GroupNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        for stage in range(2, 6):  # keep the residual sums of 33 blocks from growing without bound
            for block in getattr(model.backbone.bottom_up, f"res{stage}"):
                block.conv3.norm.weight.fill_(0.2)
    return model


# -- inference ------------------------------------------------------------------------------------
def point_nms(heat: Tensor, kernel: int = 2) -> Tensor:
    """Keep a cell's score only where it is the maximum of the 2 x 2 window ending at it."""
    peak = F.max_pool2d(heat, (kernel, kernel), stride=1, padding=1)
    return heat * (peak[:, :, :-1, :-1] == heat).float()


def matrix_nms(labels: Tensor, masks: Tensor, areas: Tensor, scores: Tensor, sigma: float = 2.0) -> Tensor:
    """SOLOv2's Gaussian matrix NMS: each mask's score decayed by its overlap with every
    higher-scored mask of its class, compensated by how much that mask is itself suppressed.
    ``masks`` are sorted by descending ``scores``."""
    count = len(labels)
    if count == 0:
        return scores
    flat = masks.reshape(count, -1).float()
    inter = flat @ flat.T
    union = areas.expand(count, count)
    iou = (inter / (union + union.T - inter)).triu(diagonal=1)
    same = labels.expand(count, count)
    same_class = (same == same.T).float().triu(diagonal=1)
    decay_iou = iou * same_class
    compensate = decay_iou.max(0)[0].expand(count, count).T
    decay = torch.exp(-sigma * decay_iou ** 2) / torch.exp(-sigma * compensate ** 2)
    return scores * decay.min(0)[0]


def center_of_mass(masks: Tensor) -> tuple[Tensor, Tensor]:
    """The x and y centre of mass of ``[N, H, W]`` masks (0 for an empty one)."""
    _, height, width = masks.shape
    ys = torch.arange(height, dtype=torch.float32, device=masks.device)
    xs = torch.arange(width, dtype=torch.float32, device=masks.device)
    mass = masks.sum(dim=-1).sum(dim=-1).clamp(min=1e-6)
    return (masks * xs).sum(dim=-1).sum(dim=-1) / mass, (masks * ys[:, None]).sum(dim=-1).sum(dim=-1) / mass


def projection_boxes(masks: Tensor) -> Tensor:
    """FreeSOLO's boxes of ``[N, H, W]`` bool masks: ``x1, y1, x2, y2`` centred on the centre of
    mass of the column and row projections, as wide and high as the projections are long."""
    columns = masks.max(1)[0]
    rows = masks.max(2)[0]
    width, height = columns.sum(1), rows.sum(1)
    cx, _ = center_of_mass(columns[:, None, :])
    _, cy = center_of_mass(rows[:, :, None])
    return torch.stack([cx - 0.5 * width, cy - 0.5 * height, cx + 0.5 * width, cy + 0.5 * height], 1)


def freesolo_input(image: np.ndarray, short_side: int = 800) -> Tensor:
    """``[3, h, w]``: the image as the authors' dataset gives it to FreeSOLO (and to CLIP, under
    ``--preprocess paper``): PIL-resized to ``short_side`` (bilinear), ImageNet-normalised."""
    resized = TF.resize(Image.fromarray(np.ascontiguousarray(image)), short_side)
    return TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)


def pad_to(image: Tensor, divisor: int) -> Tensor:
    """``[1, 3, H', W']``: ``image`` zero-padded at the bottom and right to multiples of ``divisor``."""
    height, width = image.shape[-2:]
    return F.pad(image, [0, -width % divisor, 0, -height % divisor])[None]


@dataclass
class FreeSoloOutput:
    """One image's FreeSOLO result, in FreeSOLO's order: masks at the original size, scores
    after matrix NMS, category scores, labels and FreeSOLO's (projection) boxes."""

    masks: Tensor
    scores: Tensor
    category_scores: Tensor
    labels: Tensor
    boxes: Tensor


def infer(config: FreeSoloConfig, categories: Sequence[Tensor], kernels: Sequence[Tensor], mask_features: Tensor,
          input_size: tuple[int, int], original_size: tuple[int, int], chunk: int = 16) -> FreeSoloOutput:
    """FreeSOLO's inference for one image: ``categories`` (``[G, G, C]`` per level, after point
    NMS), ``kernels`` (``[K, G, G]`` per level), ``mask_features`` (``[1, K, h, w]``), the
    unpadded network input size and the original image size."""
    device = mask_features.device
    categories = torch.cat([c.reshape(-1, config.num_classes) for c in categories])
    kernels = torch.cat([k.permute(1, 2, 0).reshape(-1, k.shape[0]) for k in kernels])
    empty = FreeSoloOutput(torch.zeros((0, *original_size), dtype=torch.bool), torch.zeros(0), torch.zeros(0),
                           torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4))
    passing = categories > config.score_threshold
    category_scores = categories[passing]
    if len(category_scores) == 0:
        return empty
    where = passing.nonzero()
    labels, kernels = where[:, 1], kernels[where[:, 0]]
    cells = torch.tensor([g * g for g in config.num_grids], device=device)
    strides = torch.repeat_interleave(torch.tensor(config.strides, device=device, dtype=torch.float32), cells)
    strides = strides[where[:, 0]]
    count, channels = kernels.shape
    soft = F.conv2d(mask_features, kernels.view(count, channels, 1, 1), stride=1).squeeze(0).sigmoid()
    hard = soft > config.mask_threshold
    areas = hard.sum((1, 2)).float()
    keep = areas > strides
    if keep.sum() == 0:
        return empty
    hard, soft, areas = hard[keep], soft[keep], areas[keep]
    category_scores, labels = category_scores[keep], labels[keep]
    maskness = (soft * hard.float()).sum((1, 2)) / hard.sum((1, 2))
    scores = category_scores * maskness
    order = torch.argsort(scores, descending=True)[: config.max_before_nms]
    hard, soft, areas = hard[order], soft[order], areas[order]
    scores, category_scores, labels = scores[order], category_scores[order], labels[order]
    scores = matrix_nms(labels, hard, areas, scores, sigma=config.nms_sigma)
    keep = scores >= config.update_threshold
    if keep.sum() == 0:
        return empty
    soft, scores, category_scores, labels = soft[keep], scores[keep], category_scores[keep], labels[keep]
    order = torch.argsort(scores, descending=True)[: config.max_per_image]
    soft, scores, category_scores, labels = soft[order], scores[order], category_scores[order], labels[order]
    masks = _to_original(soft, input_size, original_size, config.mask_threshold, chunk)
    keep = masks.sum((1, 2)) > 0
    masks, scores, category_scores, labels = masks[keep], scores[keep], category_scores[keep], labels[keep]
    return FreeSoloOutput(masks, scores, category_scores, labels, projection_boxes(masks))


def _to_original(soft: Tensor, input_size: tuple[int, int], original_size: tuple[int, int], threshold: float,
                 chunk: int) -> Tensor:
    """Soft masks at 1/4 of the padded input, upsampled to the padded input, cut to the unpadded
    input, resized to the original image and thresholded; ``chunk`` masks at a time (each mask
    resizes alone, so the result does not depend on it)."""
    height, width = input_size
    feature_h, feature_w = soft.shape[-2:]
    ratio = max(math.ceil(height / feature_h), math.ceil(width / feature_w))
    upsampled = (int(feature_h * ratio), int(feature_w * ratio))
    parts = []
    for part in soft.split(chunk):
        full = F.interpolate(part[None], size=upsampled, mode="bilinear")[:, :, :height, :width]
        parts.append((F.interpolate(full, size=original_size, mode="bilinear")[0] > threshold).cpu())
    return torch.cat(parts)


# -- weights ----------------------------------------------------------------------------------------
def resolve_checkpoint(checkpoint: Optional[str]) -> str:
    """``checkpoint``, else ``$ZSRIS_FREESOLO_CHECKPOINT``, else FreeSOLO's file in the Hugging
    Face cache (downloaded when online); one line saying where to get it when none is found."""
    found = find_checkpoint(FREESOLO_WEIGHTS, checkpoint)
    if found is not None:
        return found.path
    raise WeightsError(
        f"FreeSOLO proposals need its checkpoint {FREESOLO_FILE}: download it from "
        f"https://huggingface.co/{FREESOLO_HUB_REPO} and pass --freesolo-checkpoint PATH "
        f"(or set {FREESOLO_CHECKPOINT_ENV}); --freesolo-checkpoint random for an untrained model"
    )


def load_weights(model: FreeSolo, path: Path) -> None:
    """Load a FreeSOLO detectron2 checkpoint (``{"model": state_dict}``) into ``model``, tensor by
    tensor, refusing in one line the first tensor that is missing, unexpected or of another shape."""
    state = {k: v for k, v in read_state_dict(path, "FreeSOLO checkpoint").items() if k not in TRAINING_ONLY}
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise WeightsError(f"FreeSOLO checkpoint {path} does not fit FreeSOLO's R101 network: {name} is missing")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise WeightsError(f"FreeSOLO checkpoint {path} does not fit FreeSOLO's R101 network: {name} is "
                               f"{tuple(state[name].shape)}, not {tuple(tensor.shape)}")
    extra = sorted(state.keys() - own.keys())
    if extra:
        raise WeightsError(f"FreeSOLO checkpoint {path} does not fit FreeSOLO's R101 network: it has {extra[0]}, "
                           f"which FreeSOLO has not")
    model.load_state_dict(state)


def build_freesolo(checkpoint: Optional[str], device: str | torch.device = "cpu",
                   config: FreeSoloConfig = FreeSoloConfig()) -> tuple[FreeSolo, str]:
    """FreeSOLO with weights from ``checkpoint`` (see :func:`resolve_checkpoint`);
    ``"random"`` builds the real architecture with random weights. Returns the model and the
    checkpoint it was built from."""
    model = FreeSolo(config)
    source = resolve_checkpoint(checkpoint)
    if source == RANDOM:
        random_init(model)
    else:
        load_weights(model, Path(source).expanduser())
    return model.to(device).eval(), source


class FreeSoloProposals(Configured):
    """Mask proposals from FreeSOLO, the paper's generator: FreeSOLO's masks, scores and boxes
    in its order, capped at ``max_proposals``."""

    name = "freesolo"
    quality_options = ("score_threshold",)

    def __init__(self, checkpoint: Optional[str] = None, device: str | torch.device = "cpu",
                 config: Optional[FreeSoloConfig] = None, **overrides) -> None:
        self.config = dataclasses.replace(config or FreeSoloConfig(), **overrides)
        if checkpoint is not None:
            self.config = dataclasses.replace(self.config, checkpoint=checkpoint)
        check_max_proposals(self.config.max_proposals)
        self.model, self.checkpoint = build_freesolo(self.config.checkpoint, device, self.config)
        self.device = torch.device(device)

    @property
    def cache_key(self) -> str:
        """Its config, the checkpoint named by the file it resolved to."""
        return config_key(self.name, 1, dataclasses.replace(self.config, checkpoint=Path(self.checkpoint).name))

    @torch.inference_mode()
    def run(self, image: np.ndarray) -> FreeSoloOutput:
        """FreeSOLO's full output for an RGB ``[H, W, 3]`` uint8 image."""
        network_input = freesolo_input(image, self.config.short_side).to(self.device)
        size = tuple(network_input.shape[-2:])
        categories, kernels, mask_features = self.model(pad_to(network_input, ResNetFPN.size_divisibility))
        return infer(self.config, [c[0] for c in categories], [k[0] for k in kernels], mask_features,
                     size, image.shape[:2])

    def __call__(self, image: np.ndarray, image_id: Optional[str] = None) -> Proposals:
        height, width = image.shape[:2]
        if max(height, width) > MAX_ASPECT * min(height, width):
            return Proposals.empty(height, width)  # its 800-pixel short side would make the long one huge
        out = self.run(image)
        cap = self.config.max_proposals
        return Proposals(out.masks[:cap].numpy(), out.scores[:cap].cpu().numpy(),
                         boxes=out.boxes[:cap].cpu().numpy().astype(np.float32))


def from_spec(spec: ProposalSpec, device: torch.device) -> FreeSoloProposals:
    """The registry's factory: FreeSOLO with the spec's ``freesolo_checkpoint`` and settings, on ``device``."""
    return FreeSoloProposals(device=device, config=config_of(FreeSoloConfig, spec))
