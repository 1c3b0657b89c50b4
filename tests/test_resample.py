"""Batched antialiased resizing equals torch's own resize, crop by crop; reduced-precision copies."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from zsris import visual
from zsris.resample import _chunks, aa_weights, crop_resize, resize_masks


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("out_size", [1, 7, 14, 224])
def test_weights_reproduce_torch_resize_along_an_axis(out_size, antialias):
    """Shrinking and enlarging, lengths around the output size, and a length of one; with
    antialiasing and without (the authors' torchvision)."""
    generator = torch.Generator().manual_seed(out_size)
    for length in (1, 2, 3, 7, 63, 64, 65, 223, 224, 225, 500, 1001):
        values = torch.randn(3, length, 5, generator=generator)
        expected = TF.resize(values, [out_size, 5], antialias=antialias)
        weights = aa_weights(torch.tensor([length]), out_size, length, antialias)[0]
        torch.testing.assert_close(torch.einsum("sl,clw->csw", weights, values), expected, rtol=0,
                                   atol=2e-6 if antialias else 5e-5)  # plain bilinear: another rounding order
        assert torch.allclose(weights.sum(1), torch.ones(out_size))


def test_padding_a_crop_to_a_wider_span_adds_only_zero_weights():
    narrow = aa_weights(torch.tensor([50]), 16, 50)
    wide = aa_weights(torch.tensor([50, 120]), 16, 120)
    torch.testing.assert_close(wide[0, :, :50], narrow[0])
    assert torch.count_nonzero(wide[0, :, 50:]) == 0


def _scene(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(3, 90, 130, generator=generator)
    boxes = torch.tensor([[0, 0, 130, 90], [10, 20, 31, 25], [100, 50, 129, 89], [129, 89, 130, 90],
                          [5, 5, 6, 80], [3, 40, 120, 41], [60, 10, 100, 70]])
    masks = torch.zeros(len(boxes), 90, 130, dtype=torch.bool)
    for index, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        masks[index, y1:y2, x1:x2] = torch.rand(y2 - y1, x2 - x1, generator=generator) > 0.3
    return image, masks, boxes, torch.tensor([0.5, -1.0, 2.0])


@pytest.mark.parametrize("size", [16, 224])
def test_batched_crops_equal_torch_resize_of_each_filled_patch(size):
    image, masks, boxes, fill = _scene()
    expected = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.tolist()):
        window = mask[y1:y2, x1:x2].float()
        expected.append(TF.resize(image[:, y1:y2, x1:x2] * window + (1 - window) * fill[:, None, None], [size, size]))
    expected = torch.stack(expected)
    one_by_one = crop_resize(image, masks, boxes, fill, size, batched=False)
    torch.testing.assert_close(one_by_one, expected)
    # a budget of 2,000 padded pixels and 3 crops per group: several groups, one crop alone in some
    for batch_size, budget in ((64, 1 << 24), (3, 2000), (1, 1)):
        batched = crop_resize(image, masks, boxes, fill, size, batch_size=batch_size, pixel_budget=budget,
                              batched=True)
        torch.testing.assert_close(batched, expected, rtol=0, atol=1e-5)


def test_groups_keep_to_the_budget_and_the_batch_size():
    _, _, boxes, _ = _scene()
    spans = torch.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], dim=1)
    groups = _chunks(spans, 3, 4000)
    assert sorted(i for group in groups for i in group) == list(range(len(boxes)))
    for group in groups:
        tall, wide = spans[group].max(0).values.tolist()
        assert len(group) <= 3 and (len(group) == 1 or len(group) * tall * wide <= 4000)


def test_a_reversed_box_is_refused_whichever_way():
    image, masks, boxes, fill = _scene()
    boxes[2] = torch.tensor([40, 40, 30, 60])
    for batched in (False, True):
        with pytest.raises(ValueError, match=r"reversed box \[40, 40, 30, 60\]"):
            crop_resize(image, masks, boxes, fill, 16, batched=batched)


