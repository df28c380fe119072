"""The command line of the fake server: ``python -m replipoll.testing --help``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO, get_args

from ._http import PREFIXES, ErrorStyle
from ._scenarios import SCENARIOS, load_scenario
from ._server import DEFAULT_API_KEY, FakeReplicate


async def run_server(
    server: FakeReplicate,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    scenario: str = "empty",
    predictions: int | None = None,
    ids_file: Path | None = None,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Load *scenario* into *server*, serve until *stop* (or SIGINT/SIGTERM).

    Once listening, prints a line with the base URLs, then the API key if it
    is the default test key, then the scenario's ids one a line (or writes
    them to *ids_file* first, and says so).

    Args:
        server: The server to run (not started yet).
        host: Interface to listen on.
        port: Port; 0 picks a free one.
        scenario: A name from :data:`SCENARIOS`.
        predictions: How many predictions the scenario creates.
        ids_file: Where to write the ids instead of *out*.
        out: Where to print (default: standard output).
        stop: Set it to stop; by default SIGINT and SIGTERM do.
    """
    out = sys.stdout if out is None else out
    ids = load_scenario(server, scenario, predictions)
    if ids_file is not None:  # before the banner, which tells that all is ready
        text = "".join(f"{pid}\n" for pid in ids)
        await asyncio.to_thread(ids_file.write_text, text)
    await server.start(host, port)
    try:
        others = ", ".join(PREFIXES[1:])
        print(f"replipoll fake server on {server.base_url()} (also {others})", file=out)
        if server.api_key == DEFAULT_API_KEY:
            print(f"api key: {server.api_key}", file=out)
        if ids_file is not None:
            print(f"{len(ids)} prediction ids written to {ids_file}", file=out)
        elif ids:
            print(f"{len(ids)} predictions ({scenario}):", *ids, sep="\n", file=out)
        out.flush()
        await _wait(stop)
    finally:
        await server.close()


async def _wait(stop: asyncio.Event | None) -> None:
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in signals:
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(sig)
    else:
        await stop.wait()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m replipoll.testing",
        description="Serve a fake Replicate-compatible API on this machine.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--api-key", default=DEFAULT_API_KEY, help="key to accept (default: test-key)"
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="empty")
    parser.add_argument(
        "--predictions", type=int, metavar="N", help="how many the scenario creates"
    )
    parser.add_argument("--ids-file", type=Path, help="write the ids here")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--error-style", choices=get_args(ErrorStyle), default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.predictions is not None and args.predictions < 0:
        parser.error("--predictions must be >= 0")
    if args.scenario == "empty" and args.predictions:
        parser.error("--predictions needs --scenario demo or chaos")
    server = FakeReplicate(args.api_key, seed=args.seed, error_style=args.error_style)
    coroutine = run_server(
        server,
        host=args.host,
        port=args.port,
        scenario=args.scenario,
        predictions=args.predictions,
        ids_file=args.ids_file,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coroutine)
    return 0
