"""`zsris serve`: a Gradio demo page (:mod:`zsris.page`) and a JSON HTTP API over one loaded segmenter.

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
import dataclasses
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .config import SCORE_RANGE
from .errors import (
    ExpressionError,
    ImageError,
    ImageTooLargeError,
    MethodError,
    ProposalError,
    SettingError,
    ZsrisError,
)
from .extras import require_extra
from .images import load_image
from .proposals.base import is_prompted
from .proposals.registry import runs_in_model_process
from .types import DEFAULT_TOP_K, Proposals, SegmentResult

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
    (MethodError, 422),
    (SettingError, 422),
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


@dataclass(frozen=True)
class RequestSettings:
    """What one request (the page's controls, the API's form fields) may change of the server's
    settings; None keeps the server's own. The page and the API pass these to one
    :meth:`SegmentationService.run`, so both are limited alike: ``proposals`` must be a
    generator the server loaded, and ``max_proposals`` can only keep fewer proposals than the
    generator makes (the first ones, in its order), never more: the server's cap bounds memory."""

    method: Optional[str] = None
    proposals: Optional[str] = None
    max_proposals: Optional[int] = None
    spatial: Optional[bool] = None
    #: -1 (or below) always answers: every fused score (a cosine similarity) is at least -1.
    no_target_threshold: Optional[float] = None
    multi_target: Optional[bool] = None
    multi_target_margin: Optional[float] = None

    def check(self) -> None:
        """Refuse a setting out of its range before any work (the API's form checks them too;
        a page's event can be called without the page)."""
        low, high = SCORE_RANGE
        if self.max_proposals is not None and self.max_proposals < 1:
            raise SettingError(f"max_proposals must be at least 1, not {self.max_proposals}")
        if self.no_target_threshold is not None and not low <= self.no_target_threshold <= high:
            raise SettingError(f"no_target_threshold is a cosine similarity in [{low:g}, {high:g}], "
                               f"not {self.no_target_threshold:g}")
        if self.multi_target_margin is not None and not 0.0 <= self.multi_target_margin <= high - low:
            raise SettingError(f"multi_target_margin must lie in [0, {high - low:g}], not {self.multi_target_margin:g}")


@dataclass
class Run:
    """One request's answer: the image as RGB, the proposals scored, one result per expression,
    the settings that produced them (the server's, with the request's changes) and how long the
    server took, waiting for the model included (what a visitor waited)."""

    pixels: np.ndarray
    proposals: Proposals
    results: list[SegmentResult]
    settings: dict[str, Any]
    elapsed_s: float


