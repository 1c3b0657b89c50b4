"""Figures for ``--preprocess paper``: its features against a re-enactment of the authors' loop,
and how often its answers differ from ``--preprocess reference``.

The re-enactment (:func:`authors_features`) is the authors' evaluation loop
(``Our_method_with_free_solo.py`` with their ``ReferDataset``) written out with torchvision as
it behaved in their environment: ``antialias=False`` in every tensor resize. The test suite uses
it too (``tests/test_paper_preprocess.py``).

    python scripts/paper_path_figures.py --data ../shared/data/refcoco-mini --images 40

Random ViT-B/32 weights (the real architecture); classical proposals.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image


def authors_features(model, pil: Image.Image, masks: torch.Tensor, boxes: torch.Tensor, k: int = 3,
                     size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """Global and local features of ``masks`` as the authors' loop computes them: their
    dataset's tensor, the loop's resizes, fill and crops, and token masking in the last ``k``
    blocks (open_clip's batch-first layout; the arithmetic is theirs)."""
    image = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(T.ToTensor()(T.Resize(800)(pil)))[None]
    height, width = np.asarray(pil).shape[:2]
    original = TF.resize(image[0], [height, width], antialias=False)[None]
    resized = TF.resize(image[0], [size, size], antialias=False)[None]
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    crops = []
    for box, mask in zip(boxes, masks):
        mask, box = mask.type(torch.uint8), box.type(torch.int)
        masked = original * mask[None, None] + (1 - mask[None, None]) * mean
        x1, y1, x2, y2 = (int(v) for v in box)
        crops.append(TF.resized_crop(masked.squeeze(0), y1, x1, y2 - y1, x2 - x1, [size, size], antialias=False))
    local = model.encode_image(torch.stack(crops))
    vit = model.visual
    x = vit.conv1(resized)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([vit.class_embedding + torch.zeros(1, 1, x.shape[-1]), x], dim=1) + vit.positional_embedding
    x = vit.ln_pre(x).expand(len(masks), -1, -1)
    grid = vit.grid_size[0]
    weights = TF.resize(masks.float(), [grid, grid], antialias=False).reshape(len(masks), -1, 1)
    blocks = list(vit.transformer.resblocks)
    for index, block in enumerate(blocks):
        if index >= len(blocks) - k:
            x = torch.cat([x[:, :1], x[:, 1:] * weights], dim=1)
        x = block(x)
    return vit.ln_post(x[:, 0]) @ vit.proj, local


@torch.inference_mode()
def main() -> int:
    from zsris import Segmenter, SegmenterConfig
    from zsris.backbones import load_backbone
    from zsris.datasets import open_dataset
    from zsris.jobs.evaluation import load_dataset_image
    from zsris.proposals import ClassicalProposals
    from zsris.proposals.freesolo import projection_boxes
    from zsris.types import Proposals

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--max-proposals", type=int, default=30)
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone("ViT-B/32", weights="random")
        generator = ClassicalProposals(max_proposals=args.max_proposals)
        paper = Segmenter(backbone, generator, SegmenterConfig(preprocess="paper"))
        reference = Segmenter(backbone, generator)
    dataset = open_dataset(args.data, "refcoco")
    groups = dataset.refs_by_image(args.split, args.images)
    worst = {"global": 0.0, "local": 0.0, "global (FreeSOLO boxes)": 0.0, "local (FreeSOLO boxes)": 0.0}
    sentences = differ = 0
    for image_id, refs in groups.items():
        pixels = load_dataset_image(dataset, image_id)
        proposals = generator(pixels)
        if not len(proposals):
            continue
        projected = Proposals(proposals.masks, proposals.scores,
                              projection_boxes(torch.from_numpy(proposals.masks)).numpy())
        for which, props in (("", proposals), (" (FreeSOLO boxes)", projected)):
            features = paper.image_features(pixels, proposals=props)
            expected = authors_features(backbone.model, Image.fromarray(pixels), torch.from_numpy(props.masks),
                                        torch.from_numpy(props.boxes))
            worst["global" + which] = max(worst["global" + which],
                                          float((features.global_features - expected[0]).abs().max()))
            worst["local" + which] = max(worst["local" + which],
                                         float((features.local_features - expected[1]).abs().max()))
        texts = [s.text for ref in refs for s in ref.sentences]
        ours = paper.score(paper.image_features(pixels, proposals=proposals), texts)
        theirs = reference.score(reference.image_features(pixels, proposals=proposals), texts)
        sentences += len(texts)
        differ += sum(a.proposal_index != b.proposal_index for a, b in zip(ours, theirs))
    for name, value in worst.items():
        print(f"largest |paper - authors' loop re-enacted|, {name} features: {value:.2e}")
    print(f"{differ} of {sentences} sentences ({100 * differ / max(sentences, 1):.1f}%) choose another proposal "
          f"with --preprocess paper than with reference ({len(groups)} images, {args.max_proposals} proposals)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
