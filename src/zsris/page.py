"""The Gradio page of ``zsris serve``, in three parts: the view (what the page shows of a result),
the handlers (what an upload and a click do, over the service) and the layout (the components
and their wiring, :func:`build_demo`).

Imported by :func:`zsris.service.create_app` once the 'serve' extra is known to be installed, so
Gradio is imported at the top here. The page reaches the service only through :class:`PageService`:
this module does not import :mod:`zsris.service`, which imports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import gradio as gr
import numpy as np
from gradio.utils import get_upload_folder, is_in_or_equal
from PIL import Image

from .errors import ImageError, ZsrisError
from .present import caption, explain, save_result
from .render import RANDOM_WEIGHTS_NOTE, draw_overlay
from .types import DEFAULT_TOP_K, Proposals, SegmentResult

if TYPE_CHECKING:
    from .service import RequestSettings

#: The bundled example images: the page offers them, and may read them back.
EXAMPLES = Path(__file__).parent / "examples"
#: One colour per expression on the page (Tableau 10, then again), legend and tabs alike.
EXPRESSION_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                      "#bcbd22", "#17becf")
#: How opaque each answer's colour is over the photo, and how dark the photo outside a mask is shown.
ANSWER_OPACITY = 0.55
CUT_OUT_SHADE = 0.2
#: Example expressions of the bundled image, one per line as the text box takes them.
EXAMPLE_EXPRESSIONS = "the red circle on the left\nthe blue square"
#: The combined download: every expression's mask in one palette PNG (pixel value = expression number).
LABELS_FILE = "all-expressions.labels.png"
#: A panorama (4000 x 300) fitted to the column's width would be a strip a few pixels high: an
#: image wider than WIDE_RATIO times its height is shown WIDE_HEIGHT px high instead (the masks
#: over it alike), and the answer scrolls sideways.
WIDE_RATIO = 2.5
WIDE_HEIGHT = 300
#: The proposal-count slider's top where a generator has no cap (--max-proposals all).
UNCAPPED_SLIDER_TOP = 500
#: The multi-target margin slider's top (or the server's margin, if larger): fused scores of one
#: image's proposals lie within a few hundredths of each other.
MARGIN_SLIDER_TOP = 0.2
PAGE_CSS = f"""
#zsris-examples td, #zsris-examples button {{ white-space: pre-line; text-align: left; }}
.zsris-caption {{ font-family: ui-monospace, monospace; }}
#zsris-overlay.zsris-wide .container {{ overflow-x: auto; align-items: flex-start; }}
#zsris-overlay.zsris-wide .image-container {{ width: max-content; flex-grow: 0; }}
#zsris-overlay.zsris-wide .base-image {{ width: auto; height: {WIDE_HEIGHT}px; max-width: none; }}
.zsris-wide-mask .image-container {{ overflow-x: auto; justify-content: flex-start; align-items: flex-start; }}
.zsris-wide-mask .image-container button, .zsris-wide-mask .image-frame {{ width: max-content; max-width: none;
  height: 100%; }}
.zsris-wide-mask img {{ width: auto; max-width: none; height: 100%; }}
"""


class PageService(Protocol):
    """What the page asks of :class:`zsris.service.SegmentationService`."""

    segmenter: Any
    file_ttl: float

    def parse_expressions(self, text_or_list: Any) -> list[str]: ...

    def load(self, image: Any, name: str) -> np.ndarray: ...

    methods: dict[str, Any]
    generators: dict[str, Any]

    def chosen(self, method: Optional[str] = ..., proposals: Optional[str] = ...) -> Any: ...

    def run(self, image: Any, expressions: list[str], name: str = ..., request: Any = ...) -> Any: ...

    def output_folder(self) -> Path: ...


# -- the view: a result as the page shows it ------------------------------------------------
def cut_out(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask for the eye: the image inside it, darkened outside (a white mask would vanish
    into a white page, and a black one into a dark object)."""
    shown = pixels.astype(np.float32) * CUT_OUT_SHADE
    shown[mask] = pixels[mask]
    return shown.astype(np.uint8)


def answer_label(number: int, result: SegmentResult) -> str:
    """The legend's and the tab's name of an expression's answer (numbered: an expression may repeat)."""
    return f"{number}. {caption(result.expression, result.found)}"


