"""`cryo-ingest` and `python -m cryo_ingest`.

Nothing is imported until it runs: a spawned worker process imports the main module again, and
the CLI's imports (pydantic's models, rich) would cost every worker about 0.25 s of CPU for nothing.
"""

import sys


def entry() -> None:
    from .cli import main

    sys.exit(main())


if __name__ == "__main__":
    entry()
