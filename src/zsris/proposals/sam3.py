"""SAM 3 proposals: each expression's target noun phrase as SAM 3's concept prompt.

SAM 3 (``transformers``' ``Sam3Model``) segments every instance of a short noun phrase and says
how sure it is that the concept is in the image at all (its presence score), but it cannot tell
"the cat on the left" from the other cats. zsris's parser gives each expression's noun phrase;
SAM 3 finds its instances (plus, with ``with_classical``, the image's class-agnostic proposals);
the global-local CLIP score, and the spatial words where on, choose among them; a presence below
``presence_threshold`` answers "no such object". The image is encoded once; each distinct noun
phrase of the image's expressions costs one pass of SAM 3's detector (counted in ``passes``).

A prompted generator differs from the others in one way: its proposals depend on the
expressions. Called on an image alone (as the engine does) it gives only the class-agnostic
part; :meth:`Sam3Proposals.with_instances` adds each phrase's instances, labelled with their
phrase (:attr:`zsris.types.Proposals.prompts`), which is what the segmenter scores.

Checkpoint: ``facebook/sam3`` on the Hugging Face hub (gated: accept its licence there first), a
local folder in the transformers format, or ``random`` (the real architecture, untrained).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..checkpoints import find_checkpoint
from ..errors import WeightsError, ZsrisError
from ..extras import require_extra
from .base import Candidates, Proposals, check_max_proposals, config_key
from .configs import SAM3_CHECKPOINT_ENV, SAM3_HUB_REPO, SAM3_WEIGHTS, Sam3Config
from .registry import Configured, ProposalSpec, config_of

#: SAM 3's text context (its CLIP text tower's positions).
CONTEXT = 32


def gated_message(reason: str) -> str:
    return (f"SAM 3 proposals need {SAM3_HUB_REPO} ({reason}): it is gated, so accept its licence at "
            f"https://huggingface.co/{SAM3_HUB_REPO}, log in (`hf auth login`) and download it once "
            f"(`hf download {SAM3_HUB_REPO}`), or pass --sam3-checkpoint FOLDER (or set {SAM3_CHECKPOINT_ENV}); "
            f"--sam3-checkpoint random for an untrained model")


def resolve_checkpoint(checkpoint: Optional[str]) -> str:
    """``checkpoint``, else ``$ZSRIS_SAM3_CHECKPOINT``, else ``facebook/sam3`` in the Hugging Face
    cache (the hub id when online): ``random``, a folder or the hub id."""
    found = find_checkpoint(SAM3_WEIGHTS, checkpoint)
    if found is None:
        raise WeightsError(gated_message("not in the Hugging Face cache, and no network"))
    if found.given and found.path != "random" and not Path(found.path).expanduser().is_dir():
        raise WeightsError(f"SAM 3 checkpoint {found.path} is not a folder in the transformers format "
                           f"(config.json, model.safetensors)")
    return found.path


class StandInText:
    """SAM 3's text input without its tokenizer files: OpenAI's BPE (SAM 3's text tower is a CLIP
    text transformer with that vocabulary) padded to its 32 positions, with the attention mask."""

    def __init__(self) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer = SimpleTokenizer(context_length=CONTEXT)

    def __call__(self, phrase: str) -> dict[str, torch.Tensor]:
        ids = self.tokenizer([phrase])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


class Sam3Proposals(Configured):
    """Instances of each expression's noun phrase from SAM 3, with the image's class-agnostic
    proposals when ``with_classical``."""

    name = "sam3"
    quality_options = ("score_threshold", "presence_threshold")

    def __init__(self, checkpoint: Optional[str] = None, config: Optional[Sam3Config] = None,
                 device: str | torch.device = "cpu", network: Any = None, **overrides) -> None:
        self.config = dataclasses.replace(config or Sam3Config(), **overrides)
        if checkpoint is not None:
            self.config = dataclasses.replace(self.config, checkpoint=checkpoint)
        check_max_proposals(self.config.max_proposals)
        for name in ("presence_threshold", "score_threshold", "mask_threshold"):
            value = getattr(self.config, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ZsrisError(f"SAM 3's {name} is a probability between 0 and 1, not {value!r}")
        self.device = torch.device(device)
        self.passes = 0
        require_extra("hf", "SAM 3 proposals")
        from transformers import Sam3ImageProcessor

        if network is not None:  # an already built model (a small configuration, in tests)
            self.checkpoint, self.network = "random", network.eval().to(self.device)
            size = network.config.vision_config.image_size
            self.image_processor, self.text = Sam3ImageProcessor(size={"height": size, "width": size}), StandInText()
        else:
            self.checkpoint = resolve_checkpoint(self.config.checkpoint)
            self.network, self.image_processor, self.text = self._load(self.checkpoint)
        self.classical = None
        if self.config.with_classical:
            from .classical import ClassicalProposals

            self.classical = ClassicalProposals(max_proposals=self.config.max_proposals)

    def _load(self, source: str) -> tuple[Any, Any, Any]:
        from transformers import Sam3ImageProcessor, Sam3Model, Sam3Processor

        if source == "random":
            from transformers import Sam3Config as HfSam3Config

            return Sam3Model(HfSam3Config()).eval().to(self.device), Sam3ImageProcessor(), StandInText()
        local = Path(source).expanduser().is_dir()
        try:
            network = Sam3Model.from_pretrained(source, local_files_only=local)
            processor = Sam3Processor.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if local:
                raise WeightsError(f"cannot load SAM 3 from {source}: {first}") from None
            raise WeightsError(gated_message(first)) from None
        tokenizer = processor.tokenizer

        def text(phrase: str) -> dict[str, torch.Tensor]:
            encoded = tokenizer([phrase], padding="max_length", max_length=CONTEXT, truncation=True,
                                return_tensors="pt")
            return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

        return network.eval().to(self.device), processor.image_processor, text

    @property
    def cache_key(self) -> str:
        """Its config, the checkpoint named by the folder it resolved to."""
        return config_key(self.name, 1, dataclasses.replace(self.config, checkpoint=Path(self.checkpoint).name))

    def __call__(self, image: np.ndarray, image_id: Optional[str] = None) -> Proposals:
        """The class-agnostic part (classical proposals with ``with_classical``, else none)."""
        if self.classical is None:
            return Proposals.empty(*image.shape[:2])
        return self.classical(image, image_id)

    @torch.inference_mode()
    def instances(self, image: np.ndarray, phrases: Sequence[str]) -> dict[str, tuple[Proposals, float]]:
        """Each distinct phrase's instances (best first, capped) and its presence probability:
        one image encoding, one detector pass a phrase."""
        phrases = list(dict.fromkeys(phrases))
        if not phrases:
            return {}
        height, width = image.shape[:2]
        pixels = self.image_processor(images=np.array(image), return_tensors="pt")["pixel_values"].to(self.device)
        vision = self.network.get_vision_features(pixel_values=pixels)
        found = {}
        for phrase in phrases:
            text = {key: value.to(self.device) for key, value in self.text(phrase).items()}
            out = self.network(vision_embeds=vision, **text)
            self.passes += 1
            presence = float(torch.sigmoid(out.presence_logits.float()).reshape(-1)[0])
            kept = self.image_processor.post_process_instance_segmentation(
                out, threshold=self.config.score_threshold, mask_threshold=self.config.mask_threshold,
                target_sizes=[(height, width)])[0]
            order = torch.argsort(kept["scores"], descending=True, stable=True)[: self.config.max_proposals]
            masks = kept["masks"][order].bool().cpu().numpy()
            if not len(masks):  # nothing kept: the post-processing leaves the model's mask size, not the image's
                masks = np.zeros((0, height, width), bool)
            proposals = Proposals(masks, kept["scores"][order].float().cpu().numpy()).non_empty()
            found[phrase] = (proposals, presence)
        return found

    @property
    def prompting(self) -> "PhraseInstances":
        """How the expressions prompt SAM 3 (:class:`PhraseInstances`)."""
        return PhraseInstances(self)

    def with_instances(self, image: np.ndarray, base: Proposals, phrases: Sequence[str]) -> Proposals:
        """``base`` (class-agnostic, prompt ``""``) and every phrase's instances, labelled with it."""
        found = self.instances(image, phrases)
        parts = [base] + [proposals for proposals, _ in found.values()]
        prompts = [""] * len(base) + [phrase for phrase, (proposals, _) in found.items() for _ in range(len(proposals))]
        return Proposals(np.concatenate([p.masks for p in parts]), np.concatenate([p.scores for p in parts]),
                         np.concatenate([p.boxes for p in parts]), np.concatenate([p.areas for p in parts]),
                         np.array(prompts, dtype=object), {phrase: presence for phrase, (_, presence) in found.items()})