def _score(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def ranked_table(result: SegmentResult, top_k: int) -> str:
    rows = ["| rank | proposal | fused | global | local | box |", "|---|---|---|---|---|---|"]
    rows += [f"| {rank} | {p.index} | {p.score:.3f} | {_score(p.global_score)} | {_score(p.local_score)} | "
             f"{list(p.box)} |" for rank, p in enumerate(result.ranked(top_k), start=1)]
    return "\n".join(rows)


def is_wide(pixels: np.ndarray) -> bool:
    """Whether the image is a panorama that a column's width would shrink to a strip (:data:`WIDE_RATIO`)."""
    return pixels.shape[1] > WIDE_RATIO * pixels.shape[0]


def answer_view(number: int, result: SegmentResult, pixels: np.ndarray, proposals: Proposals, top_k: int,
                no_target_threshold: Optional[float], note: str) -> dict[str, Any]:
    """What an expression's tab and legend entry show: its label and colour, its mask cut out,
    its ranked proposals drawn (``note`` written on each) and listed, and what decided it."""
    gallery = [(draw_overlay(pixels, proposals.masks[p.index], p.box, f"#{rank} fused {p.score:.3f}", warning=note),
                f"#{rank}: {p.score:.3f}")
               for rank, p in enumerate(result.ranked(top_k), start=1)]
    return {"label": answer_label(number, result), "colour": EXPRESSION_COLOURS[(number - 1) % 10],
            "mask": cut_out(pixels, result.mask), "wide": is_wide(pixels), "gallery": gallery,
            "explanation": explain(result, no_target_threshold).markdown(), "ranked": ranked_table(result, top_k)}


def label_image(results: list[SegmentResult]) -> np.ndarray:
    """Every expression's mask in one image, the pixel value the expression's number (1, 2 ...;
    0: none): one file a script reads as easily as the eye. Larger masks are drawn first, so that
    a smaller answer lying on a larger one stays visible where two overlap (each expression's
    own mask PNG keeps the overlap)."""
    labels = np.zeros(results[0].mask.shape, np.uint8)
    for number, result in sorted(enumerate(results, start=1), key=lambda item: -int(item[1].mask.sum())):
        labels[result.mask] = number
    return labels


def save_labels(results: list[SegmentResult], folder: Path) -> Path:
    """:func:`label_image` as a palette PNG whose colours are the legend's (black: no mask)."""
    palette = [0, 0, 0]
    for number in range(1, len(results) + 1):
        colour = EXPRESSION_COLOURS[(number - 1) % len(EXPRESSION_COLOURS)]
        palette += [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    picture = Image.fromarray(label_image(results), mode="P")
    picture.putpalette(palette)
    path = folder / LABELS_FILE
    picture.save(path)
    return path


def status_line(results: list[SegmentResult], proposals: Proposals, random_weights: bool) -> str:
    """The line under the button: how many expressions among how many proposals, those without
    an object, and the random-weights warning."""
    status = f"Segmented {len(results)} expression(s) among {len(proposals)} proposals."
    absent = [r.expression for r in results if not r.found]
    if absent:
        status += " No such object for: " + "; ".join(f"*{e}*" for e in absent) + "."
    if random_weights:
        status += f" **{RANDOM_WEIGHTS_NOTE}.**"
    return status


def elapsed_line(elapsed_s: float, settings: dict[str, Any]) -> str:
    """The line over the answers: how long the server took and what it ran (method, generator, cap)."""
    cap = settings["proposals"]["max_proposals"]
    return (f"Answered in **{elapsed_s:.2f} s** by {settings['method']['name']} over "
            f"{settings['proposals']['name']} proposals (at most {'all' if cap is None else cap}).")


def show_answers(shown: list[dict]) -> None:
    """A tab per expression (:func:`answer_view`): what decided it, its mask, its ranked proposals."""
    if not shown:
        return
    with gr.Tabs(elem_id="zsris-tabs"):
        for number, answer in enumerate(shown, start=1):
            with gr.Tab(answer["label"], elem_id=f"zsris-tab-{number}"):
                gr.Markdown(answer["explanation"])
                with gr.Row():
                    gr.Image(answer["mask"], label="Mask (the image inside it)", height=240, interactive=False,
                             elem_classes="zsris-wide-mask" if answer["wide"] else None)
                    gr.Gallery(answer["gallery"], label="Ranked proposals", columns=3, height=240,
                               object_fit="contain", elem_classes="zsris-caption")
                gr.Markdown(answer["ranked"], elem_classes="zsris-caption")


# -- the handlers: what the page's events do ------------------------------------------------
def uploaded_file(image_path: str) -> Path:
    """The page's image, if it was uploaded through the page or is a bundled example."""
    path = Path(image_path).resolve()
    if not any(is_in_or_equal(path, folder) for folder in (get_upload_folder(), EXAMPLES.resolve())):
        raise ImageError("only images uploaded through this page can be read; upload the image again")
    return path


class PageHandlers:
    """The page's events over one service: ``run`` (the Segment button), ``check_image`` (an
    upload) and ``clear``. Errors become a warning toast and a line under the button, never a
    traceback."""

    def __init__(self, service: PageService, request: Callable[..., "RequestSettings"]) -> None:
        self.service = service
        self.request = request  # zsris.service.RequestSettings: this module does not import the service
        self.random_weights = service.segmenter.backbone.is_random
        self.note = RANDOM_WEIGHTS_NOTE if self.random_weights else ""

    #: What the result components hold before any run, after Clear and when an example is chosen.
    NO_RESULTS = (None, [], None, "", "")

    @staticmethod
    def failed(message: str) -> tuple:
        gr.Warning(message)
        return None, [], None, f"**Error:** {message}", ""

    def run(self, image_path: Optional[str], text: str, top_k: float, method: Optional[str] = None,
            proposals: Optional[str] = None, max_proposals: Optional[float] = None, spatial: Optional[bool] = None,
            no_target_threshold: Optional[float] = None, multi_target: Optional[bool] = None,
            multi_target_margin: Optional[float] = None, progress: gr.Progress = gr.Progress()) -> tuple:
        """The overlay of every answer with its legend, each expression's view, the downloads
        (each answer's mask PNG and JSON record; with several expressions, their masks in one
        label PNG), the status line and the elapsed time. The settings go to the service as a
        request, as the API's form fields do (None: the server's own)."""
        if not image_path:
            return self.failed("upload an image first (or pick an example)")
        request = self.request(method=method or None, proposals=proposals or None,
                               max_proposals=None if max_proposals is None else int(max_proposals), spatial=spatial,
                               no_target_threshold=no_target_threshold, multi_target=multi_target,
                               multi_target_margin=multi_target_margin)
        try:
            expressions = self.service.parse_expressions(text or "")
            path = uploaded_file(image_path)
            progress(0.1, desc="proposals and visual features")
            run = self.service.run(path, expressions, path.name, request)
        except ZsrisError as error:
            return self.failed(str(error))
        progress(0.9, desc="pictures and downloads")
        pixels, proposals, results = run.pixels, run.proposals, run.results
        out, top_k = self.service.output_folder(), int(top_k)
        files = []
        for result in results:
            base = save_result(result, out, top_k=top_k, name=path.name)  # the mask and the record, no overlay
            files += [f"{base}.mask.png", f"{base}.json"]
        if len(results) > 1:
            files.insert(0, str(save_labels(results, out)))
        threshold = run.settings["no_target_threshold"]
        answers = [answer_view(number, result, pixels, proposals, top_k, threshold, self.note)
                   for number, result in enumerate(results, start=1)]
        annotated = (pixels, [(r.mask * ANSWER_OPACITY, a["label"]) for r, a in zip(results, answers)])
        legend = {a["label"]: a["colour"] for a in answers}
        wide = ["zsris-wide"] if is_wide(pixels) else []
        return (gr.AnnotatedImage(value=annotated, color_map=legend, elem_classes=wide), answers, files,
                status_line(results, proposals, self.random_weights), elapsed_line(run.elapsed_s, run.settings))

    def event(self, names: list[str]) -> Callable[..., tuple]:
        """:meth:`run` as the Segment button calls it: image, expressions and top-k, then the
        settings ``names`` in that order (the menus only where the server offers a choice)."""
        def run(image_path: Optional[str], text: str, top_k: float, *settings: Any,
                progress: gr.Progress = gr.Progress()) -> tuple:
            return self.run(image_path, text, top_k, **dict(zip(names, settings)), progress=progress)

        return run

    def check_image(self, image_path: Optional[str]) -> str:
        """Read an upload's size and decode it at once, so that a bad file is explained before Segment."""
        if not image_path:
            return ""
        try:
            path = uploaded_file(image_path)
            self.service.load(path, path.name)
            return ""
        except ZsrisError as error:
            gr.Warning(str(error))
            return f"**Error:** {error}"


# -- the layout: the components and their wiring --------------------------------------------
def image_input(**kwargs: Any) -> gr.Image:
    """Gradio's image input (upload, drag, paste, webcam) that hands the uploaded file's path on
    without opening it: gr.Image opens every upload with PIL first, and a file PIL cannot open
    (a truncated JPEG) becomes a bare "Error" before zsris's loader can say what is wrong. (The
    instance's preprocess is replaced, not the class subclassed: Gradio writes a .pyi file next
    to the module of every component subclass.)"""
    image = gr.Image(type="filepath", **kwargs)
    opening = image.preprocess

    def path_unopened(payload):
        if payload is not None and payload.path is not None and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return opening(payload)

    image.preprocess = path_unopened
    return image


def _header(random_weights: bool) -> str:
    warning = " **CLIP has random weights: the masks mean nothing.**" if random_weights else ""
    return ("# zsris: zero-shot referring image segmentation\n"
            "Give a photo (upload, drag, paste or webcam), type one expression per line, and get the mask "
            "of the object each one refers to (global-local CLIP, Yu et al., CVPR 2023)." + warning)


@dataclass
class Inputs:
    """The left column's components: what a run reads, and what Clear resets."""

    image: gr.Image
    text: gr.Textbox
    top_k: gr.Slider
    method: gr.Dropdown
    proposals: gr.Dropdown
    max_proposals: gr.Slider
    spatial: gr.Checkbox
    no_target_threshold: gr.Slider
    multi_target: gr.Checkbox
    multi_target_margin: gr.Slider
    button: gr.Button
    clear: gr.Button
    status: gr.Markdown
    examples: Optional[gr.Examples]

    def settings(self, service: PageService) -> dict[str, gr.components.Component]:
        """The settings a run sends after image, expressions and top-k, by the name of
        :meth:`PageHandlers.run`'s parameter: a menu only where the server offers a choice."""
        menus = {"method": self.method} if len(service.methods) > 1 else {}
        if len(service.generators) > 1:
            menus["proposals"] = self.proposals
        return {**menus, "max_proposals": self.max_proposals, "spatial": self.spatial,
                "no_target_threshold": self.no_target_threshold, "multi_target": self.multi_target,
                "multi_target_margin": self.multi_target_margin}


def _slider_top(service: PageService) -> int:
    """The proposal-count slider's top: the largest cap of the server's generators."""
    caps = [service.chosen(None, name).config.proposals.max_proposals for name in service.generators]
    return UNCAPPED_SLIDER_TOP if None in caps else max(caps)


def _settings_controls(service: PageService) -> tuple:
    """Generator, proposal count and the decision rules, each starting at the server's own."""
    methods, generators = list(service.methods), list(service.generators)
    policy, top = service.segmenter.policy, _slider_top(service)
    method = gr.Dropdown(methods, value=methods[0], label="Method", visible=len(methods) > 1, elem_id="zsris-method")
    with gr.Accordion("Settings", open=True, elem_id="zsris-settings"):
        with gr.Row():
            proposals = gr.Dropdown(generators, value=generators[0], label="Proposals", visible=len(generators) > 1,
                                    elem_id="zsris-proposals")
            max_proposals = gr.Slider(1, top, value=top, step=1, label="Max proposals (the generator's first)",
                                      elem_id="zsris-max-proposals")
        spatial = gr.Checkbox(policy.spatial, label="Spatial words (left, biggest, second from the right ...)",
                              elem_id="zsris-spatial")
        no_target = gr.Slider(-1, 1, value=-1 if policy.no_target_threshold is None else policy.no_target_threshold,
                              step=0.01, label="No-target threshold (best score below it: 'no such object'; "
                                               "-1: always answer)", elem_id="zsris-threshold")
        with gr.Row():
            multi_target = gr.Checkbox(policy.multi_target, label="Multi-target (every proposal within the margin)",
                                       elem_id="zsris-multi-target")
            margin = gr.Slider(0, max(MARGIN_SLIDER_TOP, policy.multi_target_margin), value=policy.multi_target_margin,
                               step=0.005, label="Multi-target margin", elem_id="zsris-margin")
    return method, proposals, max_proposals, spatial, no_target, multi_target, margin


def _inputs_column(service: PageService) -> Inputs:
    """The left column: image, expressions, ranking length, the settings (a menu only where the
    server offers a choice), the buttons, the status line, examples."""
    examples = sorted(str(p) for p in EXAMPLES.glob("*.png"))
    with gr.Column():
        image = image_input(label="Image", sources=["upload", "clipboard", "webcam"], height=320,
                            elem_id="zsris-image")
        text = gr.Textbox(lines=3, label="Expressions (one per line)", placeholder="the man on the left",
                          elem_id="zsris-expressions")
        top_k = gr.Slider(1, 20, value=DEFAULT_TOP_K, step=1, label="Ranked proposals to show")
        settings = _settings_controls(service)
        with gr.Row():
            clear = gr.Button("Clear", elem_id="zsris-clear")
            button = gr.Button("Segment", variant="primary", elem_id="zsris-submit")
        status = gr.Markdown(elem_id="zsris-status")
        shown = (gr.Examples(examples=[[p, EXAMPLE_EXPRESSIONS] for p in examples], inputs=[image, text],
                             elem_id="zsris-examples") if examples else None)
    return Inputs(image, text, top_k, *settings, button, clear, status, shown)


def _outputs_column() -> tuple[gr.Markdown, gr.AnnotatedImage, gr.File]:
    """The right column: the time the run took, every answer over the photo with a legend, and
    the downloads."""
    with gr.Column():
        elapsed = gr.Markdown(elem_id="zsris-elapsed")
        overlay_view = gr.AnnotatedImage(label="Answers: one colour per expression", show_legend=True,
                                         elem_id="zsris-overlay")
        files = gr.File(label="Downloads: all masks in one label PNG (pixel value = expression number), and "
                              "each expression's mask PNG and JSON record", file_count="multiple",
                        elem_id="zsris-files")
    return elapsed, overlay_view, files


def build_demo(service: PageService, request: Callable[..., "RequestSettings"]) -> gr.Blocks:
    """The Gradio page: an image (upload, drag, paste or webcam) and expressions in, with the
    settings the server lets a request change; every expression's answer in one overlay with a
    legend, the time it took, and per expression a tab with its mask, its ranked proposals and
    what decided it; downloads named after the expressions. ``request`` makes the service's
    request settings (:class:`zsris.service.RequestSettings`) from the page's."""
    handlers = PageHandlers(service, request)
    frequency = max(1, min(60, int(service.file_ttl)))
    with gr.Blocks(title="zsris: zero-shot referring segmentation",
                   delete_cache=(frequency, max(1, int(service.file_ttl)))) as demo:
        gr.Markdown(_header(handlers.random_weights))
        answers = gr.State([])
        with gr.Row():
            inputs = _inputs_column(service)
            elapsed, overlay_view, files = _outputs_column()
        results = [overlay_view, answers, files, inputs.status, elapsed]
        gr.render(inputs=answers)(show_answers)
        inputs.image.upload(handlers.check_image, inputs=inputs.image, outputs=inputs.status, api_name="show_preview")
        settings = inputs.settings(service)
        inputs.button.click(handlers.event(list(settings)),
                            inputs=[inputs.image, inputs.text, inputs.top_k, *settings.values()],
                            outputs=results, concurrency_limit=1, api_name="run")
        # queued, as the run is: the tabs (gr.render of the answers' State) update only after a queued event
        inputs.clear.click(lambda: (None, "", *PageHandlers.NO_RESULTS), outputs=[inputs.image, inputs.text, *results],
                           api_name=False)
        if inputs.examples is not None:  # the last answers were about another image
            inputs.examples.load_input_event.then(lambda: PageHandlers.NO_RESULTS, outputs=results, api_name=False)
    return demo