class SegmentationService:
    """Thread-safe access to one segmenter, with request limits; or to several that share one
    proposal generator (``methods``: by name, the first the default), chosen per request; and
    over several proposal generators (``generators``: by name, the first the segmenter's own),
    each method over each of them sharing its models (:meth:`zsris.segmenter.Segmenter.over`)."""

    def __init__(self, segmenter, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_expressions: int = DEFAULT_MAX_EXPRESSIONS, decode_slots: int = DEFAULT_DECODE_SLOTS,
                 file_ttl: float = DEFAULT_FILE_TTL, step_pixels: Optional[int] = None,
                 methods: Optional[dict[str, Any]] = None, generators: Optional[dict[str, Any]] = None) -> None:
        from .methods.registry import method_label

        self.segmenter = segmenter
        self.methods = dict(methods) if methods else {method_label(segmenter.config.method): segmenter}
        if len({id(s.proposals) for s in self.methods.values()}) != 1:
            raise ZsrisError("the methods of one server share one proposal generator")
        own = segmenter.config.proposals.name
        self.generators = {own: segmenter.proposals, **{k: v for k, v in (generators or {}).items() if k != own}}
        #: (method, generator) -> its segmenter, or why that pair cannot run (a method that
        #: chooses among every proposal over a prompted generator): refused per request, not at start.
        self._pairs: dict[tuple[str, str], Any] = {}
        for label, chosen in self.methods.items():
            for name, generator in self.generators.items():
                try:
                    self._pairs[label, name] = chosen if generator is chosen.proposals else chosen.over(generator)
                except ZsrisError as error:
                    self._pairs[label, name] = str(error)
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

    def chosen(self, method: Optional[str] = None, proposals: Optional[str] = None):
        """The segmenter of ``method`` (a name :attr:`methods` has; None: the default) over the
        generator ``proposals`` (a name :attr:`generators` has; None: the default)."""
        method = method or next(iter(self.methods))
        proposals = proposals or next(iter(self.generators))
        if method not in self.methods:
            raise MethodError(f"this server has no method {method!r}; it has {', '.join(self.methods)}")
        if proposals not in self.generators:
            raise ProposalError(f"this server has no proposal generator {proposals!r}; it has "
                                f"{', '.join(self.generators)}")
        pair = self._pairs[method, proposals]
        if isinstance(pair, str):
            raise MethodError(pair)
        return pair

    def policy(self, segmenter, request: RequestSettings):
        """The segmenter's decision rules with the request's changes."""
        changes = {"spatial": request.spatial, "no_target_threshold": request.no_target_threshold,
                   "multi_target": request.multi_target, "multi_target_margin": request.multi_target_margin}
        return dataclasses.replace(segmenter.policy, **{k: v for k, v in changes.items() if v is not None})

    def run(self, image: Any, expressions: list[str], name: str = "the image",
            request: RequestSettings = RequestSettings()) -> Run:
        """:meth:`segment` timed, with the settings that produced the answer (the page and the
        API both answer through here)."""
        started = time.perf_counter()
        segmenter = self.chosen(request.method, request.proposals)
        pixels, proposals, results = self.segment(image, expressions, name, request=request)
        policy = self.policy(segmenter, request)
        spec = dataclasses.replace(segmenter.config.proposals, max_proposals=self.cap(segmenter, request))
        config = segmenter.config.replace(
            proposals=spec, spatial="on" if policy.spatial else "off", no_target_threshold=policy.no_target_threshold,
            multi_target=policy.multi_target, multi_target_margin=policy.multi_target_margin)
        from .records import settings

        return Run(pixels, proposals, results, settings(segmenter, config), time.perf_counter() - started)

    @staticmethod
    def cap(segmenter, request: RequestSettings) -> Optional[int]:
        """Proposals kept per image: the request's cap where it is below the generator's (None: no cap)."""
        own = segmenter.config.proposals.max_proposals
        if request.max_proposals is None:
            return own
        return request.max_proposals if own is None else min(own, request.max_proposals)

    def segment(self, image: Any, expressions: list[str], name: str = "the image", method: Optional[str] = None,
                request: RequestSettings = RequestSettings()) -> tuple[np.ndarray, Proposals, list[SegmentResult]]:
        """``(pixels, proposals, results)``: the image as RGB, its proposals and one result per
        expression (each keeps every proposal's scores: ``result.ranked(k)``), by ``method``
        (one of :attr:`methods`; the default where None; else the request's) with the
        request's generator, cap and decision rules.

        ``image`` is a path or the bytes of an image file; ``name`` stands for it in error messages.
        A decode slot is held from decoding to the answer, so that queued requests cannot pile
        up decoded images. The model lock is taken per step (see the module's docstring).
        """
        request.check()
        segmenter = self.chosen(method or request.method, request.proposals)
        policy = self.policy(segmenter, request)
        cap = self.cap(segmenter, request)
        with self._slots:
            pixels = load_image(image, segmenter.config.max_pixels, name=name)
            generator = segmenter.proposals
            if runs_in_model_process(generator):  # a model (SAM, FreeSOLO): a step of its own
                with self._lock:
                    proposals = generator(pixels, None)
            else:
                proposals = self._proposal_threads.submit(generator, pixels, None).result()
            if request.max_proposals is not None and len(proposals) > cap:  # the first: its best, in its order
                proposals = proposals.select(np.arange(cap))
            if is_prompted(generator):  # SAM 3: the expressions' instances, a model step too
                with self._lock:
                    proposals = segmenter.proposals_for(pixels, None, expressions, proposals)
            features = segmenter.image_features(pixels, proposals=proposals, step=self.model_turn,
                                                step_pixels=self.step_pixels)
            with self._lock:
                return pixels, features.proposals, segmenter.score(features, expressions, policy)

    def model_turn(self) -> FairLock:
        """The model lock, for one step of a request's work."""
        return self._lock


