"""What every command shares: exit codes, consoles, options, the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Final, TypeVar

import attrs
import click
from rich.console import Console

from .._client import Client
from .._errors import ConfigurationError
from .._providers import PROVIDERS
from .._speedups import loop_factory

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "Interrupted",
    "api_options",
    "ids_options",
    "make_client",
    "printable",
    "progress_option",
    "progress_wanted",
    "retry_notices",
    "run_async",
    "say",
    "stderr",
    "stdout",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
EXIT_TERMINATED: Final = 143

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

stderr: Final = Console(stderr=True, highlight=False)
stdout: Final = Console(highlight=False)


class Interrupted(Exception):
    """The run was stopped by a signal; carries the exit status."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine``; Ctrl-C and SIGTERM cancel it cleanly.

    It runs on uvloop's event loop when the ``speed`` extra installed it
    (and ``REPLIPOLL_NO_SPEEDUPS`` is not set), else on asyncio's own.

    Raises:
        Interrupted: a signal stopped it (after the coroutine cleaned up).
    """

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        got: list[int] = []

        def stop(code: int) -> None:
            got.append(code)
            task.cancel()

        for sig, code in (
            (signal.SIGINT, EXIT_INTERRUPTED),
            (signal.SIGTERM, EXIT_TERMINATED),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop, code)
        try:
            return await coroutine
        except asyncio.CancelledError:
            if got:
                raise Interrupted(got[0]) from None
            raise

    try:
        # asyncio.run() without the loop_factory it only has from 3.12 on.
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(guarded())
    except KeyboardInterrupt:
        raise Interrupted(EXIT_INTERRUPTED) from None


def api_options(func: F) -> F:
    """Add ``--provider``, ``--base-url`` and ``--api-key-env``."""
    func = click.option(
        "--api-key-env",
        metavar="NAME",
        help="Read the API key from this environment variable instead of the "
        "provider's (REPLICATE_API_TOKEN, DEERAPI_KEY, COMETAPI_KEY).",
    )(func)
    func = click.option(
        "--base-url",
        metavar="URL",
        envvar="REPLIPOLL_BASE_URL",
        help="Any compatible base URL (overrides the provider's) "
        "[env: REPLIPOLL_BASE_URL].",
    )(func)
    return click.option(
        "--provider",
        type=click.Choice(sorted(PROVIDERS), case_sensitive=False),
        default="replicate",
        show_default=True,
        envvar="REPLIPOLL_PROVIDER",
        help="API to talk to: base URL, key variable and timeouts "
        "[env: REPLIPOLL_PROVIDER].",
    )(func)


def make_client(
    provider: str, base_url: str | None, api_key_env: str | None, **options: Any
) -> Client:
    """Build a client whose key comes from the environment (never echoed).

    ``options`` go to :class:`~replipoll.Client` (``create_rate_limit=``...).

    Raises:
        ConfigurationError: the key's variable is unset or empty, or the base
            URL is unusable.
    """
    preset = PROVIDERS[provider.lower()]
    name = api_key_env or preset.env_var
    key = os.environ.get(name, "").strip()
    if not key:
        hint = "" if api_key_env else " (or name another one with --api-key-env)"
        raise ConfigurationError(
            f"no API key: set the {name} environment variable{hint}"
        )
    # The client reads the key from that variable itself, so what it says
    # about a refused key names the variable to check.
    return Client(attrs.evolve(preset, env_var=name), base_url=base_url, **options)


def key_fingerprint(provider: str, api_key_env: str | None) -> str:
    """A short digest of the API key in use (never the key): names what it shares.

    Call after :func:`make_client` (which refuses a missing key).
    """
    name = api_key_env or PROVIDERS[provider.lower()].env_var
    key = os.environ.get(name, "").strip()
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def progress_wanted(flag: bool | None) -> bool:
    """Resolve ``--progress``/``--no-progress``; by default, is stderr a terminal."""
    return stderr.is_terminal if flag is None else flag


def progress_option(func: F) -> F:
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Show a live progress bar on standard error "
        "[default: when it is a terminal].",
    )(func)


def ids_options(func: F) -> F:
    func = click.option(
        "--from",
        "from_file",
        metavar="FILE",
        help="Read ids from FILE, one a line ('-' for standard input).",
    )(func)
    return click.argument("ids", nargs=-1, metavar="[ID]... | -")(func)


class _Say(logging.Handler):
    """Says each warning of replipoll's on standard error, one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        if not hasattr(record, "replipoll_diagnosis"):  # the command says those
            say(record.getMessage())


@contextlib.contextmanager
def retry_notices() -> Iterator[None]:
    """Say replipoll's warnings (retries above all) while the block runs.

    For commands that make one call at a time (``get``, ``download``): a
    client retrying a refused connection would otherwise be silent for
    seconds. Under ``-v`` the log shows them already, and nothing is added.
    """
    log = logging.getLogger("replipoll")
    if log.isEnabledFor(logging.INFO):
        yield
        return
    handler = _Say(logging.WARNING)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def say(message: str) -> None:
    """Print one line on standard error, never wrapped, never styled.

    The message goes through :func:`printable` (it may quote a server or a
    file), with newlines shown as ``\\n`` so that it stays one line.
    """
    click.echo(f"replipoll: {printable(message, one_line=True)}", err=True)


def _visible(code: int) -> str:
    return f"\\x{code:02x}"


#: C0 controls but tab and newline, DEL, and C1 controls (``\x1b``, ``\x9b``:
#: the starts of terminal escape sequences) are shown as ``\xNN``; a lone
#: surrogate (from a ``"\ud800"`` escape in JSON), which cannot be encoded at
#: all, becomes U+FFFD.
_PRINTABLE: Final[dict[int, str]] = {
    **{code: _visible(code) for code in range(0x20) if chr(code) not in "\t\n"},
    **{code: _visible(code) for code in range(0x7F, 0xA0)},
    **dict.fromkeys(range(0xD800, 0xE000), "\ufffd"),
}
_ONE_LINE: Final[dict[int, str]] = {**_PRINTABLE, ord("\n"): "\\n"}


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` made safe to show on a terminal, as plain text.

    Control characters (C0 but tab and newline, DEL, C1) are shown as
    ``\\xNN`` so that none can start an escape sequence; lone surrogates
    become U+FFFD, so the result always encodes as UTF-8. Everything else is
    kept. Pass the result to rich as a :class:`rich.text.Text` (or with
    ``markup=False``): this does not escape rich markup.

    Args:
        text: Any string, for instance from a server's answer.
        one_line: Also show newlines as ``\\n``.

    Example:
        >>> printable("ok\\x1b[2J\\tdone\\n\\ud800")
        'ok\\\\x1b[2J\\tdone\\n\ufffd'
        >>> printable("two\\nlines", one_line=True)
        'two\\\\nlines'
    """
    return text.translate(_ONE_LINE if one_line else _PRINTABLE)
