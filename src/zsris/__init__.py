"""zsris: zero-shot referring image segmentation with global-local CLIP features.

>>> from zsris import create_segmenter
>>> segmenter = create_segmenter()                      # ViT-B/32 (OpenAI), classical proposals
>>> result = segmenter.segment("photo.jpg", "the cat lying on the scooter seat")
>>> result.mask.shape, result.score, result.box
"""
from .backbones import ClipBackbone, load_backbone
from .errors import (DatasetError, ExpressionError, ImageError, NoProposalsError, ProposalError, WeightsError,
                     ZsrisError)
from .images import load_image
from .proposals import ClassicalProposals, FileProposals, Proposals, SamProposals, create_proposals
from .segmenter import ImageFeatures, RankedProposal, SegmentResult, Segmenter, create_segmenter

__version__ = "0.1.0"

__all__ = [
    "ClassicalProposals", "ClipBackbone", "DatasetError", "ExpressionError", "FileProposals", "ImageError",
    "ImageFeatures", "NoProposalsError", "ProposalError", "Proposals", "RankedProposal", "SamProposals",
    "SegmentResult", "Segmenter", "WeightsError", "ZsrisError", "create_proposals", "create_segmenter",
    "load_backbone", "load_image",
]
