"""`zsris serve`: the Gradio page and the JSON API over one loaded segmenter."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import ZsrisError
from ..proposals import PROPOSAL_REGISTRY
from .flags import add_model_flags, build_segmenters, config_from_args, positive_int

DEFAULT_PORT = 7860


def cmd_serve(args: argparse.Namespace) -> int:
    from ..extras import require_extra

    require_extra("serve", "zsris serve")  # before the models load: say it at once
    import uvicorn

    from ..service import SegmentationService, create_app

    if args.max_request_mb < 1 or args.decode_slots < 1 or args.file_ttl < 1:
        raise ZsrisError("--max-request-mb, --decode-slots and --file-ttl must be at least 1")
    segmenters = build_segmenters(args, text_cache_size=args.text_cache)
    first = next(iter(segmenters.values()))
    service = SegmentationService(first, args.max_request_mb * 1024 * 1024, decode_slots=args.decode_slots,
                                  file_ttl=args.file_ttl, methods=segmenters,
                                  generators=offered_generators(args, first.device))
    app = create_app(service)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"zsris: serving on {args.host}: reachable from other machines", flush=True)
    print(f"zsris: open http://{args.host}:{args.port}/ (API docs at /docs, schema at /openapi.json)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")  # the app's lifespan cleans up
    return 0


def offered_generators(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """The generators of --offer-proposals beside --proposals, each built once from the same
    flags (its own options: --sam-checkpoint ...; the same --max-proposals)."""
    from ..proposals import create_proposals

    names = [n.strip() for n in (args.offer_proposals or "").split(",") if n.strip() and n.strip() != args.proposals]
    unknown = [n for n in names if n not in PROPOSAL_REGISTRY]
    if unknown:
        raise ZsrisError(f"--offer-proposals: no generator {', '.join(unknown)}; there are "
                         f"{', '.join(PROPOSAL_REGISTRY)}")
    generators = {}
    for name in dict.fromkeys(names):
        spec = config_from_args(argparse.Namespace(**{**vars(args), "proposals": name})).proposals
        if spec.name != name:  # a preset fixes its generator
            raise ZsrisError(f"--offer-proposals {name}: --preset {args.preset} uses {spec.name} proposals only")
        generators[name] = create_proposals(spec, device)
    return generators


def register(commands) -> None:
    from ..config import DEFAULT_TEXT_CACHE
    from ..service import DEFAULT_DECODE_SLOTS, DEFAULT_FILE_TTL, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_SERVE_MAX_PIXELS

    serve = commands.add_parser(
        "serve", help="web demo and JSON HTTP API (needs the 'serve' extra)",
        description="A Gradio page at / and a JSON API at /api/segment over one loaded model. "
                    "Needs the 'serve' extra: pip install 'zsris[serve]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example:\n  zsris serve --port {DEFAULT_PORT}\n  curl -F image=@photo.jpg "
               f"-F expressions='the man on the left' http://127.0.0.1:{DEFAULT_PORT}/api/segment",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    serve.add_argument("--max-request-mb", type=int, default=DEFAULT_MAX_REQUEST_BYTES // (1024 * 1024),
                       help="largest accepted request or page upload (default: %(default)s MB)")
    serve.add_argument("--decode-slots", type=int, default=DEFAULT_DECODE_SLOTS,
                       help="images decoded or in work at once; further requests wait (default: %(default)s)")
    serve.add_argument("--file-ttl", type=int, default=DEFAULT_FILE_TTL, metavar="SECONDS",
                       help="the page's uploads and downloads are deleted this long after they were written "
                            "(default: %(default)s)")
    serve.add_argument("--text-cache", type=positive_int, default=DEFAULT_TEXT_CACHE, metavar="N",
                       help="parsed expressions and text features kept for reuse, least recently used out first: "
                            "what new sentences can make the server hold (default: %(default)s)")
    serve.add_argument("--offer-proposals", default=None, metavar="NAME[,NAME...]",
                       help="further proposal generators a request may choose (the page's Proposals menu, the "
                            "API's proposals field), each loaded at start with its flags below; --proposals is "
                            "the default")
    add_model_flags(serve)
    serve.set_defaults(run=cmd_serve, max_pixels=DEFAULT_SERVE_MAX_PIXELS)  # a server's own, lower limit