class ApiBodyLimit:
    """Starlette's request-body limit on the API's paths (the page's uploads have Gradio's own):
    a body sent without a Content-Length (chunked) is refused with 413 as soon as what has arrived
    passes the limit, rather than read whole first."""

    def __init__(self, app, max_body_size: int) -> None:
        from starlette.middleware.body_limit import RequestBodyLimitMiddleware

        self.app = app
        self.limited = RequestBodyLimitMiddleware(app, max_body_size)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            await self.limited(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(service: SegmentationService):
    """The FastAPI app: JSON API under /api, the Gradio page at /."""
    require_extra("serve", "the web demo and HTTP API")
    import gradio as gr
    from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
    from fastapi.responses import JSONResponse

    from .page import EXAMPLES, PAGE_CSS, build_demo
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

    app.add_middleware(ApiBodyLimit, max_body_size=service.max_request_bytes)

    @app.middleware("http")
    async def limit_request_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.url.path.startswith("/api/") and length and int(length) > service.max_request_bytes:
            return JSONResponse(status_code=413, content={
                "detail": f"request of {int(length)} bytes is over the limit of {service.max_request_bytes}"})
        return await call_next(request)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Liveness, the loaded model's settings, and what a request may choose: the methods and
        proposal generators (each with its cap on proposals per image; null: none)."""
        return {"status": "ok", "settings": settings(service.segmenter), "methods": list(service.methods),
                "proposals": {name: service.chosen(None, name).config.proposals.max_proposals
                              for name in service.generators},
                "random_weights": service.segmenter.backbone.is_random}

    @app.get("/api/segment", include_in_schema=False)
    def segment_by_get() -> None:
        """The page's catch-all would answer 404: say which method the endpoint takes."""
        raise HTTPException(405, "POST an image and expressions to /api/segment (a multipart form)",
                            headers={"Allow": "POST"})

    @app.post("/api/segment")
    def segment(
        image: UploadFile = File(..., description="the image (JPEG, PNG, ...)"),
        expressions: list[str] = Form(..., description="one or more referring expressions (repeat the field)"),
        top_k: int = Form(DEFAULT_TOP_K, ge=1, le=100, description="ranked proposals returned per expression"),
        method: Optional[str] = Form(None, description="the scoring method, one the server loaded "
                                                       "(GET /api/health lists them; default: its first)"),
        proposals: Optional[str] = Form(None, description="the proposal generator, one the server loaded "
                                                          "(GET /api/health lists them; default: its first)"),
        max_proposals: Optional[int] = Form(None, ge=1, description="keep at most this many of the generator's "
                                                                    "proposals, its first (default and most: the "
                                                                    "server's cap)"),
        spatial: Optional[bool] = Form(None, description="position, order and size words choose among the "
                                                         "candidates (default: the server's --spatial)"),
        no_target_threshold: Optional[float] = Form(None, ge=-1, le=1, description=(
            "answer 'no such object' when the best fused score is below this; -1 always answers "
            "(default: the server's)")),
        multi_target: Optional[bool] = Form(None, description="answer with every proposal within the margin of the "
                                                              "best (default: the server's)"),
        multi_target_margin: Optional[float] = Form(None, ge=0, le=2, description="(default: the server's)"),
    ) -> dict[str, Any]:
        """Segment the object each expression refers to; one record per expression, the settings
        used (the server's with this request's changes) and the seconds the server took."""
        data = image.file.read(service.max_request_bytes + 1)
        if len(data) > service.max_request_bytes:
            raise HTTPException(413, f"image over the limit of {service.max_request_bytes} bytes")
        request = RequestSettings(method, proposals, max_proposals, spatial, no_target_threshold, multi_target,
                                  multi_target_margin)
        try:
            service.chosen(method, proposals)  # a wrong name is said before the expressions are parsed
            parsed = service.parse_expressions(expressions)
            run = service.run(data, parsed, Path(image.filename or "upload").name, request)
        except ZsrisError as error:
            raise HTTPException(http_status(error), str(error)) from None
        records = [result_record(result, image.filename, top_k) for result in run.results]
        return {"results": records, "settings": run.settings, "elapsed_s": round(run.elapsed_s, 3)}

    demo = build_demo(service, RequestSettings)
    gradio_app = gr.mount_gradio_app(
        app, demo, path="/", server_name="127.0.0.1", max_file_size=service.max_request_bytes, css=PAGE_CSS,
        allowed_paths=[str(EXAMPLES)], show_error=False,  # an unexpected error's text may hold server paths
    )
    # Gradio checks that a file handed to an event was uploaded by a user only once the Blocks
    # has "launched", which mount_gradio_app never marks: without this, any path on the disk
    # could be named in a FileData and read back.
    demo.has_launched = True
    return gradio_app
