"""The Gradio page of ``zsris serve``, in three parts: the view (what the page shows of a result),
the handlers (what an upload and a click do, over the service) and the layout (the components
and their wiring, :func:`build_demo`).

Imported by :func:`zsris.service.create_app` once the 'serve' extra is known to be installed, so
Gradio is imported at the top here. The page reaches the service only through :class:`PageService`:
this module does not import :mod:`zsris.service`, which imports it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol

import gradio as gr
import numpy as np
from gradio.utils import get_upload_folder, is_in_or_equal

from .errors import ImageError, ZsrisError
from .present import caption, explain, save_result
from .render import RANDOM_WEIGHTS_NOTE, draw_overlay
from .types import DEFAULT_TOP_K, Proposals, SegmentResult

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
PAGE_CSS = """
#zsris-examples td, #zsris-examples button { white-space: pre-line; text-align: left; }
.zsris-caption { font-family: ui-monospace, monospace; }
"""


class PageService(Protocol):
    """What the page asks of :class:`zsris.service.SegmentationService`."""

    segmenter: Any
    file_ttl: float

    def parse_expressions(self, text_or_list: Any) -> list[str]: ...

    def load(self, image: Any, name: str) -> np.ndarray: ...

    methods: dict[str, Any]

    def segment(self, image: Any, expressions: list[str], name: str = ...,
                method: Optional[str] = ...) -> tuple[np.ndarray, Proposals, list[SegmentResult]]: ...

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


def answer_view(number: int, result: SegmentResult, pixels: np.ndarray, proposals: Proposals, top_k: int,
                no_target_threshold: Optional[float], note: str) -> dict[str, Any]:
    """What an expression's tab and legend entry show: its label and colour, its mask cut out,
    its ranked proposals drawn (``note`` written on each) and listed, and what decided it."""
    gallery = [(draw_overlay(pixels, proposals.masks[p.index], p.box, f"#{rank} fused {p.score:.3f}", warning=note),
                f"#{rank}: {p.score:.3f}")
               for rank, p in enumerate(result.ranked(top_k), start=1)]
    return {"label": answer_label(number, result), "colour": EXPRESSION_COLOURS[(number - 1) % 10],
            "mask": cut_out(pixels, result.mask), "gallery": gallery,
            "explanation": explain(result, no_target_threshold).markdown(), "ranked": ranked_table(result, top_k)}


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


def show_answers(shown: list[dict]) -> None:
    """A tab per expression (:func:`answer_view`): what decided it, its mask, its ranked proposals."""
    if not shown:
        return
    with gr.Tabs(elem_id="zsris-tabs"):
        for number, answer in enumerate(shown, start=1):
            with gr.Tab(answer["label"], elem_id=f"zsris-tab-{number}"):
                gr.Markdown(answer["explanation"])
                with gr.Row():
                    gr.Image(answer["mask"], label="Mask (the image inside it)", height=240, interactive=False)
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
    """The page's events over one service: ``run`` (the Segment button) and ``check_image`` (an
    upload). Errors become a warning toast and a line under the button, never a traceback."""

    def __init__(self, service: PageService) -> None:
        self.service = service
        self.random_weights = service.segmenter.backbone.is_random
        self.note = RANDOM_WEIGHTS_NOTE if self.random_weights else ""

    @staticmethod
    def failed(message: str) -> tuple:
        gr.Warning(message)
        return None, [], None, f"**Error:** {message}"

    def run(self, image_path: Optional[str], text: str, top_k: float, method: Optional[str] = None,
            progress: gr.Progress = gr.Progress()) -> tuple:
        """The overlay of every answer with its legend, each expression's view, the downloads
        (each answer's mask PNG and JSON record) and the status line."""
        if not image_path:
            return self.failed("upload an image first (or pick an example)")
        try:
            expressions = self.service.parse_expressions(text or "")
            path = uploaded_file(image_path)
            progress(0.1, desc="proposals and visual features")
            pixels, proposals, results = self.service.segment(path, expressions, path.name, method)
        except ZsrisError as error:
            return self.failed(str(error))
        progress(0.9, desc="pictures and downloads")
        out, top_k = self.service.output_folder(), int(top_k)
        files = []
        for result in results:
            base = save_result(result, out, top_k=top_k, name=path.name)  # the mask and the record, no overlay
            files += [f"{base}.mask.png", f"{base}.json"]
        threshold = self.service.segmenter.config.no_target_threshold
        answers = [answer_view(number, result, pixels, proposals, top_k, threshold, self.note)
                   for number, result in enumerate(results, start=1)]
        annotated = (pixels, [(r.mask * ANSWER_OPACITY, a["label"]) for r, a in zip(results, answers)])
        legend = {a["label"]: a["colour"] for a in answers}
        return (gr.AnnotatedImage(value=annotated, color_map=legend), answers, files,
                status_line(results, proposals, self.random_weights))

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


def _inputs_column(methods: list[str]) -> tuple[gr.Image, gr.Textbox, gr.Slider, gr.Dropdown, gr.Button, gr.Markdown]:
    """The left column: image, expressions, ranking length, the method (shown where the server
    has several), the button, the status line, examples."""
    examples = sorted(str(p) for p in EXAMPLES.glob("*.png"))
    with gr.Column():
        image = image_input(label="Image", sources=["upload", "clipboard", "webcam"], height=320,
                            elem_id="zsris-image")
        text = gr.Textbox(lines=3, label="Expressions (one per line)", placeholder="the man on the left",
                          elem_id="zsris-expressions")
        top_k = gr.Slider(1, 20, value=DEFAULT_TOP_K, step=1, label="Ranked proposals to show")
        method = gr.Dropdown(methods, value=methods[0], label="Method", visible=len(methods) > 1,
                             elem_id="zsris-method")
        button = gr.Button("Segment", variant="primary", elem_id="zsris-submit")
        status = gr.Markdown(elem_id="zsris-status")
        if examples:
            gr.Examples(examples=[[p, EXAMPLE_EXPRESSIONS] for p in examples], inputs=[image, text],
                        elem_id="zsris-examples")
    return image, text, top_k, method, button, status


def _outputs_column() -> tuple[gr.AnnotatedImage, gr.File]:
    """The right column: every answer over the photo with a legend, and the downloads."""
    with gr.Column():
        overlay_view = gr.AnnotatedImage(label="Answers: one colour per expression", show_legend=True,
                                         elem_id="zsris-overlay")
        files = gr.File(label="Downloads: each expression's mask PNG and JSON record", file_count="multiple",
                        elem_id="zsris-files")
    return overlay_view, files


def build_demo(service: PageService) -> gr.Blocks:
    """The Gradio page: an image (upload, drag, paste or webcam) and expressions in; every
    expression's answer in one overlay with a legend, and per expression a tab with its mask,
    its ranked proposals and what decided it; downloads named after the expressions."""
    handlers = PageHandlers(service)
    frequency = max(1, min(60, int(service.file_ttl)))
    with gr.Blocks(title="zsris: zero-shot referring segmentation",
                   delete_cache=(frequency, max(1, int(service.file_ttl)))) as demo:
        gr.Markdown(_header(handlers.random_weights))
        answers = gr.State([])
        with gr.Row():
            image, text, top_k, method, button, status = _inputs_column(list(service.methods))
            overlay_view, files = _outputs_column()
        gr.render(inputs=answers)(show_answers)
        image.upload(handlers.check_image, inputs=image, outputs=status, api_name="show_preview")
        chosen = [method] if len(service.methods) > 1 else []  # one method: the page's API as it always was
        button.click(handlers.run, inputs=[image, text, top_k, *chosen], outputs=[overlay_view, answers, files, status],
                     concurrency_limit=1, api_name="run")
    return demo
