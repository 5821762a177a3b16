"""What every command-line entry point shares: errors become one line on stderr and an exit code."""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable

from .errors import ConfigError, HagviewError, describe_error

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
            except (HagviewError, OSError) as exc:
                print(f"{prog}: error: {describe_error(exc)}", file=sys.stderr)
                return EXIT_USAGE
            except Exception as exc:  # last resort: still one line, never a bare traceback
                if os.environ.get("HAGVIEW_DEBUG"):
                    raise
                print(f"{prog}: internal error: {describe_error(exc)} "
                      f"(set HAGVIEW_DEBUG=1 for the traceback)", file=sys.stderr)
                return EXIT_FAILURE
        return wrapper
    return decorate


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError, so bad arguments are one line and exit code 2 (run_cli)."""

    def error(self, message: str):
        raise ConfigError(message)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options `hagview` and `hagview-annotate` share: run config, models and backend."""
    from .engines import BACKEND_CHOICES

    parser.add_argument("--config", metavar="FILE", help="run config YAML (configs/run/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one run config key, e.g. --set detect.score_threshold=0.5 (repeatable)")
    parser.add_argument("--sizer", metavar="BUNDLE", help="sizer bundle (default: the committed demo bundle)")
    parser.add_argument("--detector", metavar="BUNDLE", help="detector bundle (default: the committed demo bundle)")
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, metavar="NAME",
                        help=f"inference backend: {', '.join(BACKEND_CHOICES)} (default: auto)")
