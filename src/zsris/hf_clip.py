"""CLIP in the Hugging Face ``transformers`` format: ``hf:openai/clip-vit-base-patch32`` (a hub id,
read from the Hugging Face cache or downloaded) or ``hf:/path/to/folder`` (``save_pretrained``'s
layout).

Its weights are converted, once at load, into open_clip's CLIP of the same architecture, so that
every global-local step (masked class-token attention, crops, the text tower) is the one code
path the open_clip backbones take, and the features equal ``CLIPModel``'s own
(``get_image_features`` / ``get_text_features``) to float rounding. The text is tokenised by
open_clip's tokenizer, which is OpenAI's BPE, as ``CLIPTokenizer`` is: CLIPs with another
vocabulary are refused. Nothing here imports ``transformers`` until a model is built.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .errors import WeightsError

PREFIX = "hf:"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
OPENAI_VOCABULARY = 49408


@dataclass(frozen=True)
class HfClipShape:
    """What decides a CLIPModel's architecture (the fields of its config that matter here)."""

    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    patch_size: int
    image_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    projection: int
    context_length: int = 77
    vocab_size: int = OPENAI_VOCABULARY
    activation: str = "quick_gelu"


#: OpenAI's CLIPs on the hub, so that ``--weights random`` can build one without its config file.
KNOWN_SHAPES: dict[str, HfClipShape] = {
    "openai/clip-vit-base-patch32": HfClipShape(768, 12, 12, 3072, 32, 224, 512, 12, 8, 2048, 512),
    "openai/clip-vit-base-patch16": HfClipShape(768, 12, 12, 3072, 16, 224, 512, 12, 8, 2048, 512),
    "openai/clip-vit-large-patch14": HfClipShape(1024, 24, 16, 4096, 14, 224, 768, 12, 12, 3072, 768),
    "openai/clip-vit-large-patch14-336": HfClipShape(1024, 24, 16, 4096, 14, 336, 768, 12, 12, 3072, 768),
}


def is_hf_name(name: str) -> bool:
    return name.startswith(PREFIX)


def _require_transformers() -> Any:
    from .extras import require_extra

    require_extra("hf", "hf: backbones (CLIP in the transformers format)")
    import transformers

    return transformers


def hf_config(shape: HfClipShape) -> Any:
    """The ``CLIPConfig`` of ``shape``."""
    transformers = _require_transformers()
    return transformers.CLIPConfig(
        text_config={"hidden_size": shape.text_width, "num_hidden_layers": shape.text_layers,
                     "num_attention_heads": shape.text_heads, "intermediate_size": shape.text_mlp,
                     "max_position_embeddings": shape.context_length, "vocab_size": shape.vocab_size,
                     "hidden_act": shape.activation, "projection_dim": shape.projection},
        vision_config={"hidden_size": shape.vision_width, "num_hidden_layers": shape.vision_layers,
                       "num_attention_heads": shape.vision_heads, "intermediate_size": shape.vision_mlp,
                       "patch_size": shape.patch_size, "image_size": shape.image_size,
                       "hidden_act": shape.activation, "projection_dim": shape.projection},
        projection_dim=shape.projection)


def shape_of(config: Any) -> HfClipShape:
    """The architecture of a ``CLIPConfig``; refused where open_clip's CLIP cannot be the same."""
    vision, text = config.vision_config, config.text_config
    if vision.hidden_act != text.hidden_act or vision.hidden_act not in ("quick_gelu", "gelu"):
        raise WeightsError(f"this CLIP's activations ({vision.hidden_act}, {text.hidden_act}) have no open_clip "
                           f"equal; zsris reads CLIPs with quick_gelu or gelu in both towers")
    if text.vocab_size != OPENAI_VOCABULARY:
        raise WeightsError(f"this CLIP's vocabulary has {text.vocab_size:,} tokens; zsris tokenises with OpenAI's "
                           f"BPE ({OPENAI_VOCABULARY:,} tokens), so it reads only CLIPs with that vocabulary")
    return HfClipShape(vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads,
                       vision.intermediate_size, vision.patch_size, vision.image_size, text.hidden_size,
                       text.num_hidden_layers, text.num_attention_heads, text.intermediate_size,
                       config.projection_dim, text.max_position_embeddings, text.vocab_size, vision.hidden_act)


