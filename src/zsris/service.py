"""`zsris serve`: a Gradio demo page and a JSON HTTP API over one loaded segmenter.

Models load once at start. The model serves one request at a time through a lock (CPU
inference gains nothing from running two at once, and it keeps results from ever mixing),
granted in the order it was asked for. A large image's work is split into steps of about
two seconds that each take the lock anew (:meth:`zsris.segmenter.Segmenter.image_features`'s
``step``), and weights-free proposals are made outside it, in threads of lower CPU priority
(on Linux), so that a small request waits behind one step of a giant one, not all of it, and
its model work is not slowed by the giant's proposals (``benchmarks/serve_fairness.py``). The API
answers clear 4xx errors for oversized requests, unreadable images and empty expressions; the
page shows the same messages.

What an untrusted client can make the server hold is bounded: an image's size is read from
its header and refused before any pixel is decoded; at most ``decode_slots`` decoded images
exist at once (the one being segmented and those next in line); the segmenter keeps at most
``text_cache_size`` parsed expressions and text features (least recently used out first), however
many new sentences arrive (``benchmarks/serve_memory.py`` measures it); the page reads back only
files uploaded through it, and its uploads and outputs are deleted ``file_ttl`` seconds after
they were written.
"""

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import ExpressionError, ImageError, ImageTooLargeError, ProposalError, ZsrisError
from .extras import require_extra
from .images import load_image
from .proposals.base import is_prompted
from .proposals.registry import runs_in_model_process
from .types import DEFAULT_TOP_K

EXAMPLES = Path(__file__).parent / "examples"
DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_EXPRESSIONS = 16
DEFAULT_DECODE_SLOTS = 2
DEFAULT_FILE_TTL = 600
#: The server's own pixel limit, below the command line's 40 MP: any client may send an image,
#: and the masks of 100 proposals of a 36 MP image take 3.6 GB (16 MP: 1.6 GB).
DEFAULT_SERVE_MAX_PIXELS = 16_000_000
#: How much lower the CPU priority (niceness) of the threads making weights-free proposals is.
PROPOSAL_NICENESS = 10

#: HTTP status of each error a request can cause, most specific class first.
ERROR_STATUS: tuple[tuple[type[ZsrisError], int], ...] = (
    (ImageTooLargeError, 413),
    (ImageError, 400),
    (ExpressionError, 422),
    (ProposalError, 422),
)


def http_status(error: ZsrisError) -> int:
    """The status a request that raised ``error`` gets: by the error's type, 500 for the rest."""
    for error_type, status in ERROR_STATUS:
        if isinstance(error, error_type):
            return status
    return 500


class FairLock:
    """A lock granted in the order it was asked for. ``threading.Lock`` promises no order: a
    thread that releases it and at once asks again (a large request between its steps) mostly
    gets it back, and the request that was waiting goes on waiting."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._tickets = 0
        self._serving = 0

    def __enter__(self) -> "FairLock":
        with self._turn:
            ticket = self._tickets
            self._tickets += 1
            self._turn.wait_for(lambda: self._serving == ticket)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._turn:
            self._serving += 1
            self._turn.notify_all()


def _lower_priority() -> None:
    """Lower this thread's CPU priority (Linux: a thread id is a process id to setpriority)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PROPOSAL_NICENESS)