def test_a_box_of_no_width_grows_to_one_pixel_whichever_way():
    """FreeSOLO's box of a one-pixel-wide mask at the left edge truncates to no width."""
    image, masks, boxes, fill = _scene()
    boxes[2] = torch.tensor([40, 40, 40, 60])
    grown = boxes.clone()
    grown[2] = torch.tensor([40, 40, 41, 60])
    for batched in (False, True):
        torch.testing.assert_close(crop_resize(image, masks, boxes, fill, 16, batched=batched),
                                   crop_resize(image, masks, grown, fill, 16, batched=False), rtol=0, atol=1e-5)


@pytest.mark.parametrize("antialias", [True, False])
def test_boxes_leaving_the_image_read_zeros_outside_as_torchvision_crop_pads(antialias):
    """The authors fill the whole image, then ``TF.resized_crop``, which pads outside with 0."""
    image, masks, boxes, fill = _scene()
    boxes[0] = torch.tensor([-7, -3, 20, 25])
    boxes[1] = torch.tensor([50, 40, image.shape[-1] + 6, image.shape[-2] + 9])
    filled = image * masks[:, None] + (1 - masks[:, None].float()) * fill[:, None, None]
    for batched in (False, True):
        got = crop_resize(image, masks, boxes, fill, 16, batched=batched, antialias=antialias)
        for i in (0, 1):
            x1, y1, x2, y2 = boxes[i].tolist()
            expected = TF.resized_crop(filled[i], y1, x1, y2 - y1, x2 - x1, [16, 16], antialias=antialias)
            torch.testing.assert_close(got[i], expected, rtol=0, atol=1e-5)


def test_plain_bilinear_weights_equal_torch_resize_without_antialiasing():
    image, masks, boxes, fill = _scene()
    one_by_one = crop_resize(image, masks, boxes, fill, 16, batched=False, antialias=False)
    batched = crop_resize(image, masks, boxes, fill, 16, batched=True, antialias=False)
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-5)
    assert not torch.allclose(one_by_one, crop_resize(image, masks, boxes, fill, 16, batched=False), atol=1e-3)
    soft = torch.rand(3, 97, 131, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(resize_masks(soft, (7, 7), antialias=False),
                               TF.resize(soft, [7, 7], antialias=False), rtol=0, atol=0)


def test_mask_resize_equals_torch_resize_one_mask_at_a_time_or_all():
    masks = torch.rand(5, 97, 131, generator=torch.Generator().manual_seed(1)) > 0.5
    expected = TF.resize(masks.float(), [7, 7])
    for budget in (1, 97 * 131 * 2, 1 << 24):  # one mask per step, two, all five
        torch.testing.assert_close(resize_masks(masks, (7, 7), pixel_budget=budget), expected, rtol=0, atol=1e-6)
    soft = torch.rand(2, 40, 30, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(resize_masks(soft, (16, 16)), TF.resize(soft, [16, 16]), rtol=0, atol=1e-6)


def test_a_half_precision_copy_is_made_once_and_leaves_the_model_alone(tiny_vit):
    copy = tiny_vit.model_in(torch.bfloat16)
    assert copy is tiny_vit.model_in(torch.bfloat16) and tiny_vit.model_in(None) is tiny_vit.model
    assert next(copy.parameters()).dtype == torch.bfloat16
    assert next(tiny_vit.model.parameters()).dtype == torch.float32
    image = torch.randn(1, 3, tiny_vit.input_size, tiny_vit.input_size, generator=torch.Generator().manual_seed(5))
    masks = torch.rand(4, 64, 64, generator=torch.Generator().manual_seed(6)) > 0.4
    fill = (0.485, 0.456, 0.406)
    for features in (visual.global_features, lambda model, *a: visual.local_features(model, *a, fill,
                                                                                      tiny_vit.input_size)):
        full = features(tiny_vit.model, image, masks)
        half = features(copy, image, masks).float()
        cosine = torch.nn.functional.cosine_similarity(full, half, dim=-1)
        assert cosine.min() > 0.99, cosine
    text = tiny_vit.tokenizer(["a red circle"])
    with torch.inference_mode():
        cosine = torch.nn.functional.cosine_similarity(tiny_vit.model.encode_text(text),
                                                       copy.encode_text(text).float(), dim=-1)
    assert float(cosine) > 0.99

