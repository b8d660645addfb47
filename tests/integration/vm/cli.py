"""The command-line skeleton of the test harnesses (``python -m tests.integration.vm``
and ``python -m tests.integration.peers``): argparse tree, ``-v``, logging set-up.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable


def parse_args(
    argv: list[str] | None,
    prog: str,
    description: str,
    epilog: str,
    add_commands: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None],
) -> argparse.Namespace:
    """Parse ``argv`` (``-v`` then a required subcommand that ``add_commands`` adds,
    its name in ``cmd``) and set up logging to stderr (DEBUG with ``-v``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    return args


def print_missing(missing: list[str]) -> None:
    """Tell stderr which prerequisites are missing (the caller exits 2)."""
    print("missing prerequisites:\n  " + "\n  ".join(missing), file=sys.stderr)