class SegmentationService:
    """Thread-safe access to one segmenter, with request limits."""

    def __init__(self, segmenter, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_expressions: int = DEFAULT_MAX_EXPRESSIONS, decode_slots: int = DEFAULT_DECODE_SLOTS,
                 file_ttl: float = DEFAULT_FILE_TTL, step_pixels: Optional[int] = None) -> None:
        self.segmenter = segmenter
        self.step_pixels = step_pixels
        self.max_request_bytes = max_request_bytes
        self.max_expressions = max_expressions
        self.file_ttl = file_ttl
        self._lock = FairLock()
        self._slots = threading.BoundedSemaphore(decode_slots)
        self._proposal_threads = ThreadPoolExecutor(decode_slots, "zsris-proposals", initializer=_lower_priority)
        self.output_root = Path(tempfile.mkdtemp(prefix="zsris-serve-"))
        atexit.register(shutil.rmtree, self.output_root, ignore_errors=True)

    def output_folder(self) -> Path:
        """A new folder for one page request's downloads; folders older than ``file_ttl`` go first."""
        deadline = time.time() - self.file_ttl
        for folder in self.output_root.iterdir():
            try:
                if folder.stat().st_mtime < deadline:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                continue
        return Path(tempfile.mkdtemp(dir=self.output_root))

    def close(self) -> None:
        self._proposal_threads.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.output_root, ignore_errors=True)

    def parse_expressions(self, text_or_list: Any) -> list[str]:
        if isinstance(text_or_list, str):
            expressions = [line.strip() for line in text_or_list.splitlines() if line.strip()]
        else:
            expressions = [str(e).strip() for e in (text_or_list or []) if str(e).strip()]
        if not expressions:
            raise ExpressionError("give at least one non-empty expression")
        if len(expressions) > self.max_expressions:
            raise ExpressionError(f"at most {self.max_expressions} expressions per request, got {len(expressions)}")
        from .text import check_expression  # (torch: not at import, which `zsris --help` does)

        for expression in expressions:  # before the image is decoded or the model is waited for
            check_expression(expression)
        return expressions

    def load(self, image: Any, name: str):
        """The image as RGB, checked against the pixel limit before it is decoded, in a decode slot."""
        with self._slots:
            return load_image(image, self.segmenter.config.max_pixels, name=name)

    def segment(self, image: Any, expressions: list[str], name: str = "the image"):
        """``(pixels, proposals, results)``: the image as RGB, its proposals and one result per
        expression (each keeps every proposal's scores: ``result.ranked(k)``).

        ``image`` is a path or the bytes of an image file; ``name`` stands for it in error messages.
        A decode slot is held from decoding to the answer, so that queued requests cannot pile
        up decoded images. The model lock is taken per step (see the module's docstring).
        """
        with self._slots:
            pixels = load_image(image, self.segmenter.config.max_pixels, name=name)
            generator = self.segmenter.proposals
            if runs_in_model_process(generator):  # a model (SAM, FreeSOLO): a step of its own
                with self._lock:
                    proposals = generator(pixels, None)
            else:
                proposals = self._proposal_threads.submit(generator, pixels, None).result()
            if is_prompted(generator):  # SAM 3: the expressions' instances, a model step too
                with self._lock:
                    proposals = self.segmenter.proposals_for(pixels, None, expressions, proposals)
            features = self.segmenter.image_features(pixels, proposals=proposals, step=self.model_turn,
                                                     step_pixels=self.step_pixels)
            with self._lock:
                return pixels, features.proposals, self.segmenter.score(features, expressions)

    def model_turn(self) -> FairLock:
        """The model lock, for one step of a request's work."""
        return self._lock


def create_app(service: SegmentationService):
    """The FastAPI app: JSON API under /api, the Gradio page at /."""
    require_extra("serve", "the web demo and HTTP API")
    import gradio as gr
    from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
    from fastapi.responses import JSONResponse

    from .records import result_record, settings

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()  # runs on a graceful stop (SIGTERM, Ctrl-C), before uvicorn re-raises the signal

    app = FastAPI(
        lifespan=lifespan,
        title="zsris",
        version="0.1.0",
        description="Zero-shot referring image segmentation with global-local CLIP features. "
                    "POST an image and expressions to /api/segment; masks come back as COCO RLE.",
    )

    @app.middleware("http")
    async def limit_request_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.url.path.startswith("/api/") and length and int(length) > service.max_request_bytes:
            return JSONResponse(status_code=413, content={
                "detail": f"request of {int(length)} bytes is over the limit of {service.max_request_bytes}"})
        return await call_next(request)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Liveness and the loaded model's settings."""
        return {"status": "ok", "settings": settings(service.segmenter),
                "random_weights": service.segmenter.backbone.is_random}

    @app.post("/api/segment")
    def segment(
        image: UploadFile = File(..., description="the image (JPEG, PNG, ...)"),
        expressions: list[str] = Form(..., description="one or more referring expressions (repeat the field)"),
        top_k: int = Form(DEFAULT_TOP_K, ge=1, le=100, description="ranked proposals returned per expression"),
    ) -> dict[str, Any]:
        """Segment the object each expression refers to; one record per expression."""
        data = image.file.read(service.max_request_bytes + 1)
        if len(data) > service.max_request_bytes:
            raise HTTPException(413, f"image over the limit of {service.max_request_bytes} bytes")
        try:
            parsed = service.parse_expressions(expressions)
            _, _, results = service.segment(data, parsed, Path(image.filename or "upload").name)
        except ZsrisError as error:
            raise HTTPException(http_status(error), str(error)) from None
        records = [result_record(result, image.filename, top_k) for result in results]
        return {"results": records, "settings": settings(service.segmenter)}

    demo = build_demo(service)
    gradio_app = gr.mount_gradio_app(
        app, demo, path="/", server_name="127.0.0.1", max_file_size=service.max_request_bytes, css=PAGE_CSS,
        allowed_paths=[str(EXAMPLES)], show_error=False,  # an unexpected error's text may hold server paths
    )
    # Gradio checks that a file handed to an event was uploaded by a user only once the Blocks
    # has "launched", which mount_gradio_app never marks: without this, any path on the disk
    # could be named in a FileData and read back.
    demo.has_launched = True
    return gradio_app


