"""The ``replipoll`` command line (``pip install 'replipoll[cli]'``).

Commands: ``demo``, ``get``, ``poll``, ``run``, ``download``, ``fake-server``; see
``docs/cli.md``. Exit codes: 0 everything succeeded; 1 some prediction
failed, was canceled or aborted, or a request failed; 2 bad usage or
configuration (nothing was polled); 130 interrupted by Ctrl-C (143 by
SIGTERM). Errors are one line on standard error, never a traceback (set
``REPLIPOLL_DEBUG=1`` for one). The API key is read from the environment and
never printed.
"""

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import click
from rich.logging import RichHandler

from .._errors import ConfigurationError, ReplipollError
from .._speedups import speedups
from ._commands import batch, demo, download, fake_server, get, poll
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    say,
    stderr,
)
from ._run import run

__all__ = ["cli", "main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(
    package_name="replipoll",
    prog_name="replipoll",
    message=f"%(prog)s, version %(version)s\n{speedups()}",
)
@click.option("-v", "--verbose", is_flag=True, help="Log retries and other warnings.")
def cli(verbose: bool) -> None:
    """Poll Replicate-style predictions: Replicate, DeerAPI, CometAPI, any gateway.

    Start with `replipoll demo` (no API key, no network). Exit codes: 0 all
    succeeded, 1 some failed or erred, 2 usage or configuration error,
    130 interrupted.
    """
    log = logging.getLogger("replipoll")
    log.handlers.clear()
    if verbose:
        log.addHandler(RichHandler(console=stderr, show_path=False))
        log.setLevel(logging.INFO)
    else:
        log.addHandler(logging.NullHandler())  # no retry chatter by default
    log.propagate = False


for command in (demo, get, poll, run, download, fake_server, batch):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (for ``sys.exit``).

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).
    """
    with _logging_restored():
        return _main(argv)


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    # ``cli`` configures the "replipoll" logger for a terminal; put it back
    # afterwards, so that calling main() from Python leaves no trace.
    log = logging.getLogger("replipoll")
    handlers, propagate, level = log.handlers[:], log.propagate, log.level
    try:
        yield
    finally:
        log.handlers[:] = handlers
        log.propagate = propagate
        log.setLevel(level)


def _main(argv: Sequence[str] | None) -> int:
    try:
        code = cli.main(args=argv, prog_name="replipoll", standalone_mode=False)
    except click.exceptions.Abort:
        say("interrupted")
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Interrupted as stop:
        say("interrupted")
        return stop.code
    except ConfigurationError as exc:
        return _fail(exc, EXIT_USAGE)
    except ReplipollError as exc:
        return _fail(exc, EXIT_FAILED)
    except OSError as exc:  # e.g. the results file's disk is full
        return _fail(exc, EXIT_FAILED)
    except Exception as exc:  # a bug: one line, unless asked for the traceback
        return _fail(
            exc, EXIT_FAILED, prefix=f"internal error ({type(exc).__name__}): "
        )
    return code if isinstance(code, int) else EXIT_OK


def _fail(exc: BaseException, code: int, prefix: str = "") -> int:
    if os.environ.get("REPLIPOLL_DEBUG"):
        raise exc
    say(f"error: {prefix}{exc}")
    return code