class PhraseInstances:
    """SAM 3's prompting: an image's proposals are completed with each expression's noun phrase's
    instances (proposals that have them already are kept as they are), and an expression chooses
    among its phrase's instances and the class-agnostic proposals (those alone without a noun
    phrase); a presence below the threshold, or no candidate at all, answers "no such object"."""

    prompted = True

    def __init__(self, generator: Sam3Proposals) -> None:
        self.generator = generator

    def complete(self, image: np.ndarray, proposals: Proposals, phrases: Sequence[str]) -> Proposals:
        if proposals.prompts is not None:
            return proposals
        return self.generator.with_instances(image, proposals, phrases)

    def candidates(self, phrase: Optional[str], proposals: Proposals) -> Candidates:
        if proposals.prompts is None:  # not completed for any expression: every proposal, as any generator's
            return Candidates()
        rows = proposals.candidates(phrase)
        presence = (proposals.presence or {}).get(phrase) if phrase is not None else None
        threshold = self.generator.config.presence_threshold
        record = {"generator": self.generator.name, "noun_phrase_sent": phrase,
                  "instances": int(np.count_nonzero(proposals.prompts == phrase)) if phrase is not None else 0,
                  "class_agnostic": int(np.count_nonzero(proposals.prompts == "")), "presence": presence,
                  "presence_threshold": threshold}
        if phrase is None:
            record["fallback"] = "no noun phrase: the class-agnostic proposals only"
        refusal = None
        if presence is not None and presence < threshold:
            refusal = "presence"
        elif not len(rows):
            refusal = "no candidates"
        return Candidates(rows, refusal, record)


def from_spec(spec: ProposalSpec, device: torch.device) -> Sam3Proposals:
    """The registry's factory: SAM 3 from the spec's ``checkpoint``, with its options, on ``device``."""
    return Sam3Proposals(config=config_of(Sam3Config, spec), device=device)
