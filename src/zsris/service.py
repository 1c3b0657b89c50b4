"""`zsris serve`: a Gradio demo page and a JSON HTTP API over one loaded segmenter.

Models load once at start. Requests are served one at a time through a lock (CPU inference
gains nothing from running two at once, and it keeps results from ever mixing); waiting
requests queue. The API answers clear 4xx errors for oversized requests, unreadable images
and empty expressions; the page shows the same messages.
"""

import argparse
import io
import json
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from PIL import Image, UnidentifiedImageError

from .errors import ExpressionError, ImageError, NoProposalsError, ZsrisError
from .images import load_image

EXAMPLES = Path(__file__).parent / "examples"
DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_EXPRESSIONS = 16


class SegmentationService:
    """Thread-safe access to one segmenter, with request limits."""

    def __init__(self, segmenter, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_expressions: int = DEFAULT_MAX_EXPRESSIONS) -> None:
        self.segmenter = segmenter
        segmenter.top_k = max(segmenter.top_k, 100)  # requests choose how many ranked proposals they see
        self.max_request_bytes = max_request_bytes
        self.max_expressions = max_expressions
        self._lock = threading.Lock()

    def parse_expressions(self, text_or_list: Any) -> list[str]:
        if isinstance(text_or_list, str):
            expressions = [line.strip() for line in text_or_list.splitlines() if line.strip()]
        else:
            expressions = [str(e).strip() for e in (text_or_list or []) if str(e).strip()]
        if not expressions:
            raise ExpressionError("give at least one non-empty expression")
        if len(expressions) > self.max_expressions:
            raise ExpressionError(f"at most {self.max_expressions} expressions per request, got {len(expressions)}")
        return expressions

    def segment(self, image: Any, expressions: list[str]):
        """``(pixels, proposals, results)``: the image as RGB, its proposals and one result per expression."""
        pixels = load_image(image, self.segmenter.max_pixels)
        with self._lock:
            features = self.segmenter.image_features(pixels)
            return pixels, features.proposals, self.segmenter.score(features, expressions)


