"""What every command-line entry point shares: errors become one line on stderr and an exit code."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable

from .errors import HagviewError

EXIT_OK = 0
EXIT_FAILURE = 1     # the work ran but something failed (e.g. one of several inputs)
EXIT_USAGE = 2       # bad arguments, config or input data
EXIT_INTERRUPTED = 130


def run_cli(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate `main(argv=None) -> int`: HagviewError and OS errors print `prog: error: message`.

    Unexpected exceptions also print one line (with the exception type); set HAGVIEW_DEBUG=1
    for the traceback.
    """
    import os

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> int:
            logging.basicConfig(level=logging.INFO, format=f"{prog}: %(message)s")
            try:
                code = main(*args, **kwargs)
                return EXIT_OK if code is None else int(code)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
            except HagviewError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            except OSError as exc:
                where = f"{exc.filename}: " if exc.filename else ""
                print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
                return EXIT_USAGE
            except Exception as exc:  # last resort: still one line, never a bare traceback
                if os.environ.get("HAGVIEW_DEBUG"):
                    raise
                print(f"{prog}: internal error: {type(exc).__name__}: {exc} "
                      f"(set HAGVIEW_DEBUG=1 for the traceback)", file=sys.stderr)
                return EXIT_FAILURE
        return wrapper
    return decorate
