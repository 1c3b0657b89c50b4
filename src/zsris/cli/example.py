"""`zsris example-image`: the path of the bundled example image, wherever zsris is installed."""
from __future__ import annotations

import argparse


def cmd_example_image(args: argparse.Namespace) -> int:
    from .. import EXAMPLE_IMAGE

    print(EXAMPLE_IMAGE)
    return 0


def register(commands) -> None:
    example = commands.add_parser(
        "example-image", help="print the path of the bundled example image",
        description="Print the path of the example image that ships with zsris (inside the installed package), "
                    'for first commands: zsris segment "$(zsris example-image)" "the blue square" -o out/',
    )
    example.set_defaults(run=cmd_example_image)
