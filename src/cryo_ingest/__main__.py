"""`cryo-ingest` and `python -m cryo_ingest`.

Nothing is imported until it runs: a spawned worker process imports the main module again, and
the CLI's imports (pydantic's models, rich) would cost every worker about 0.25 s of CPU for nothing.
"""

import os
import sys


def entry() -> None:
    args = sys.argv[1:]
    from .pipeline.workers import SCHEDULER_ENV, prestart

    elsewhere = os.environ.get(SCHEDULER_ENV) or any(a.startswith("--scheduler") for a in args)
    if args[:1] == ["backfill"] and not {"-h", "--help"} & set(args) and not elsewhere:
        prestart()  # its worker starts up while the CLI is imported (workers.py)
    from .cli import main

    sys.exit(main())


if __name__ == "__main__":
    entry()
