"""The `zsris` command line: segment, batch, eval, calibrate, proposals, proposals-eval, serve, weights,
example-image.

One module per subcommand, each with a ``register(commands)``; shared flags and the flags ->
SegmenterConfig step live in :mod:`zsris.cli.flags`. Heavy imports happen inside the commands.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import threading
import warnings
from typing import Iterator, Optional, Sequence

from ..errors import ZsrisError, ZsrisWarning
from ..methods.registry import load_plugins as load_method_plugins
from ..proposals.registry import load_plugins as load_proposal_plugins
from . import batch, evaluate, example, proposals, segment, serve, weights
from .flags import EPILOG

SUBCOMMANDS = (segment, batch, evaluate, proposals, serve, weights, example)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsris",
        description="Zero-shot referring image segmentation with global-local CLIP features.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    load_proposal_plugins()  # the generators and methods installed packages declare, offered by the flags
    load_method_plugins()
    for module in SUBCOMMANDS:
        module.register(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zsris")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message)
    print(text if text.startswith("zsris:") else f"zsris: warning: {text}", file=sys.stderr)


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt as usual and also sets the event yielded, which the jobs
    hand to their engine (it checks it between images), for the rare Ctrl-C that lands inside a
    finaliser and is lost there. Python calls signal handlers only in the main thread."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def interrupt(signum, frame) -> None:
        stop.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    warnings.showwarning = _one_line_warnings
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("always", category=ZsrisWarning)  # zsris's own, wherever they are raised from
    parser = make_parser()  # after the warnings' format: a broken plug-in is said in one line
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with _interrupt_flag() as stop:
            args.stop = stop
            return args.run(args)
    except ZsrisError as error:
        print(f"zsris: error: {error}", file=sys.stderr)
        return 1
    except sqlite3.Error as error:  # the store of results: a full disk, a broken file ...
        print(f"zsris: error: the results store failed ({error}); every result committed before is kept: "
              f"run the same command again to go on", file=sys.stderr)
        return 1
    except OSError as error:  # an output folder that cannot be written, a full disk ...
        print(f"zsris: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupted:  # a job's says what it saved and how to go on
        print(str(interrupted) or "zsris: interrupted", file=sys.stderr)
        return 130
