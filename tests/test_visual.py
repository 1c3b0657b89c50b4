"""Exact properties of the global and local visual features on random-weight CLIP models."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from zsris import visual
from zsris.masks import masks_boxes


def _image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _random_masks(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, h, w, generator=g) > 0.6
    masks[:, h // 4: h // 2, w // 4: w // 2] = True  # never empty
    return masks


def _reference_vit_global(model, image, mask, k):
    """The paper's ViT global feature, written out step by step for one mask in the
    sequence-first layout of the authors' code, as an independent check."""
    vit = model.visual
    x = vit.conv1(image)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = vit.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = vit.ln_pre(torch.cat([cls, x], dim=1) + vit.positional_embedding)
    grid = vit.grid_size[0]
    weights = TF.resize(mask[None].float(), [grid, grid])[0].reshape(-1)
    blocks = list(vit.transformer.resblocks)
    for index, block in enumerate(blocks):
        if index >= len(blocks) - k:
            x = torch.cat([x[:, :1], x[:, 1:] * weights[None, :, None]], dim=1)
        x = block(x)
    return vit.ln_post(x[:, 0]) @ vit.proj


@pytest.mark.parametrize("backbone_name", ["tiny_vit", "vit_b32"])
def test_all_ones_mask_reproduces_plain_vit_feature(backbone_name, request):
    backbone = request.getfixturevalue(backbone_name)
    image = _image(backbone.input_size)
    masks = torch.ones(2, 300, 200, dtype=torch.bool)
    features = visual.global_features(backbone.model, image, masks, k=3)
    plain = backbone.model.encode_image(image)
    torch.testing.assert_close(features, plain.expand(2, -1), rtol=1e-5, atol=1e-5)


def test_all_ones_mask_reproduces_resnet_attention_pool(tiny_resnet):
    model = tiny_resnet.model
    image = _image(tiny_resnet.input_size)
    masks = torch.ones(3, 50, 70, dtype=torch.bool)
    plain = visual.global_features(model, image, masks, normalize_map=False)
    torch.testing.assert_close(plain, model.encode_image(image).expand(3, -1), rtol=1e-5, atol=1e-5)
    fmap = visual._resnet_trunk(model.visual, image)
    normalised = visual.global_features(model, image, masks, normalize_map=True)
    expected = model.visual.attnpool(fmap / fmap.norm(dim=1, keepdim=True))
    torch.testing.assert_close(normalised, expected.expand(3, -1), rtol=1e-5, atol=1e-5)


def test_resnet_global_feature_depends_on_the_mask(tiny_resnet):
    image = _image(tiny_resnet.input_size)
    masks = _random_masks(2, 96, 96)
    masks[0] = False
    masks[0, :48, :48] = True
    masks[1] = False
    masks[1, 48:, 48:] = True
    features = visual.global_features(tiny_resnet.model, image, masks)
    assert not torch.allclose(features[0], features[1], atol=1e-4)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_vit_global_matches_step_by_step_reference(tiny_vit, k):
    image = _image(tiny_vit.input_size, seed=k)
    masks = _random_masks(5, 120, 90, seed=k)
    features = visual.global_features(tiny_vit.model, image, masks, k=k)
    for i, mask in enumerate(masks):
        expected = _reference_vit_global(tiny_vit.model, image, mask, k)[0]
        torch.testing.assert_close(features[i], expected, rtol=1e-5, atol=1e-5)


def test_k_zero_leaves_the_trunk_unmasked(tiny_vit):
    image = _image(tiny_vit.input_size)
    masks = _random_masks(4, 64, 64)
    features = visual.global_features(tiny_vit.model, image, masks, k=0)
    torch.testing.assert_close(features, tiny_vit.model.encode_image(image).expand(4, -1), rtol=1e-5, atol=1e-5)
    masked = visual.global_features(tiny_vit.model, image, masks, k=2)
    assert not torch.allclose(masked, features, atol=1e-3)


def test_k_out_of_range_is_refused(tiny_vit):
    with pytest.raises(ValueError, match="k must be between 0 and 4"):
        visual.global_features(tiny_vit.model, _image(64), _random_masks(1, 64, 64), k=5)


@pytest.mark.parametrize("backbone_name", ["tiny_vit", "tiny_resnet"])
def test_batched_global_equals_one_by_one(backbone_name, request):
    backbone = request.getfixturevalue(backbone_name)
    image = _image(backbone.input_size)
    masks = _random_masks(7, 80, 100)
    batched = visual.global_features(backbone.model, image, masks, batch_size=3)
    single = torch.cat([visual.global_features(backbone.model, image, m[None]) for m in masks])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_batched_local_equals_one_by_one(tiny_vit):
    image = torch.randn(1, 3, 80, 100)
    masks = _random_masks(6, 80, 100)
    fill = (0.485, 0.456, 0.406)
    batched = visual.local_features(tiny_vit.model, image, masks, fill, tiny_vit.input_size, batch_size=4)
    single = torch.cat([visual.local_features(tiny_vit.model, image, m[None], fill, tiny_vit.input_size)
                        for m in masks])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone_name", ["tiny_vit", "tiny_resnet"])
