"""Each built-in proposal generator's settings, and where its weights are: plain data, no torch.

A generator's config dataclass is the one description of its settings. Its fields are what the
generator runs with (its cache key is derived from them: :func:`zsris.proposals.config_key`),
the registry's options with their defaults (every field but ``max_proposals``, which a
:class:`~zsris.proposals.ProposalSpec` holds itself), and so the spec a built generator records
and is rebuilt from (:func:`zsris.proposals.spec_of`, :func:`zsris.proposals.config_of`). They
live here, apart from the generators, so that the registry, :mod:`zsris.config` and the command
line know every option without importing torch, scikit-image or SciPy.

A field's option is named as the field is, unless its metadata names it (``OPTION``): SAM's
``model_type`` has always been the option ``model``, and FreeSOLO's ``checkpoint`` the option
``freesolo_checkpoint`` (a flat :meth:`zsris.SegmenterConfig.replace` sets it beside CLIP's
``weights``); renaming those fields would change the cache keys of proposals already on disk.
A ``checkpoint`` field comes last, after ``max_proposals``: the cache key names it by the file
it resolved to, in that place.

:data:`CHECKPOINT_SOURCES` says, once per generator that needs weights, where they are looked
for (:func:`zsris.checkpoints.find_checkpoint`) and what ``zsris weights`` reports of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

#: The metadata key of a config field whose option has another name than the field.
OPTION = "option"


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of the classical generator; defaults are the library's, not tuned per dataset.

    ``size_prior`` weighs ``log(area / image area)`` in the ranking: low-level agreement alone
    favours the many small, stable pieces of texture, while a referred object is a whole thing.
    ``refine_size`` caps the side of the image whose Felzenszwalb superpixels (``refine_scale``)
    the kept masks' boundaries snap to; 0 turns snapping off (plain bilinear upsampling).
    """

    max_proposals: Optional[int] = 100
    work_size: int = 256
    scales: tuple[int, ...] = (50, 100, 200, 400)
    colour_spaces: tuple[str, ...] = ("hsv", "lab")
    similarities: tuple[str, ...] = ("appearance", "shape", "fill")
    sigma: float = 0.8
    min_area: float = 0.005
    size_prior: float = 0.2
    nms_iou: float = 0.6
    refine_size: int = 640
    refine_scale: int = 50


@dataclass(frozen=True)
class SamConfig:
    """SAM's automatic-generator settings (``crop_n_layers``, ``crop_n_points_downscale_factor``
    and ``min_mask_region_area`` as SAM names them; the last needs OpenCV), then zsris's filter
    and cap. ``checkpoint``: a file, ``random`` or None (``$ZSRIS_SAM_CHECKPOINT``)."""

    model_type: str = field(default="vit_h", metadata={OPTION: "model"})
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    crop_n_layers: int = 0
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    min_area: float = 0.001
    nms_iou: float = 0.8
    max_proposals: Optional[int] = 100
    checkpoint: Optional[str] = None


@dataclass(frozen=True)
class Sam2Config:
    """SAM 2's automatic-generator settings (its defaults), then zsris's filter and cap.
    ``checkpoint``: a folder in the transformers format, ``random`` or None (the model's hub copy)."""

    model: str = "tiny"
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_area: float = 0.001
    nms_iou: float = 0.8
    max_proposals: Optional[int] = 100
    checkpoint: Optional[str] = None


@dataclass(frozen=True)
class Sam3Config:
    """``score_threshold`` and ``mask_threshold`` are SAM 3's own post-processing defaults; an
    instance's score is its query's probability times the presence probability. ``checkpoint``:
    a folder in the transformers format, ``random`` or None (``facebook/sam3``)."""

    score_threshold: float = 0.3
    mask_threshold: float = 0.5
    presence_threshold: float = 0.5
    with_classical: bool = False
    max_proposals: Optional[int] = 100  # per phrase, and for the class-agnostic part
    checkpoint: Optional[str] = None


@dataclass(frozen=True)
class FreeSoloConfig:
    """FreeSOLO's network shape and test settings (its ``freesolo_30k.yaml`` over SOLOv2's
    defaults). ``max_proposals`` caps the masks after FreeSOLO's own 100. ``checkpoint`` (the
    option ``freesolo_checkpoint``): a file, ``random`` or None (the hub's copy)."""

    num_classes: int = 2
    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)
    short_side: int = 800
    score_threshold: float = 0.1
    max_before_nms: int = 500
    update_threshold: float = 0.05
    mask_threshold: float = 0.5
    max_per_image: int = 100
    nms_sigma: float = 2.0
    max_proposals: Optional[int] = 100
    checkpoint: Optional[str] = field(default=None, metadata={OPTION: "freesolo_checkpoint"})


