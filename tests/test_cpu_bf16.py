"""bf16 on the CPU (#23): on cores with bf16 units the segmenter computes with a bf16 copy of
CLIP; its features are the fp32 ones to bf16's precision, and the method's properties hold."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsris import visual
from zsris.precision import cpu_bf16_units
from zsris.proposals import ClassicalProposals
from zsris.segmenter import Segmenter

pytestmark = pytest.mark.skipif(not cpu_bf16_units(), reason="this CPU has no bf16 units (AVX512-BF16 or AMX)")


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((96, 128, 3), np.uint8)
    for _ in range(5):
        y, x = rng.integers(0, 64, 2)
        image[y:y + 32, x:x + 48] = rng.integers(0, 255, 3)
    return image


@pytest.fixture(scope="module")
def pair(vit_b32):
    with pytest.warns(Warning):
        return (Segmenter(vit_b32, ClassicalProposals(max_proposals=8)),
                Segmenter(vit_b32, ClassicalProposals(max_proposals=8), precision="bf16"))


def test_the_bf16_segmenter_computes_with_a_bf16_copy(pair):
    fp32, bf16 = pair
    assert next(bf16.encoder.model.parameters()).dtype == torch.bfloat16
    assert next(fp32.encoder.model.parameters()).dtype == torch.float32  # the fp32 model is left as it was


def test_bf16_features_are_the_fp32_ones_to_bf16_precision(pair):
    fp32, bf16 = pair
    image = _image()
    proposals = fp32.proposals(image)
    a, b = (s.image_features(image, proposals=proposals) for s in pair)
    assert b.visual_features.dtype == torch.float32  # handed on in fp32
    for name in ("global_features", "local_features"):
        cosine = F.cosine_similarity(getattr(a, name), getattr(b, name), dim=-1)
        assert cosine.min() > 0.99, (name, cosine)
    text_a = fp32.method.text_features(fp32.parser.parse_many(["the red box on the left"]))
    text_b = bf16.method.text_features(bf16.parser.parse_many(["the red box on the left"]))
    assert F.cosine_similarity(text_a, text_b).item() > 0.99


def test_an_all_ones_mask_gives_the_plain_image_feature_in_bf16(pair):
    _, bf16 = pair
    clip_input = bf16.preprocessor.clip_input(bf16.preprocessor.image_tensor(_image(1)))
    masks = torch.ones(2, 96, 128, dtype=torch.bool)
    with torch.inference_mode():
        features = visual.global_features(bf16.encoder.model, clip_input, masks, k=3)
        plain = bf16.encoder.model.encode_image(clip_input.to(torch.bfloat16))
    torch.testing.assert_close(features.float(), plain.float().expand(2, -1), rtol=2e-2, atol=2e-2)


def test_the_copy_computes_openai_clips_activation_in_place(pair):
    """The reduced-precision copy's MLPs use the in-place activation, the same function as
    open_clip's QuickGELU (to bf16 rounding; exactly so in fp32 up to float rounding); the fp32
    model keeps open_clip's own, and with gradients wanted the activation leaves its input alone."""
    import open_clip

    from zsris.backbones import InPlaceQuickGELU

    fp32, bf16 = pair
    blocks = [*bf16.encoder.model.visual.transformer.resblocks, *bf16.encoder.model.transformer.resblocks]
    assert all(isinstance(block.mlp.gelu, InPlaceQuickGELU) for block in blocks)
    assert all(isinstance(block.mlp.gelu, open_clip.transformer.QuickGELU)
               for block in [*fp32.encoder.model.visual.transformer.resblocks,
                             *fp32.encoder.model.transformer.resblocks])
    x = torch.randn(4, 50, 3072)
    reference = open_clip.transformer.QuickGELU()(x)
    with torch.inference_mode():
        torch.testing.assert_close(InPlaceQuickGELU()(x.clone()), reference, rtol=1e-6, atol=1e-6)
        half = InPlaceQuickGELU()(x.bfloat16())
    torch.testing.assert_close(half.float(), reference, rtol=2e-2, atol=2e-2)
    leaf = x.clone().requires_grad_()
    out = InPlaceQuickGELU()(leaf)
    out.sum().backward()
    assert torch.equal(leaf.detach(), x) and leaf.grad is not None


def test_bf16_runs_a_clip_built_from_openais_layout():
    """#38: a state dict in OpenAI's layout builds open_clip's fp32-LayerNorm variant, whose bf16
    copy failed on the CPU with "mixed dtype"."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.transformer import LayerNormFp32

    from zsris.backbones import ClipBackbone

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=4, width=64, head_width=32, patch_size=16, image_size=64)
    model = CLIP(32, vision, CLIPTextCfg(width=64, heads=2, layers=2), quick_gelu=True, cast_dtype=torch.float16)
    assert any(isinstance(m, LayerNormFp32) for m in model.modules())
    backbone = ClipBackbone(model.eval(), open_clip.get_tokenizer("ViT-B-32"), "tiny", "random", 64)
    image = _image()
    fp32 = Segmenter(backbone, ClassicalProposals(max_proposals=4)).segment(image, "the red circle")
    bf16 = Segmenter(backbone, ClassicalProposals(max_proposals=4), precision="bf16").segment(image, "the red circle")
    assert np.isfinite(bf16.scores.fused).all()
    np.testing.assert_allclose(bf16.scores.fused, fp32.scores.fused, atol=0.05)