def _uploaded_file(image_path: str) -> Path:
    """The page's image, if it was uploaded through the page or is a bundled example."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    path = Path(image_path).resolve()
    if not any(is_in_or_equal(path, folder) for folder in (get_upload_folder(), EXAMPLES.resolve())):
        raise ImageError("only images uploaded through this page can be read; upload the image again")
    return path


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


def _cut_out(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask for the eye: the image inside it, darkened outside (a white mask would vanish
    into a white page, and a black one into a dark object)."""
    shown = pixels.astype(np.float32) * CUT_OUT_SHADE
    shown[mask] = pixels[mask]
    return shown.astype(np.uint8)


def _answer_label(number: int, result) -> str:
    """The legend's and the tab's name of an expression's answer (numbered: an expression may repeat)."""
    return f"{number}. {result.caption}"


def _explanation(result, threshold: Optional[float]) -> str:
    """What decided an expression's answer, in words: its score, and the no-target and spatial steps."""
    lines = [f"**{result.expression}** (noun phrase: *{result.noun_phrase}*)"]
    prompt = result.prompt
    if prompt is not None:
        asked = (f"asked for *{prompt['noun_phrase_sent']}*: {prompt['instances']} instance(s), presence "
                 f"{prompt['presence']:.3f}" if prompt["noun_phrase_sent"] is not None else prompt["fallback"])
        lines.append(f"{prompt['generator']} {asked}; {prompt['class_agnostic']} class-agnostic proposal(s).")
    if result.found:
        lines.append(f"Chosen: proposal {result.proposal_index}, fused score {result.score:.3f}, "
                     f"box {list(result.box)}.")
    elif prompt is not None and prompt["decided_by"] == "presence":
        lines.append(f"No such object: the presence {prompt['presence']:.3f} is below "
                     f"{prompt['presence_threshold']}.")
    elif prompt is not None and prompt["decided_by"] == "no candidates":
        lines.append("No such object: nothing to choose from.")
    else:
        lines.append(f"No such object: the best score {result.score:.3f} is below the no-target "
                     f"threshold {threshold}.")
    if result.spatial is not None and (result.spatial.steps or result.spatial.ignored):
        lines.append(f"Spatial words: {result.spatial.summary()}")
    return "\n\n".join(lines)


def _ranked_table(result, top_k: int) -> str:
    rows = ["| rank | proposal | fused | global | local | box |", "|---|---|---|---|---|---|"]
    rows += [f"| {rank} | {p.index} | {p.score:.3f} | {p.global_score:.3f} | {p.local_score:.3f} | {list(p.box)} |"
             for rank, p in enumerate(result.ranked(top_k), start=1)]
    return "\n".join(rows)


def _image_input(**kwargs: Any):
    """Gradio's image input (upload, drag, paste, webcam) that hands the uploaded file's path on
    without opening it: gr.Image opens every upload with PIL first, and a file PIL cannot open
    (a truncated JPEG) becomes a bare "Error" before zsris's loader can say what is wrong. (The
    instance's preprocess is replaced, not the class subclassed: Gradio writes a .pyi file next
    to the module of every component subclass.)"""
    import gradio as gr

    image = gr.Image(type="filepath", **kwargs)
    opening = image.preprocess

    def path_unopened(payload):
        if payload is not None and payload.path is not None and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return opening(payload)

    image.preprocess = path_unopened
    return image


