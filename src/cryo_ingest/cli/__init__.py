"""`cryo-ingest`: a thin layer over the Python API. Exit 0 success, 1 operational failure, 2 invalid input.

A module a command group: `backfill` (backfill, demo), `dag` (the operator's request, run, status),
`archive` (ls, verify, gc, catalog sync); `parser` has the arguments, `output` what is printed. Each command
imports what only it needs: start-up is a backfill's fixed cost.
"""

from __future__ import annotations

import logging
import re
import sys

from rich.logging import RichHandler

from ..errors import IngestError, RedactingFilter, register_secret_url
from . import archive, backfill, dag
from .output import console
from .parser import parser

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    # argparse echoes bad arguments (`--rpc A B`, a URL given to --chain-id) before any config sees them.
    for token in sys.argv[1:] if argv is None else argv:
        if re.match(r"(https?|rediss?|postgres(ql)?(\+\w+)?|rest\+https?)://", token.split("=", 1)[-1], re.I):
            register_secret_url(token.split("=", 1)[-1])
    args = parser().parse_args(argv)
    # A terminal gets rich's layout; a pipe or a log collector one line per record, unpadded.
    handler: logging.Handler = (
        RichHandler(console=console, show_path=False, show_time=False) if console.is_terminal else logging.StreamHandler()
    )
    if not console.is_terminal:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    logging.getLogger("pyiceberg").setLevel(logging.WARNING)  # one line per FileIO it opens
    commands = {
        "backfill": backfill.cmd_backfill,
        "demo": backfill.cmd_demo,
        "ls": archive.cmd_ls,
        "request": dag.cmd_request,
        "run": dag.cmd_run,
        "status": dag.cmd_status,
        "verify": archive.cmd_verify,
        "gc": archive.cmd_gc,
        "catalog": archive.cmd_catalog_sync,  # its one subcommand, sync
    }
    try:
        return commands[args.command](args)
    except IngestError as err:
        console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