def _decode_upload(data: bytes, name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too large") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad upload
        raise ImageError(f"{name}: not a readable image ({error})") from None


def create_app(service: SegmentationService):
    """The FastAPI app: JSON API under /api, the Gradio page at /."""
    import gradio as gr
    from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
    from fastapi.responses import JSONResponse

    from .records import result_record, settings

    app = FastAPI(
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
        top_k: int = Form(5, ge=1, le=100, description="ranked proposals returned per expression"),
    ) -> dict[str, Any]:
        """Segment the object each expression refers to; one record per expression."""
        data = image.file.read(service.max_request_bytes + 1)
        if len(data) > service.max_request_bytes:
            raise HTTPException(413, f"image over the limit of {service.max_request_bytes} bytes")
        try:
            parsed = service.parse_expressions(expressions)
            decoded = _decode_upload(data, image.filename or "upload")
            _, _, results = service.segment(decoded, parsed)
        except ExpressionError as error:
            raise HTTPException(422, str(error)) from None
        except ImageError as error:
            status = 413 if "limit" in str(error) or "too large" in str(error) else 400
            raise HTTPException(status, str(error)) from None
        except NoProposalsError as error:
            raise HTTPException(422, str(error)) from None
        records = []
        for result in results:
            record = result_record(result, image.filename)
            record["top_proposals"] = record["top_proposals"][:top_k]
            records.append(record)
        return {"results": records, "settings": settings(service.segmenter)}

    demo = build_demo(service)
    return gr.mount_gradio_app(app, demo, path="/", server_name="127.0.0.1")


def build_demo(service: SegmentationService):
    """The Gradio page: upload or pick an example, type expressions, see overlay, mask and ranking."""
    import gradio as gr

    from .records import result_record
    from .render import mask_image, overlay

    examples = sorted(str(p) for p in EXAMPLES.glob("*.png"))

    def failed(message: str):
        gr.Warning(message)
        return [], None, [], None, f"**Error:** {message}"

    def run(image_path: Optional[str], text: str, top_k: float):
        if not image_path:
            return failed("upload an image first (or pick an example)")
        try:
            expressions = service.parse_expressions(text or "")
            pixels, proposals, results = service.segment(image_path, expressions)
        except ZsrisError as error:
            return failed(str(error))
        out = Path(tempfile.mkdtemp(prefix="zsris-"))
        overlays, files, gallery = [], [], []
        for number, result in enumerate(results):
            overlays.append((overlay(pixels, result.mask, result.box, result.expression), result.expression))
            mask_path = out / f"mask-{number:02d}.png"
            mask_image(result.mask).save(mask_path)
            json_path = out / f"result-{number:02d}.json"
            json_path.write_text(json.dumps(result_record(result, Path(image_path).name), indent=2))
            files += [str(mask_path), str(json_path)]
        first = results[0]
        for rank, proposal in enumerate(first.ranked[: int(top_k)], start=1):
            caption = (f"#{rank}: fused {proposal.score:.3f} | global {proposal.global_score:.3f} | "
                       f"local {proposal.local_score:.3f}")
            picture = overlay(pixels, proposals.masks[proposal.index], proposal.box, f"#{rank}")
            gallery.append((picture, caption))
        status = f"Segmented {len(results)} expression(s) among {len(proposals)} proposals."
        return overlays, mask_image(first.mask), gallery, files, status

    def show_preview(image_path: Optional[str]):
        if not image_path:
            return None, ""
        try:
            return load_image(image_path, service.segmenter.max_pixels), ""
        except ZsrisError as error:
            gr.Warning(str(error))
            return None, f"**Error:** {error}"

    with gr.Blocks(title="zsris: zero-shot referring segmentation") as demo:
        warning = (" **CLIP has random weights: the masks mean nothing.**"
                   if service.segmenter.backbone.is_random else "")
        gr.Markdown("# zsris: zero-shot referring image segmentation\n"
                    "Upload a photo, type one expression per line, and get the mask of the object each one "
                    "refers to (global-local CLIP, Yu et al., CVPR 2023)." + warning)
        with gr.Row():
            with gr.Column():
                # A file input, not gr.Image: Gradio would decode the image itself and answer a bad
                # upload with a bare "Error"; zsris's loader gives the reason.
                image = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="zsris-image")
                preview = gr.Image(label="Preview", interactive=False, height=240, elem_id="zsris-preview")
                text = gr.Textbox(lines=3, label="Expressions (one per line)", placeholder="the man on the left",
                                  elem_id="zsris-expressions")
                top_k = gr.Slider(1, 20, value=5, step=1, label="Ranked proposals to show")
                button = gr.Button("Segment", variant="primary", elem_id="zsris-submit")
                status = gr.Markdown(elem_id="zsris-status")
                if examples:
                    gr.Examples(examples=[[p, "the red circle on the left\nthe blue square"] for p in examples],
                                inputs=[image, text])
            with gr.Column():
                overlays = gr.Gallery(label="Overlay", columns=1, height="auto", object_fit="contain",
                                      elem_id="zsris-overlay")
                mask = gr.Image(label="Mask (first expression)", type="pil", elem_id="zsris-mask")
                ranked = gr.Gallery(label="Ranked proposals (first expression)", columns=5, height="auto",
                                    object_fit="contain", elem_id="zsris-ranked")
                files = gr.File(label="Downloads: mask PNGs and JSON records", file_count="multiple")
        image.change(show_preview, inputs=image, outputs=[preview, status])
        button.click(run, inputs=[image, text, top_k], outputs=[overlays, mask, ranked, files, status],
                     concurrency_limit=1)
    return demo


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .cli import build_segmenter

    segmenter = build_segmenter(args)
    service = SegmentationService(segmenter, args.max_request_mb * 1024 * 1024)
    app = create_app(service)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"zsris: serving on {args.host}: reachable from other machines", flush=True)
    print(f"zsris: open http://{args.host}:{args.port}/ (API docs at /docs, schema at /openapi.json)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(commands, add_model_flags) -> None:
    serve = commands.add_parser(
        "serve", help="web demo and JSON HTTP API",
        description="A Gradio page at / and a JSON API at /api/segment over one loaded model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  zsris serve --port 7860\n  curl -F image=@photo.jpg -F expressions='the man on the left' "
               "http://127.0.0.1:7860/api/segment",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--max-request-mb", type=int, default=20, help="largest accepted request (default: 20 MB)")
    add_model_flags(serve)
    serve.set_defaults(run=cmd_serve)