@dataclass(frozen=True)
class FileConfig:
    """Precomputed proposals: ``path``, a COCO RLE JSON file or a folder of PNG masks."""

    path: Optional[str] = None
    max_proposals: Optional[int] = None


# -- where the weights are ------------------------------------------------------------------------
SAM_CHECKPOINT_ENV = "ZSRIS_SAM_CHECKPOINT"
#: The checkpoints of the segment-anything release, per model type, and where they are published.
SAM_CHECKPOINTS = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM2_CHECKPOINT_ENV = "ZSRIS_SAM2_CHECKPOINT"
#: SAM 2.1's sizes and their transformers checkpoints on the Hugging Face hub.
SAM2_MODELS = {"tiny": "facebook/sam2.1-hiera-tiny", "small": "facebook/sam2.1-hiera-small",
               "base-plus": "facebook/sam2.1-hiera-base-plus", "large": "facebook/sam2.1-hiera-large"}
SAM3_CHECKPOINT_ENV = "ZSRIS_SAM3_CHECKPOINT"
#: SAM 3 in the transformers format on the Hugging Face hub (gated: its licence is accepted there).
SAM3_HUB_REPO = "facebook/sam3"
FREESOLO_CHECKPOINT_ENV = "ZSRIS_FREESOLO_CHECKPOINT"
#: FreeSOLO's checkpoint as the paper used it; its original link is dead, the hub holds a copy.
FREESOLO_HUB_REPO = "xinlongwang/FreeSOLO"
FREESOLO_FILE = "FreeSOLO_R101_30k_pl.pth"


@dataclass(frozen=True)
class CheckpointSource:
    """Where a generator's weights are looked for: its ``flag`` (the ``checkpoint`` option), then
    its ``env`` variable, then, where they are on the Hugging Face hub (``hub``), the hub's copy in
    the local cache, else downloaded when online.

    ``where`` gives, per size of the model (the ``--NAME-model`` flag; one size: ``""``), its hub
    repository, or the URL of its released file when it is not on the hub. ``folder``: the
    weights are a folder in the transformers format (``config.json`` beside them, and a hub id
    that transformers downloads itself); else one checkpoint file, ``file`` in the repository.
    ``title`` is what ``zsris weights`` calls it (``{model}``: the size), ``note`` what it says
    of the repository."""

    generator: str
    title: str
    env: str
    flag: str
    where: Mapping[str, str]
    hub: bool = True
    folder: bool = True
    file: str = "config.json"
    note: str = ""

    @property
    def metavar(self) -> str:
        return "FOLDER" if self.folder else "PATH"


SAM_WEIGHTS = CheckpointSource("sam", "SAM {model} (for --proposals sam)", SAM_CHECKPOINT_ENV, "--sam-checkpoint",
                               {model: SAM_RELEASE_URL + SAM_CHECKPOINTS[model] for model in SAM_MODEL_TYPES},
                               hub=False, folder=False)
SAM2_WEIGHTS = CheckpointSource("sam2", "SAM 2.1 {model} (for --proposals sam2)", SAM2_CHECKPOINT_ENV,
                                "--sam2-checkpoint", SAM2_MODELS, note="transformers format")
SAM3_WEIGHTS = CheckpointSource("sam3", "SAM 3 (for --proposals sam3)", SAM3_CHECKPOINT_ENV, "--sam3-checkpoint",
                                {"": SAM3_HUB_REPO}, note="gated: accept its licence there, then `hf auth login`")
FREESOLO_WEIGHTS = CheckpointSource("freesolo", "FreeSOLO R101 (for --proposals freesolo, the paper's proposals)",
                                    FREESOLO_CHECKPOINT_ENV, "--freesolo-checkpoint", {"": FREESOLO_HUB_REPO},
                                    folder=False, file=FREESOLO_FILE, note=f"file {FREESOLO_FILE}")
#: One entry per generator that needs weights, in the order ``zsris weights`` reports them.
CHECKPOINT_SOURCES = (SAM_WEIGHTS, SAM2_WEIGHTS, SAM3_WEIGHTS, FREESOLO_WEIGHTS)