def test_several_images_in_shared_passes_equal_each_alone(backbone_name, request, monkeypatch):
    """Images of different sizes and mask counts (none, for one) share forward passes of 4
    that cross image boundaries; each image's features equal its own run, and no pass holds
    more than ``batch_size`` crops."""
    backbone = request.getfixturevalue(backbone_name)
    model, size, fill = backbone.model, backbone.input_size, (0.485, 0.456, 0.406)
    shapes, counts = [(80, 100), (64, 64), (120, 90)], [5, 0, 6]
    images = [torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(i)) for i, shape in enumerate(shapes)]
    masks = [_random_masks(n, *shape, seed=i) for i, (n, shape) in enumerate(zip(counts, shapes))]
    clip_inputs = torch.cat([TF.resize(image, [size, size]) for image in images])
    passes = []
    encode = visual.encode_images
    monkeypatch.setattr(visual, "encode_images", lambda m, crops, b: passes.append(len(crops)) or encode(m, crops, b))
    shared_global = visual.global_features_many(model, clip_inputs, masks, batch_size=4)
    shared_local = visual.local_features_many(model, images, masks, fill, size, batch_size=4)
    assert passes == [4, 4, 3]  # 11 crops of two images; the image without masks adds none
    for i in range(3):
        alone_global = visual.global_features(model, clip_inputs[i:i + 1], masks[i], batch_size=4)
        alone_local = visual.local_features(model, images[i], masks[i], fill, size, batch_size=4)
        assert shared_global[i].shape == alone_global.shape == (counts[i], model.visual.output_dim)
        torch.testing.assert_close(shared_global[i], alone_global, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shared_local[i], alone_local, rtol=1e-5, atol=1e-5)


def test_several_images_need_matching_masks(tiny_vit):
    with pytest.raises(ValueError, match="B mask stacks"):
        visual.global_features_many(tiny_vit.model, _image(tiny_vit.input_size), [])
    with pytest.raises(ValueError, match="as many mask stacks"):
        visual.local_features_many(tiny_vit.model, [_image(32)], [], (0, 0, 0), tiny_vit.input_size)


@pytest.mark.parametrize("backbone_name", ["tiny_vit", "tiny_resnet"])
def test_full_image_local_crop_equals_plain_resize(backbone_name, request):
    backbone = request.getfixturevalue(backbone_name)
    image = torch.randn(1, 3, 150, 210)
    masks = torch.ones(1, 150, 210, dtype=torch.bool)
    local = visual.local_features(backbone.model, image, masks, (0.5, 0.5, 0.5), backbone.input_size)
    resized = TF.resize(image, [backbone.input_size, backbone.input_size])
    torch.testing.assert_close(local, backbone.model.encode_image(resized), rtol=1e-5, atol=1e-5)


def test_local_crop_fills_outside_and_crops_the_box():
    image = torch.arange(3 * 6 * 8, dtype=torch.float32).reshape(1, 3, 6, 8)
    mask = torch.zeros(1, 6, 8, dtype=torch.bool)
    mask[0, 1:4, 2:7] = True
    mask[0, 1, 2] = False  # a hole inside the box must be filled too
    crops = visual.local_crops(image, mask, None, (-1.0, -2.0, -3.0), size=3)
    assert crops.shape == (1, 3, 3, 3)
    box = masks_boxes(mask.numpy())
    assert box.tolist() == [[2, 1, 7, 4]]
    expected_patch = image[0, :, 1:4, 2:7].clone()
    expected_patch[:, 0, 0] = torch.tensor([-1.0, -2.0, -3.0])
    torch.testing.assert_close(crops[0], TF.resize(expected_patch, [3, 3]))


def test_local_crop_equals_fill_whole_image_then_resized_crop():
    """The reference fills the whole image and then calls resized_crop; cropping first is equal."""
    g = torch.Generator().manual_seed(3)
    image = torch.randn(1, 3, 40, 50, generator=g)
    masks = _random_masks(3, 40, 50, seed=3)
    fill = torch.tensor([0.485, 0.456, 0.406])
    boxes = torch.as_tensor(masks_boxes(masks.numpy()))
    ours = visual.local_crops(image, masks, boxes, fill.tolist(), size=16)
    for mask, (x1, y1, x2, y2), crop in zip(masks, boxes.tolist(), ours):
        m = mask.to(torch.uint8)
        filled = image * m[None, None] + (1 - m[None, None]) * fill.reshape(1, 3, 1, 1)
        expected = TF.resized_crop(filled.squeeze(0), y1, x1, y2 - y1, x2 - x1, [16, 16])
        torch.testing.assert_close(crop, expected)


def _tiny_vit_model(**vision_options):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=64, **vision_options)
    return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=CLIPTextCfg(width=64, heads=2, layers=1)).eval()


def test_final_ln_after_pool_with_class_token_is_computed_exactly():
    """LayerNorm acts on each token alone, so ln_post before or after picking the class token is one thing."""
    model = _tiny_vit_model(final_ln_after_pool=True)
    visual.check_supported(model)
    image = _image(64, seed=4)
    ours = visual.global_features(model, image, torch.ones(2, 64, 64, dtype=torch.bool), k=1)
    expected = model.encode_image(image).expand(2, -1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options, why", [
    ({"pool_type": "avg"}, "pool_type='avg'"),
    ({"attentional_pool": True}, "attentional pooling"),
])
def test_vit_poolings_not_computed_exactly_are_refused(options, why, tiny_vit):
    from zsris.errors import ZsrisError
    from zsris.proposals import ClassicalProposals
    from zsris.segmenter import Segmenter

    model = _tiny_vit_model(**options)
    with pytest.raises(ZsrisError, match=why.replace("(", r"\(")):
        visual.global_features(model, _image(64), torch.ones(1, 64, 64, dtype=torch.bool), k=1)
    backbone = type(tiny_vit)(model, tiny_vit.tokenizer, "tiny-" + why, "random", 64)
    with pytest.raises(ZsrisError, match="pools its class token"):
        Segmenter(backbone, ClassicalProposals(max_proposals=3))
