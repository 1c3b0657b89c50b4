"""FreeSOLO's parts against direct implementations, its checkpoint mapping and refusals.

The whole network and inference equal the authors' FreeSOLO on detectron2 mask for mask
(``scripts/compare_freesolo.py``, which needs detectron2 and so is not part of this suite).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zsris.errors import WeightsError
from zsris.proposals import create_proposals
from zsris.proposals.freesolo import (
    FreeSolo,
    FreeSoloConfig,
    freesolo_input,
    infer,
    load_weights,
    matrix_nms,
    pad_to,
    point_nms,
    projection_boxes,
    resolve_checkpoint,
)


def test_point_nms_keeps_only_the_maximum_of_the_window_ending_at_each_cell():
    heat = torch.rand(1, 2, 9, 7, generator=torch.Generator().manual_seed(0))
    kept = point_nms(heat)[0]
    for c in range(2):
        for y in range(9):
            for x in range(7):
                window = heat[0, c, max(y - 1, 0): y + 1, max(x - 1, 0): x + 1]
                expected = heat[0, c, y, x] if heat[0, c, y, x] == window.max() else 0.0
                assert float(kept[c, y, x]) == float(expected)


def _direct_matrix_nms(labels, masks, scores, sigma):
    """SOLOv2's matrix NMS one pair at a time: mask j's decay is the least, over higher-scored
    masks i of its class, of exp(-sigma iou_ij^2) / exp(-sigma c_i^2), c_i being the largest
    IoU of i with a higher-scored mask of its class."""
    n = len(labels)
    flat = masks.reshape(n, -1).double()
    iou = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            inter = float((flat[i] * flat[j]).sum())
            union = float(flat[i].sum() + flat[j].sum() - inter)
            iou[i, j] = inter / union if labels[i] == labels[j] else 0.0
    compensate = [max([iou[h, i] for h in range(i)], default=0.0) for i in range(n)]
    out = []
    for j in range(n):
        decays = [np.exp(-sigma * iou[i, j] ** 2) / np.exp(-sigma * compensate[i] ** 2) for i in range(n)
                  if i < j] + [1.0 / np.exp(-sigma * compensate[i] ** 2) for i in range(j, n)]
        out.append(float(scores[j]) * min(decays))
    return np.array(out)


def test_matrix_nms_equals_its_pairwise_definition():
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(12, 10, 10, generator=generator) > 0.5
    masks[3] = masks[2]  # a duplicate: strongly decayed
    labels = torch.randint(0, 2, (12,), generator=generator)
    scores = torch.sort(torch.rand(12, generator=generator), descending=True).values
    got = matrix_nms(labels, masks, masks.sum((1, 2)).float(), scores, sigma=2.0)
    np.testing.assert_allclose(got.numpy(), _direct_matrix_nms(labels.tolist(), masks, scores, 2.0), rtol=1e-5)
    assert got[3] < 0.2 * scores[3]


def test_projection_boxes_follow_freesolos_rule():
    """Centred on the mean of the occupied columns and rows, as wide and high as they are many:
    not the tight box once a mask is in two parts."""
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 5:10, 4:12] = True  # one block: the tight box widened by half a pixel each side
    masks[1, 2:4, 0:3] = True
    masks[1, 15, 27] = True  # two parts
    boxes = projection_boxes(masks)
    torch.testing.assert_close(boxes[0], torch.tensor([3.5, 4.5, 11.5, 9.5]))
    columns, rows = [0, 1, 2, 27], [2, 3, 15]
    cx, cy = np.mean(columns), np.mean(rows)
    torch.testing.assert_close(boxes[1], torch.tensor([cx - 2, cy - 1.5, cx + 2, cy + 1.5], dtype=torch.float32))


def test_input_is_the_authors_dataset_tensor_padded_to_32():
    image = (np.random.default_rng(0).random((97, 130, 3)) * 255).astype(np.uint8)
    tensor = freesolo_input(image)
    assert tuple(tensor.shape) == (3, 800, int(800 * 130 / 97))  # torchvision's Resize(800) of the PIL image
    expected = np.asarray(Image.fromarray(image).resize((tensor.shape[2], 800), Image.BILINEAR), dtype=np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), (expected / 255 - mean) / std, atol=1e-5)
    padded = pad_to(tensor, 32)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert torch.equal(padded[0, :, :800, :tensor.shape[2]], tensor)
    assert float(padded[0, :, :, tensor.shape[2]:].abs().max()) == 0


def _small_outputs(seed: int = 0):
    """Network outputs of a small configuration: two levels of 4 x 4 and 2 x 2 cells."""
    config = FreeSoloConfig(num_grids=(4, 2), strides=(8, 8))
    generator = torch.Generator().manual_seed(seed)
    categories = [torch.rand(4, 4, 2, generator=generator), torch.rand(2, 2, 2, generator=generator)]
    kernels = [torch.randn(8, 4, 4, generator=generator), torch.randn(8, 2, 2, generator=generator)]
    return config, categories, kernels, torch.randn(1, 8, 12, 16, generator=generator)


def test_inference_thresholds_sorts_caps_and_brings_masks_to_the_original_size():
    config, categories, kernels, features = _small_outputs()
    out = infer(config, categories, kernels, features, (45, 64), (30, 40))
    assert out.masks.shape[1:] == (30, 40) and out.masks.dtype == torch.bool and len(out.masks) > 3
    assert bool((out.masks.sum((1, 2)) > 0).all())
    assert torch.equal(out.scores, torch.sort(out.scores, descending=True).values)
    assert float(out.scores.min()) >= config.update_threshold
    torch.testing.assert_close(out.boxes, projection_boxes(out.masks))
    capped = infer(FreeSoloConfig(num_grids=(4, 2), strides=(8, 8), max_per_image=3), categories, kernels, features,
                   (45, 64), (30, 40))
    assert torch.equal(capped.masks, out.masks[:3])


def test_nothing_above_the_score_threshold_gives_no_proposals():
    config, categories, kernels, features = _small_outputs()
    out = infer(config, [c * 0.05 for c in categories], kernels, features, (45, 64), (30, 40))
    assert out.masks.shape == (0, 30, 40) and len(out.boxes) == 0


def test_checkpoint_tensors_map_by_name_and_training_state_is_ignored(tmp_path):
    model = FreeSolo()
    state = {name: torch.randn_like(t) if t.is_floating_point() else t for name, t in model.state_dict().items()}
    path = tmp_path / "FreeSOLO_R101_30k_pl.pth"
    torch.save({"model": {**state, "_iter": torch.zeros(1)}, "iteration": 30000}, path)
    other = FreeSolo()
    load_weights(other, path)
    for name, tensor in other.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert "backbone.bottom_up.res4.22.conv3.norm.running_var" in state  # ResNet-101: 23 blocks in res4
    assert "mask_head.convs_all_levels.3.conv2.0.weight" in state and "ins_head.emb_pred.bias" in state


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("ins_head.kernel_pred.weight"), "ins_head.kernel_pred.weight is missing"),
    (lambda s: s.update({"roi_heads.box_predictor.weight": torch.zeros(2)}), "it has roi_heads.box_predictor.weight"),
    (lambda s: s.update({"ins_head.cate_pred.bias": torch.zeros(80)}),
     r"ins_head.cate_pred.bias is \(80,\), not \(2,\)"),
])
def test_a_checkpoint_that_is_not_freesolos_is_refused_naming_the_first_mismatch(tmp_path, change, message):
    state = dict(FreeSolo().state_dict())
    change(state)
    path = tmp_path / "other.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError, match=message):
        load_weights(FreeSolo(), path)


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "hook": Image.Image}, path)
    with pytest.raises(WeightsError, match="not plain weights"):
        create_proposals("freesolo", freesolo_checkpoint=str(path))


def test_a_missing_checkpoint_says_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv("ZSRIS_FREESOLO_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("zsris.checkpoints.network_reachable", lambda *a, **k: False)
    with pytest.raises(WeightsError, match=r"FreeSOLO_R101_30k_pl.pth.*huggingface.co/xinlongwang/FreeSOLO.*"
                                           r"--freesolo-checkpoint"):
        resolve_checkpoint(None)
    monkeypatch.setenv("ZSRIS_FREESOLO_CHECKPOINT", "/some/where.pth")
    assert resolve_checkpoint(None) == "/some/where.pth"


@pytest.mark.slow
def test_random_freesolo_gives_proposals_in_its_order_with_its_boxes(real_image_path):
    pixels = np.asarray(Image.open(real_image_path).convert("RGB"))
    generator = create_proposals("freesolo", freesolo_checkpoint="random", max_proposals=20)
    proposals = generator(pixels)
    out = generator.run(pixels)
    assert len(proposals) == 20 and proposals.image_size == pixels.shape[:2]
    assert np.array_equal(proposals.masks, out.masks[:20].numpy())
    np.testing.assert_allclose(proposals.boxes, out.boxes[:20].numpy())
    assert generator.spec.name == "freesolo" and generator.spec.max_proposals == 20
    strip = np.zeros((10, 400, 3), dtype=np.uint8)  # 800 x 32,000 pixels once resized: refused, no proposals
    assert len(generator(strip)) == 0
