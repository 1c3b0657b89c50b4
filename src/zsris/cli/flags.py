"""Flags shared by the subcommands, and the one place where flags become a SegmenterConfig.

Nothing here imports torch: ``zsris --help`` and argument errors answer at once; the models
load only when a command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from ..config import (
    DEFAULT_IMAGE_TIMEOUT,
    FUSIONS,
    PRECISIONS,
    PREPROCESSING,
    RAY_PREPARE,
    SPATIAL_MODES,
    WEIGHTS_ENV,
    ProposalSpec,
    SegmenterConfig,
    paper_alpha,
)
from ..errors import ZsrisError, ZsrisWarning
from ..hybridgl_preset import HYBRIDGL_BACKBONE
from ..methods import METHOD_REGISTRY, MethodSpec
from ..methods.registry import check_tower, parse_method, tower_of
from ..paper import PAPER_BACKBONES, PAPER_PHRASECUT_SUBSET, PAPER_SPACY_MODEL, PAPER_SPLIT_BY, PRESETS
from ..proposals import PROPOSAL_REGISTRY, canonical_spec
from ..proposals.configs import (
    FREESOLO_CHECKPOINT_ENV,
    FREESOLO_FILE,
    SAM2_CHECKPOINT_ENV,
    SAM2_MODELS,
    SAM3_CHECKPOINT_ENV,
    SAM3_HUB_REPO,
    SAM_CHECKPOINT_ENV,
    SAM_MODEL_TYPES,
)
from ..types import DEFAULT_TOP_K

#: The flags' defaults are the config's: one place says what a run does when not told.
DEFAULTS = SegmenterConfig()
#: Flags for the built-in generators' own settings: flag destination -> (generator, option).
#: Any registered generator's options can also be set with --proposal-option NAME=VALUE.
OPTION_FLAGS = {"sam_checkpoint": ("sam", "checkpoint"), "sam_model": ("sam", "model"),
                "sam2_checkpoint": ("sam2", "checkpoint"), "sam2_model": ("sam2", "model"),
                "sam3_checkpoint": ("sam3", "checkpoint"), "sam3_with_classical": ("sam3", "with_classical"),
                "presence_threshold": ("sam3", "presence_threshold"),
                "freesolo_checkpoint": ("freesolo", "freesolo_checkpoint"), "proposals_path": ("file", "path")}

EPILOG = f"""\
weights: no pretrained weights ship with zsris. The default loads OpenAI's ViT-B/32 from the
Hugging Face cache (downloading it when online). Offline, point --weights or ${WEIGHTS_ENV}
at a local checkpoint; --weights random builds the real architecture untrained (for tests
and timing only: its masks mean nothing). `zsris weights` shows what would be loaded.
"""


def _whole_number(text: str, minimum: int, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a count of at least 1 (zero and negatives are refused, not read as "all")."""
    return _whole_number(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    """argparse type: a count of 0 or more (0 meaning "none of these", where a flag says so)."""
    return _whole_number(text, 0, "0 or more")


def probability(text: str) -> float:
    """argparse type: a probability, between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, not {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, not {value:g}")
    return value


def proposal_cap(text: str) -> Optional[int]:
    """argparse type of --max-proposals: a positive count, or ``all`` to lift the cap explicitly."""
    if text.strip().lower() == "all":
        return None
    return positive_int(text)


def proposal_option(text: str) -> tuple[str, Any]:
    """argparse type of --proposal-option: ``NAME=VALUE``, the value read as JSON where it is
    JSON (numbers, true, null ...), else as text."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def add_proposal_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the proposal generator alone (and the device SAM runs on): all `proposals-eval` takes."""
    props = parser.add_argument_group("proposals")
    props.add_argument("--proposals", choices=tuple(PROPOSAL_REGISTRY), default=DEFAULTS.proposals.name,
                       help="mask proposal generator: "
                            + "; ".join(f"{name}: {entry.summary}" if entry.summary else name
                                        for name, entry in PROPOSAL_REGISTRY.items())
                            + " (default: %(default)s)")
    props.add_argument("--max-proposals", type=proposal_cap, default=DEFAULTS.proposals.max_proposals,
                       metavar="N|all",
                       help="cap on proposals per image (default: %(default)s). Fewer is faster (the visual "
                            "step is linear in N) but may drop the object; 'all' keeps every proposal "
                            "(classical: about 5x the visual time)")
    props.add_argument("--sam-checkpoint", default=None, metavar="PATH",
                       help=f"SAM checkpoint for --proposals sam (default ${SAM_CHECKPOINT_ENV}; 'random' for tests)")
    props.add_argument("--sam-model", choices=SAM_MODEL_TYPES, default=None,
                       help=f"(default: {PROPOSAL_REGISTRY['sam'].options['model']})")
    props.add_argument("--sam2-checkpoint", default=None, metavar="FOLDER",
                       help=f"SAM 2.1 in the transformers format for --proposals sam2 (default ${SAM2_CHECKPOINT_ENV}, "
                            f"then the model's hub copy in the Hugging Face cache; 'random' for tests)")
    props.add_argument("--sam2-model", choices=tuple(SAM2_MODELS), default=None,
                       help=f"SAM 2.1's size (default: {PROPOSAL_REGISTRY['sam2'].options['model']})")
    props.add_argument("--sam3-checkpoint", default=None, metavar="FOLDER",
                       help=f"SAM 3 in the transformers format for --proposals sam3 (default ${SAM3_CHECKPOINT_ENV}, "
                            f"then {SAM3_HUB_REPO} in the Hugging Face cache, a gated model; 'random' for tests)")
    props.add_argument("--sam3-with-classical", action="store_const", const=True, default=None,
                       help="with --proposals sam3: the classical proposals join each noun phrase's instances")
    props.add_argument("--presence-threshold", type=probability, default=None, metavar="P",
                       help=f"with --proposals sam3: SAM 3's presence probability below P answers 'no such object' "
                            f"(default: {PROPOSAL_REGISTRY['sam3'].options['presence_threshold']})")
    props.add_argument("--freesolo-checkpoint", default=None, metavar="PATH",
                       help=f"FreeSOLO checkpoint ({FREESOLO_FILE}) for --proposals freesolo (default "
                            f"${FREESOLO_CHECKPOINT_ENV}, then the Hugging Face cache; 'random' for tests)")
    props.add_argument("--proposals-path", default=None, metavar="PATH",
                       help="for --proposals file: COCO RLE JSON or a folder of PNG masks")
    props.add_argument("--proposal-option", type=proposal_option, action="append", default=[],
                       metavar="NAME=VALUE", help="a setting of the chosen generator by its own name (repeat for more)")
    parser.add_argument("--device", default=DEFAULTS.device,
                        help="cpu, cuda, cuda:1 ... for CLIP, SAM and FreeSOLO (default: %(default)s)")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag that a SegmenterConfig is made of."""
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=PRESETS, default=None,
                       help="'paper': the paper's setting (ViT-B/32, FreeSOLO proposals, --preprocess paper, its "
                            "alpha for the dataset, beta 0.5, k 3, spaCy en_core_web_lg); 'hybridgl': HybridGL's "
                            "(CVPR 2025: ViT-B/16, SAM ViT-H with its script's settings, --method hybridgl); flags "
                            "that contradict a preset are refused; eval then reports the preset's published figures")
    model.add_argument("--backbone", default=DEFAULTS.backbone,
                       help="CLIP architecture in open_clip's names: ViT-B/32 (paper), RN50, ViT-B/16 ...; "
                            "or a CLIP in the transformers format: hf:openai/clip-vit-base-patch32 (a hub id) "
                            "or hf:/path/to/folder (default: %(default)s)")
    model.add_argument("--pretrained", default=DEFAULTS.pretrained,
                       help="open_clip pretrained tag (default: %(default)s)")
    model.add_argument("--weights", default=None, metavar="PATH|random",
                       help=f"local CLIP checkpoint (OpenAI .pt, state dict, open_clip .bin/.safetensors), or "
                            f"'random'; default ${WEIGHTS_ENV}, then the pretrained tag")
    model.add_argument("--method", default=DEFAULTS.method.name, metavar="NAME[:SETTING=VALUE...]",
                       help=f"how proposals are scored: {', '.join(METHOD_REGISTRY)} or a method registered with "
                            f"zsris.methods.register_method, with its own settings after colons "
                            f"(global-local:masking=one-block); zsris eval also takes several, comma-separated, "
                            f"or 'table1' (the paper's Table 1) (default: %(default)s, the paper's)")
    model.add_argument("--alpha", type=float, default=None,
                       help="weight of the global-context visual feature (default: the paper's, 0.85 when "
                            "evaluating RefCOCOg, else 0.95)")
    model.add_argument("--beta", type=float, default=DEFAULTS.beta,
                       help="weight of the whole sentence vs its noun phrase (default: %(default)s)")
    model.add_argument("-k", "--k", type=int, default=DEFAULTS.k, dest="k",
                       help="ViT blocks that see the mask (default: %(default)s)")
    model.add_argument("--fusion", choices=FUSIONS, default=DEFAULTS.fusion,
                       help="fuse raw features as the authors' code (default) or L2-normalise each part first")
    model.add_argument("--preprocess", choices=PREPROCESSING, default=DEFAULTS.preprocess,
                       help="the image path: 'reference' (the authors' ImageNet statistics, today's antialiased "
                            "resizes; default), 'paper' (theirs as it ran in torchvision 0.11: a PIL resize to 800 "
                            "first, tensor resizes without antialiasing) or 'clip' (CLIP's own statistics)")
    model.add_argument("--spacy-model", default=None, metavar="NAME|DIR",
                       help="English spaCy pipeline for the target noun phrase (default: $ZSRIS_SPACY_MODEL, else "
                            "the most accurate installed of en_core_web_trf, _lg (the paper's), _md, _sm)")
    model.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision,
                       help="strict fp32 (default, for fidelity); on CUDA also tf32, or bf16/fp16 weights (faster); "
                            "on a CPU with bf16 units (AVX512-BF16 or AMX) also bf16")
    model.add_argument("--spatial", choices=SPATIAL_MODES, default=DEFAULTS.spatial,
                       help="'on': the target's position, order and size words (left, second from the right, "
                            "biggest ...) choose among the noun phrase's candidates; beyond the paper, so off by "
                            "default (see zsris.spatial)")
    absent = parser.add_argument_group("absent and multiple objects (beyond the paper; off by default)")
    absent.add_argument("--no-target-threshold", type=float, default=DEFAULTS.no_target_threshold, metavar="T",
                        help="answer 'no such object' (an empty mask, found: false) when the best fused score "
                             "is below T, a cosine similarity in [-1, 1] (default: always answer)")
    absent.add_argument("--multi-target", action="store_true",
                        help="answer with the union of the proposals scoring within --multi-target-margin of the "
                             "best, for expressions such as 'all the zebras'")
    absent.add_argument("--multi-target-margin", type=float, default=DEFAULTS.multi_target_margin, metavar="M",
                        help="(default: %(default)s)")
    absent.add_argument("--calibration", default=None, metavar="FILE",
                        help="a file written by `zsris calibrate`: its threshold (with --multi-target, the "
                             "threshold and margin chosen together) replaces the flags above")
    model.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                       help="proposals per forward pass (default: %(default)s)")
    add_proposal_flags(parser)
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULTS.max_pixels,
                        help="refuse larger images (default: %(default)s)")


def add_engine_flags(parser: argparse.ArgumentParser, model_stage: bool = True) -> None:
    """How the work is spread: proposal worker processes ahead of the model stage and, where
    there is a ``model_stage`` (eval, calibrate and batch; not proposals-eval), the images per
    CLIP pass and the choice of Ray and its workers."""
    engine = parser.add_argument_group("engine")
    engine.add_argument("--proposal-workers", type=non_negative_int, default=None, metavar="N",
                        help="processes that decode images and make proposals ahead of the model stage "
                             "(default: cores minus one; 0: all in one process)")
    engine.add_argument("--image-timeout", type=float, default=DEFAULT_IMAGE_TIMEOUT, metavar="SECONDS",
                        help="a worker still preparing one image this long after it is needed is stopped and "
                             "the image fails (a file that blocks, a decoder that never ends; default: %(default)g)")
    if model_stage:
        engine.add_argument("--images-per-pass", type=positive_int, default=None, metavar="N",
                            help="images whose proposals go through CLIP together, in consecutive groups "
                                 "(default: 4 on CUDA, 1 on the CPU; results equal up to float rounding)")
        engine.add_argument("--engine", choices=("local", "ray"), default="local",
                            help="'ray' spreads images over Ray workers (needs the 'ray' extra)")
        engine.add_argument("--workers", type=positive_int, default=None, help="Ray workers (default: 2)")
        engine.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
        engine.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                            help="GPUs each Ray worker asks for, and uses, on its node; a fraction shares one "
                                 "(default: 1 when --device is CUDA, else 0)")
        engine.add_argument("--ray-prepare", choices=RAY_PREPARE, default=None,
                            help="where a Ray run decodes images and makes proposals: 'tasks', Ray CPU tasks on "
                                 "the cores the workers leave free, ahead of them; 'actors', each worker its own; "
                                 "'auto' (default): tasks for GPU workers when a core is free")


def add_top_k_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--top-k", type=positive_int, default=DEFAULT_TOP_K,
                        help=f"ranked proposals kept in {what} (default: %(default)s)")


def execution_from_args(args: argparse.Namespace):
    """How a job runs (:class:`zsris.jobs.Execution`): the engine flags, a progress bar, and the
    command line's Ctrl-C event."""
    from ..jobs.run import Execution

    engine = getattr(args, "engine", "local")
    ray_flags = {"--workers": "workers", "--ray-address": "ray_address", "--gpus-per-worker": "gpus_per_worker",
                 "--ray-prepare": "ray_prepare"}
    given = [flag for flag, dest in ray_flags.items() if getattr(args, dest, None) is not None]
    if given and engine != "ray":  # it would be ignored: say so rather than run without it
        raise ZsrisError(f"{given[0]} sets how Ray runs; add --engine ray (or leave it out: the local engine's "
                         f"processes are --proposal-workers)")
    return Execution(engine=engine, proposal_workers=args.proposal_workers,
                     ray_workers=getattr(args, "workers", None) or 2, ray_address=getattr(args, "ray_address", None),
                     stop=getattr(args, "stop", None), image_timeout=args.image_timeout,
                     gpus_per_worker=getattr(args, "gpus_per_worker", None),
                     ray_prepare=getattr(args, "ray_prepare", None) or "auto")


def proposal_spec_from_args(args: argparse.Namespace, name: Optional[str] = None) -> ProposalSpec:
    """The chosen generator (``name``, else --proposals) with its settings: the built-in flags
    that belong to it, then --proposal-option; an option the generator does not have is refused
    in one line."""
    name = name or args.proposals
    given = {dest: owner for dest, (owner, _) in OPTION_FLAGS.items() if getattr(args, dest, None) is not None}
    stray = sorted(dest for dest, owner in given.items() if owner != name)
    if stray:  # it would be ignored: say so rather than run without it
        flag, owner = "--" + stray[0].replace("_", "-"), given[stray[0]]
        raise ZsrisError(f"{flag} is a setting of --proposals {owner}, and this run's proposals are {name}; "
                         f"leave it out or choose --proposals {owner}")
    options = {option: getattr(args, dest) for dest, (generator, option) in OPTION_FLAGS.items() if dest in given}
    options.update(getattr(args, "proposal_option", None) or [])
    return canonical_spec(ProposalSpec(name, args.max_proposals), **options)


#: What --preset leaves to the user: flags whose value, where given, must agree with the preset's
#: (their parser defaults first: an unchanged flag was not given).
PRESET_FLAGS = {"backbone": ("--backbone", DEFAULTS.backbone), "pretrained": ("--pretrained", DEFAULTS.pretrained),
                "alpha": ("--alpha", None), "beta": ("--beta", DEFAULTS.beta), "k": ("-k", DEFAULTS.k),
                "fusion": ("--fusion", DEFAULTS.fusion), "preprocess": ("--preprocess", DEFAULTS.preprocess),
                "proposals": ("--proposals", DEFAULTS.proposals.name), "spatial": ("--spatial", DEFAULTS.spatial),
                "spacy_model": ("--spacy-model", None),
                "no_target_threshold": ("--no-target-threshold", DEFAULTS.no_target_threshold),
                "multi_target": ("--multi-target", False)}


@dataclass(frozen=True)
class PresetRules:
    """What a preset lets the command line change: the backbones it was published with (its
    own first), its proposal generator (its masks, or the same written to a file by ``zsris
    proposals``), PhraseCut's subset it reports, and the method it runs (None: ``--method``
    chooses among the paper's Table 1)."""

    backbones: tuple[str, ...]
    proposals: str
    phrasecut_subset: Optional[str] = None
    method: Optional[str] = None


PRESET_RULES = {"paper": PresetRules(PAPER_BACKBONES, "freesolo", PAPER_PHRASECUT_SUBSET),
                "hybridgl": PresetRules((HYBRIDGL_BACKBONE,), "sam", None, "hybridgl")}


def _preset_config(args: argparse.Namespace) -> SegmenterConfig:
    """The preset's config for the dataset of the command, after refusing, by name, any flag
    given a value the preset does not have (the paper's other backbone, RN50, is allowed)."""
    dataset = getattr(args, "dataset", None)
    config = SegmenterConfig.preset(args.preset, dataset)
    rules = PRESET_RULES[args.preset]
    for dest, (flag, default) in PRESET_FLAGS.items():
        given = getattr(args, dest)
        wanted = getattr(config, dest)
        wanted = wanted.name if dest in ("proposals", "method") else wanted
        allowed = {wanted, *rules.backbones} if dest == "backbone" else {wanted}
        if dest == "proposals":
            allowed.add("file")  # the preset's proposals written once by `zsris proposals`
        if dest == "spacy_model" and wanted is None:
            allowed.add(PAPER_SPACY_MODEL)
        if given != default and given not in allowed:
            also = {"backbone": f" (or {', '.join(rules.backbones[1:])})" if rules.backbones[1:] else "",
                    "proposals": f" (or file, for {wanted}'s written by zsris proposals)"}.get(dest, "")
            raise ZsrisError(f"--preset {args.preset} sets {flag} {wanted}{also}; it contradicts {flag} {given} "
                             f"(leave one of them out)")
    if args.max_proposals not in (config.proposals.max_proposals, None, DEFAULTS.proposals.max_proposals):
        owner, cap = {"freesolo": "FreeSOLO's", "sam": "SAM's"}[rules.proposals], config.proposals.max_proposals
        kept = f"{owner} {cap} masks" if cap else f"every one of {owner} masks"
        raise ZsrisError(f"--preset {args.preset} keeps {kept}; it contradicts --max-proposals {args.max_proposals}")
    if args.calibration:
        raise ZsrisError(f"--preset {args.preset} answers one mask per expression, as the paper does; "
                         f"leave out --calibration")
    split_by = getattr(args, "split_by", None)
    if split_by and dataset in PAPER_SPLIT_BY and split_by != PAPER_SPLIT_BY[dataset]:
        raise ZsrisError(f"--preset {args.preset} evaluates {dataset} on its {PAPER_SPLIT_BY[dataset]} split, as "
                         f"the paper does; it contradicts --split-by {split_by}")
    if dataset == "phrasecut" and rules.phrasecut_subset is not None:  # the paper's figure: unseen categories
        subset = getattr(args, "phrasecut_subset", None)
        if subset not in (None, rules.phrasecut_subset):
            raise ZsrisError(f"--preset {args.preset} evaluates PhraseCut's {rules.phrasecut_subset} phrases, as the "
                             f"paper does; it contradicts --phrasecut-subset {subset}")
        args.phrasecut_subset = rules.phrasecut_subset
    if getattr(args, "gt_proposals", False):
        proposals = ProposalSpec("classical", args.max_proposals)
    elif args.proposals == "file" or rules.method is None:  # FreeSOLO, or its proposals written once to a file
        proposals = proposal_spec_from_args(args, "file" if args.proposals == "file" else rules.proposals)
    else:  # the preset's generator settings, with the flags that say where its weights are
        proposals = _preset_proposals(args, config.proposals)
    return config.replace(
        backbone=args.backbone if args.backbone in rules.backbones else config.backbone,
        spacy_model=args.spacy_model or config.spacy_model, weights=args.weights, proposals=proposals,
        method=_preset_method(args, rules, config),
        precision=args.precision, device=args.device, batch_size=args.batch_size, max_pixels=args.max_pixels,
        images_per_pass=getattr(args, "images_per_pass", None))


#: What a preset's SAM settings leave to the command line: where the weights are, which SAM
#: (warned about), and how many points a pass (speed only).
PRESET_SAM_OPTIONS = ("checkpoint", "model", "points_per_batch")


def _preset_proposals(args: argparse.Namespace, spec: ProposalSpec) -> ProposalSpec:
    """The preset's generator ``spec`` with the options the command line gave it (``--sam-checkpoint``,
    ``--proposal-option``); one that would change the preset's masks is refused by name."""
    proposal_spec_from_args(args, spec.name)  # refuses another generator's flags
    given = {option: getattr(args, dest) for dest, (owner, option) in OPTION_FLAGS.items()
             if owner == spec.name and getattr(args, dest, None) is not None}
    given.update(getattr(args, "proposal_option", None) or [])
    for option, value in given.items():
        if option not in PRESET_SAM_OPTIONS and value != spec.option(option):
            raise ZsrisError(f"--preset {args.preset} sets {spec.name}'s {option} {spec.option(option)}; it "
                             f"contradicts {option}={value} (leave one of them out)")
    return canonical_spec(spec, **given)


def _preset_method(args: argparse.Namespace, rules: PresetRules, config: SegmenterConfig) -> MethodSpec:
    """The method a preset runs: ``--method`` where the preset leaves it open; else the preset's,
    with its settings from ``--method`` (``hybridgl:fusion=L2G``) and any other method refused.
    A SAM model other than ViT-H under ``--preset hybridgl`` is warned about."""
    if rules.method is None:
        return method_from_args(args)
    if args.method == DEFAULTS.method.name:
        spec = config.method
    else:
        spec = method_from_args(args)
        if spec.name != rules.method:
            raise ZsrisError(f"--preset {args.preset} runs --method {rules.method}; it contradicts --method "
                             f"{spec.name} (leave one of them out)")
    model = config.proposals.option("model") if config.proposals.name == "sam" else None
    if getattr(args, "sam_model", None) not in (None, model):
        warnings.warn(f"zsris: --preset {args.preset}'s figures assume SAM {model}; this run's proposals come from "
                      f"SAM {args.sam_model}", ZsrisWarning, stacklevel=2)
    return spec


def several_methods(text: str) -> bool:
    """Whether a ``--method`` value names several methods (a list, or ``table1``)."""
    return text.strip() == "table1" or "," in text


def method_from_args(args: argparse.Namespace) -> MethodSpec:
    """The one method ``--method`` names, with its settings (``name:setting=value``)."""
    if several_methods(args.method):
        raise ZsrisError(f"--method {args.method} names several methods; zsris eval compares several and zsris "
                         f"serve offers several, this command runs one")
    return parse_method(args.method)


def config_from_args(args: argparse.Namespace) -> SegmenterConfig:
    """The only place where flags become settings. Alpha defaults to the paper's for the
    dataset being evaluated (``--dataset``), else the paper's RefCOCO value."""
    config = _preset_config(args) if getattr(args, "preset", None) else _flags_config(args)
    check_tower(config.method, tower_of(config.backbone) == "vit")  # before any model loads
    return config


def _flags_config(args: argparse.Namespace) -> SegmenterConfig:
    alpha = args.alpha if args.alpha is not None else paper_alpha(getattr(args, "dataset", None))
    threshold, margin = args.no_target_threshold, args.multi_target_margin
    if args.calibration:
        from ..calibration import read_calibration

        calibration = read_calibration(args.calibration)
        threshold = calibration.no_target_threshold
        if args.multi_target and calibration.multi_target_margin is not None:  # the pair chosen together
            threshold, margin = calibration.multi_target_threshold, calibration.multi_target_margin
    return SegmenterConfig(
        backbone=args.backbone, pretrained=args.pretrained, weights=args.weights, alpha=alpha, beta=args.beta,
        k=args.k, fusion=args.fusion, preprocess=args.preprocess, proposals=proposal_spec_from_args(args),
        method=method_from_args(args), spacy_model=args.spacy_model, precision=args.precision, spatial=args.spatial,
        no_target_threshold=threshold, multi_target=args.multi_target, multi_target_margin=margin,
        device=args.device, batch_size=args.batch_size, max_pixels=args.max_pixels,
        images_per_pass=getattr(args, "images_per_pass", None),
    )


def announce_random(segmenter) -> None:
    """Untrained CLIP gives meaningless masks: say so loudly, every run."""
    from ..segmenter import RANDOM_WEIGHTS_WARNING

    if segmenter.backbone.is_random:
        print(f"{'!' * 78}\n{RANDOM_WEIGHTS_WARNING}\n{'!' * 78}", file=sys.stderr)


def build_segmenters(args: argparse.Namespace, **changes: Any) -> dict:
    """The segmenters ``--method`` names, by method label: one, or several (a comma-separated list,
    ``table1``) sharing their proposal generator, each CLIP loaded once; ``changes`` to every config."""
    from ..jobs.compare import row_labels
    from ..methods.registry import method_label, method_rows
    from ..segmenter import create_segmenters

    if not several_methods(args.method):
        segmenter = build_segmenter(config_from_args(args).replace(**changes))
        return {method_label(segmenter.config.method): segmenter}
    text, args.method = args.method, DEFAULTS.method.name
    config = config_from_args(args).replace(**changes)
    rows = method_rows(text, config.backbone)
    if config.weights not in (None, "random") and len({backbone for backbone, _ in rows}) > 1:
        raise ZsrisError(f"--weights {config.weights} is one CLIP, and these methods need "
                         f"{' and '.join(sorted({b for b, _ in rows}))}: use --weights random, or the pretrained "
                         f"tags, or name methods of one tower")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zsris: CLIP has RANDOM")
        segmenters = create_segmenters([config.replace(backbone=backbone, method=spec) for backbone, spec in rows])
    announce_random(segmenters[0])
    return dict(zip(row_labels(segmenters), segmenters))


def build_segmenter(config: SegmenterConfig, announce: bool = True):
    """Load the models once; the random-weights warning is said by :func:`announce_random` instead."""
    from ..segmenter import create_segmenter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zsris: CLIP has RANDOM")
        segmenter = create_segmenter(config)
    if announce:
        announce_random(segmenter)
    return segmenter