def open_clip_model(shape: HfClipShape) -> nn.Module:
    """open_clip's CLIP with ``shape``'s architecture (weights still to be given)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=shape.vision_layers, width=shape.vision_width,
                           head_width=shape.vision_width // shape.vision_heads,
                           mlp_ratio=shape.vision_mlp / shape.vision_width, patch_size=shape.patch_size,
                           image_size=shape.image_size)
    text = CLIPTextCfg(context_length=shape.context_length, vocab_size=shape.vocab_size, width=shape.text_width,
                       heads=shape.text_heads, layers=shape.text_layers, mlp_ratio=shape.text_mlp / shape.text_width)
    return CLIP(shape.projection, vision, text, quick_gelu=shape.activation == "quick_gelu")


def _tower(state: dict[str, torch.Tensor], source: str, target: str, layers: int) -> dict[str, torch.Tensor]:
    """One tower's transformer blocks under open_clip's names (q, k and v in one in-projection)."""
    out = {}
    for i in range(layers):
        a, b = f"{source}.encoder.layers.{i}", f"{target}.resblocks.{i}"
        attention = f"{a}.self_attn"
        out[f"{b}.attn.in_proj_weight"] = torch.cat([state[f"{attention}.{p}_proj.weight"] for p in "qkv"])
        out[f"{b}.attn.in_proj_bias"] = torch.cat([state[f"{attention}.{p}_proj.bias"] for p in "qkv"])
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for kind in ("weight", "bias"):
                out[f"{b}.{ours}.{kind}"] = state[f"{a}.{theirs}.{kind}"]
    return out


def converted_state_dict(state: dict[str, torch.Tensor], shape: HfClipShape) -> dict[str, torch.Tensor]:
    """A ``CLIPModel`` state dict under open_clip's names: the same numbers, rearranged (the
    projections transposed, attention's q, k and v stacked)."""
    v, t = "vision_model", "text_model"
    out = {
        "visual.conv1.weight": state[f"{v}.embeddings.patch_embedding.weight"],
        "visual.class_embedding": state[f"{v}.embeddings.class_embedding"],
        "visual.positional_embedding": state[f"{v}.embeddings.position_embedding.weight"],
        "visual.proj": state["visual_projection.weight"].T,
        "token_embedding.weight": state[f"{t}.embeddings.token_embedding.weight"],
        "positional_embedding": state[f"{t}.embeddings.position_embedding.weight"],
        "text_projection": state["text_projection.weight"].T,
        "logit_scale": state["logit_scale"],
    }
    for ours, theirs in (("visual.ln_pre", f"{v}.pre_layrnorm"), ("visual.ln_post", f"{v}.post_layernorm"),
                         ("ln_final", f"{t}.final_layer_norm")):
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = state[f"{theirs}.{kind}"]
    out.update(_tower(state, v, "visual.transformer", shape.vision_layers))
    out.update(_tower(state, t, "transformer", shape.text_layers))
    return {key: value.detach().clone().float().contiguous() for key, value in out.items()}


def from_hf_model(model: nn.Module) -> nn.Module:
    """open_clip's CLIP holding ``model``'s (a ``CLIPModel``'s) weights."""
    shape = shape_of(model.config)
    clip = open_clip_model(shape)
    missing, unexpected = clip.load_state_dict(converted_state_dict(model.state_dict(), shape), strict=False)
    missing = [key for key in missing if key != "attn_mask"]
    if missing or unexpected:
        raise WeightsError(f"converting the transformers CLIP: missing {missing[:3]}, unexpected {unexpected[:3]}")
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    clip.visual.image_mean, clip.visual.image_std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    return clip


def random_hf_model(hub_id: str, seed: int = 0) -> nn.Module:
    """A ``CLIPModel`` of a known hub id's architecture with random weights (seeded)."""
    if hub_id not in KNOWN_SHAPES:
        raise WeightsError(f"random weights need the architecture of {hub_id!r}, which zsris knows only for "
                           f"{', '.join(KNOWN_SHAPES)}; give a local folder with its config.json instead")
    transformers = _require_transformers()
    torch.manual_seed(seed)
    return transformers.CLIPModel(hf_config(KNOWN_SHAPES[hub_id])).eval()


def load_hf_model(where: str, network: bool) -> nn.Module:
    """The ``CLIPModel`` at ``where`` (a local folder, else a hub id: the Hugging Face cache, and
    the hub itself when ``network``); one line saying how to get it when it is not there."""
    transformers = _require_transformers()
    folder = Path(where).expanduser()
    local = folder.is_dir()
    if not local and not HUB_ID.fullmatch(where):
        raise WeightsError(f"hf:{where}: no such folder, and not a hub id (owner/name); a transformers CLIP "
                           f"folder holds config.json and model.safetensors")
    try:
        return transformers.CLIPModel.from_pretrained(str(folder) if local else where,
                                                      local_files_only=local or not network).eval()
    except (OSError, ValueError) as error:
        if local:
            raise WeightsError(f"hf:{where}: not a transformers CLIP folder ({str(error).splitlines()[0]})") from None
        offline = "" if network else " and no network"
        raise WeightsError(f"hf:{where}: not in the Hugging Face cache (HF_HOME){offline}; "
                           f"download it once with `hf download {where}`, give a local folder (hf:/path/to/it), "
                           f"or use --weights random for an untrained model") from None


def hub_id(name: str) -> str:
    """``hf:openai/clip-vit-base-patch32`` -> ``openai/clip-vit-base-patch32``."""
    where = name[len(PREFIX):].strip()
    if not where:
        raise WeightsError("hf: needs a hub id or a folder after it, e.g. hf:openai/clip-vit-base-patch32")
    return where


def load_converted(name: str, weights: Optional[str], network: bool, seed: int = 0) -> tuple[nn.Module, str]:
    """open_clip's CLIP with the weights of the transformers CLIP ``name`` (``hf:...``), and what
    the weights are (``random`` or the hub id / folder)."""
    where = hub_id(name)
    if weights == "random":
        return from_hf_model(random_hf_model(where, seed)), "random"
    if weights:
        raise WeightsError(f"{name} names its weights itself; --weights takes only 'random' with an hf: backbone")
    return from_hf_model(load_hf_model(where, network)), where