def build_demo(service: SegmentationService):
    """The Gradio page: an image (upload, drag, paste or webcam) and expressions in; every
    expression's answer in one overlay with a legend, and per expression a tab with its mask,
    its ranked proposals and what decided it; downloads named after the expressions."""
    import gradio as gr

    from .render import RANDOM_WEIGHTS_NOTE, overlay

    examples = sorted(str(p) for p in EXAMPLES.glob("*.png"))
    random_weights = service.segmenter.backbone.is_random

    def failed(message: str):
        gr.Warning(message)
        return None, [], None, f"**Error:** {message}"

    def run(image_path: Optional[str], text: str, top_k: float, progress=gr.Progress()):
        if not image_path:
            return failed("upload an image first (or pick an example)")
        try:
            expressions = service.parse_expressions(text or "")
            path = _uploaded_file(image_path)
            progress(0.1, desc="proposals and visual features")
            pixels, proposals, results = service.segment(path, expressions, path.name)
        except ZsrisError as error:
            return failed(str(error))
        progress(0.9, desc="pictures and downloads")
        out = service.output_folder()
        files, answers = [], []
        note = RANDOM_WEIGHTS_NOTE if random_weights else ""
        for number, result in enumerate(results, start=1):
            base = result.save(out, top_k=int(top_k), name=path.name)  # the mask and the record, no overlay
            files += [f"{base}.mask.png", f"{base}.json"]
            gallery = [(overlay(pixels, proposals.masks[p.index], p.box, f"#{rank} fused {p.score:.3f}", warning=note),
                        f"#{rank}: {p.score:.3f}")
                       for rank, p in enumerate(result.ranked(int(top_k)), start=1)]
            answers.append({"label": _answer_label(number, result), "colour": EXPRESSION_COLOURS[(number - 1) % 10],
                            "mask": _cut_out(pixels, result.mask), "gallery": gallery,
                            "explanation": _explanation(result, service.segmenter.config.no_target_threshold),
                            "ranked": _ranked_table(result, int(top_k))})
        annotated = (pixels, [(r.mask * ANSWER_OPACITY, a["label"]) for r, a in zip(results, answers)])
        status = f"Segmented {len(results)} expression(s) among {len(proposals)} proposals."
        absent = [r.expression for r in results if not r.found]
        if absent:
            status += " No such object for: " + "; ".join(f"*{e}*" for e in absent) + "."
        if random_weights:
            status += f" **{RANDOM_WEIGHTS_NOTE}.**"
        legend = {a["label"]: a["colour"] for a in answers}
        return gr.AnnotatedImage(value=annotated, color_map=legend), answers, files, status

    def check_image(image_path: Optional[str]):
        """Read an upload's size and decode it at once, so that a bad file is explained before Segment."""
        if not image_path:
            return ""
        try:
            path = _uploaded_file(image_path)
            service.load(path, path.name)
            return ""
        except ZsrisError as error:
            gr.Warning(str(error))
            return f"**Error:** {error}"

    frequency = max(1, min(60, int(service.file_ttl)))
    with gr.Blocks(title="zsris: zero-shot referring segmentation",
                   delete_cache=(frequency, max(1, int(service.file_ttl)))) as demo:
        warning = " **CLIP has random weights: the masks mean nothing.**" if random_weights else ""
        gr.Markdown("# zsris: zero-shot referring image segmentation\n"
                    "Give a photo (upload, drag, paste or webcam), type one expression per line, and get the mask "
                    "of the object each one refers to (global-local CLIP, Yu et al., CVPR 2023)." + warning)
        answers = gr.State([])
        with gr.Row():
            with gr.Column():
                image = _image_input(label="Image", sources=["upload", "clipboard", "webcam"], height=320,
                                     elem_id="zsris-image")
                text = gr.Textbox(lines=3, label="Expressions (one per line)", placeholder="the man on the left",
                                  elem_id="zsris-expressions")
                top_k = gr.Slider(1, 20, value=DEFAULT_TOP_K, step=1, label="Ranked proposals to show")
                button = gr.Button("Segment", variant="primary", elem_id="zsris-submit")
                status = gr.Markdown(elem_id="zsris-status")
                if examples:
                    gr.Examples(examples=[[p, EXAMPLE_EXPRESSIONS] for p in examples], inputs=[image, text],
                                elem_id="zsris-examples")
            with gr.Column():
                overlay_view = gr.AnnotatedImage(label="Answers: one colour per expression", show_legend=True,
                                                 elem_id="zsris-overlay")
                files = gr.File(label="Downloads: each expression's mask PNG and JSON record", file_count="multiple",
                                elem_id="zsris-files")

        @gr.render(inputs=answers)
        def per_expression(shown: list[dict]) -> None:
            if not shown:
                return
            with gr.Tabs(elem_id="zsris-tabs"):
                for number, answer in enumerate(shown, start=1):
                    with gr.Tab(answer["label"], elem_id=f"zsris-tab-{number}"):
                        gr.Markdown(answer["explanation"])
                        with gr.Row():
                            gr.Image(answer["mask"], label="Mask (the image inside it)", height=240,
                                     interactive=False)
                            gr.Gallery(answer["gallery"], label="Ranked proposals", columns=3, height=240,
                                       object_fit="contain", elem_classes="zsris-caption")
                        gr.Markdown(answer["ranked"], elem_classes="zsris-caption")

        image.upload(check_image, inputs=image, outputs=status, api_name="show_preview")
        button.click(run, inputs=[image, text, top_k], outputs=[overlay_view, answers, files, status],
                     concurrency_limit=1, api_name="run")
    return demo
