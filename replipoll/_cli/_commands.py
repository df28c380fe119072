"""The commands but ``run``: demo, get, poll, download, fake-server, batch."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from .._client import DEFAULT_TIMEOUT
from .._errors import ConfigurationError, InvalidPredictionIdError
from .._models import Prediction
from .._speedups import loop_factory
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    api_options,
    ids_options,
    key_fingerprint,
    make_client,
    progress_option,
    progress_wanted,
    retry_notices,
    run_async,
    say,
    stderr,
    stdout,
)
from ._ui import prediction_view

__all__ = ["batch", "demo", "download", "fake_server", "get", "poll"]

F = TypeVar("F", bound=Callable[..., Any])


def read_ids(args: tuple[str, ...], from_file: str | None) -> list[str]:
    """The ids of a command, or a one-line error (exit 2) if there are none.

    Arguments, ``--from FILE`` and standard input are read as
    :func:`~replipoll._cli._ids.gather_ids` says: ids, page and API URLs,
    JSON arrays, JSON Lines, comments.

    Raises:
        ConfigurationError: ``--from FILE`` cannot be read, is not UTF-8, or
            holds something that is not an id; an argument is not an id, or
            is a file (``--from`` was forgotten).
        click.UsageError: no ids at all.
    """
    from ._ids import gather_ids, read_input

    try:
        wanted = gather_ids(args, from_file, read_input, os.path.isfile)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigurationError(
            f"cannot read ids from {from_file}: {reason}"
        ) from None
    if not wanted:
        raise click.UsageError(
            "no prediction ids given (arguments, --from FILE or '-')"
        )
    return wanted


@click.command()
@click.option(
    "--predictions",
    default=300,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="How many scripted predictions.",
)
@click.option(
    "--concurrency",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="Most requests in flight.",
)
@click.option(
    "--seed", default=7, show_default=True, help="Seeds durations, outcomes and faults."
)
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.01, 10),
    help="Multiply every scripted duration (0.2 = five times faster).",
)
@progress_option
def demo(
    predictions: int,
    concurrency: int,
    seed: int,
    time_scale: float,
    progress: bool | None,
) -> int:
    """Poll a few hundred predictions on a built-in fake server.

    Runs on loopback with no API key and no network: mixed durations and
    outcomes, unknown ids, a 429 storm, a slow gateway, 5xx and resets. Ends
    with a summary. Takes about 15 seconds.
    """
    from ._demo import print_demo, run_demo

    result = run_async(
        run_demo(
            predictions=predictions,
            seed=seed,
            scale=time_scale,
            concurrency=concurrency,
            console=stderr,
            progress=progress_wanted(progress),
        )
    )
    print_demo(result, stdout)
    return EXIT_OK


@click.command()
@click.argument("prediction_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@api_options
def get(
    prediction_id: str,
    as_json: bool,
    provider: str,
    base_url: str | None,
    api_key_env: str | None,
) -> int:
    """Show one prediction, whatever its status (exit 0 once fetched).

    ID may also be a page URL (https://replicate.com/p/ID) or an API URL.
    """
    from ._ids import id_from

    client = make_client(provider, base_url, api_key_env)
    try:
        pid = id_from(prediction_id.strip())
    except InvalidPredictionIdError as exc:
        raise ConfigurationError(str(exc)) from None

    async def fetch() -> Prediction:
        async with client:
            return await client.get(pid)

    with retry_notices():
        prediction = run_async(fetch())
    if as_json:
        from ._resultlog import dumps

        click.echo(dumps(prediction.to_json(), indent=2))  # NaN: null
        return EXIT_OK
    stdout.print(prediction_view(prediction))
    return EXIT_OK


_BATCH_ONLY = ("redis_prefix", "reclaim_after", "prefetch")


def redis_batch_options(func: F) -> F:
    """Add ``--redis``, ``--batch`` and the batch's tuning options to ``poll``."""
    func = click.option(
        "--prefetch",
        default=500,
        show_default=True,
        type=click.IntRange(1),
        metavar="N",
        help="With --batch: the most ids this worker takes at once (more are "
        "left to the others).",
    )(func)
    func = click.option(
        "--reclaim-after",
        default=30.0,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        help="With --batch: take over the ids of a worker silent this long (dead).",
    )(func)
    func = click.option(
        "--redis-prefix",
        default="replipoll:",
        show_default=True,
        metavar="PREFIX",
        help="With --batch: put before every Redis key of the batch.",
    )(func)
    func = click.option(
        "--batch",
        "batch_name",
        metavar="NAME",
        help="Be one worker of the batch NAME in --redis (see above).",
    )(func)
    return click.option(
        "--redis",
        "redis_url",
        metavar="URL",
        envvar="REPLIPOLL_REDIS_URL",
        help="The Redis of --batch: redis://[:PASSWORD@]HOST[:PORT][/DB] "
        "(the password is never shown) [env: REPLIPOLL_REDIS_URL].",
    )(func)


def _batch_wanted(
    ctx: click.Context, redis_url: str | None, batch_name: str | None
) -> bool:
    """Whether ``poll`` runs as a batch worker; a usage error if half asked.

    ``REPLIPOLL_REDIS_URL`` alone does not make a worker: only ``--batch``.
    """
    typed = ctx.get_parameter_source("redis_url") is ParameterSource.COMMANDLINE
    if batch_name is not None:
        if redis_url is None:
            raise click.UsageError(
                "--batch needs --redis URL (or REPLIPOLL_REDIS_URL): the Redis "
                "that holds the batch"
            )
        return True
    if typed:
        raise click.UsageError(
            "--redis needs --batch NAME: the batch this worker shares with the "
            "others (any name; every worker of it gives the same)"
        )
    for option in _BATCH_ONLY:
        if ctx.get_parameter_source(option) is ParameterSource.COMMANDLINE:
            flag = "--" + option.replace("_", "-")
            raise click.UsageError(
                f"{flag} is for batch workers: add --redis and --batch"
            )
    return False


@click.command()
@ids_options
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append one JSON line per finished id to this file; rerun with the "
    "same file to resume. Default: standard output. With --batch: the ids "
    "this worker finished.",
)
@click.option(
    "--concurrency",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="Most requests in flight.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Most requests per second (retries included); with --redis, for all "
    "the workers on this API key together.",
)
@click.option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds each id may take to finish (0: no limit).",
)
@click.option(
    "--sweep",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Follow the ids through pages of the list endpoint (100 a page) "
    "instead of a request each: where it measures cheaper (auto), whenever "
    "the server serves it (on), or never (off).",
)
@click.option(
    "--list-records",
    is_flag=True,
    help="End an id a sweep found finished with its list item (no logs) "
    "instead of one more request for its whole record: faster for big "
    "batches.",
)
@click.option("-q", "--quiet", is_flag=True, help="No summary line at the end.")
@redis_batch_options
@progress_option
@api_options
@click.pass_context
def poll(
    ctx: click.Context,
    ids: tuple[str, ...],
    from_file: str | None,
    out: Path | None,
    concurrency: int,
    rate: float | None,
    timeout: float,
    sweep: str,
    list_records: bool,
    quiet: bool,
    redis_url: str | None,
    batch_name: str | None,
    redis_prefix: str,
    reclaim_after: float,
    prefetch: int,
    progress: bool | None,
    provider: str,
    base_url: str | None,
    api_key_env: str | None,
) -> int:
    """Poll many predictions until each is finished.

    Ids come as arguments, from --from FILE, or from standard input ('-').
    Each finished id is written at once as one JSON line (to --out, else to
    standard output). With --out, a rerun skips ids already finished there,
    and killing the process at any moment loses no finished result.

    With --redis URL --batch NAME, this process is one worker of a batch
    shared through Redis: start any number, on any hosts, each with the same
    ids (loaded once) or none (it helps with the ids loaded). Each id's
    result is written once; a worker that dies has its ids taken over after
    --reclaim-after seconds. Every worker stays until the whole batch is
    done; `replipoll batch export` writes all the results.
    """
    if _batch_wanted(ctx, redis_url, batch_name):
        from ._redisbatch import poll_batch

        assert redis_url is not None
        assert batch_name is not None
        client = make_client(provider, base_url, api_key_env)
        wanted = read_ids(ids, from_file) if ids or from_file is not None else None
        return poll_batch(
            client=client,
            key_id=key_fingerprint(provider, api_key_env),
            url=redis_url,
            name=batch_name,
            prefix=redis_prefix,
            reclaim_after=reclaim_after,
            prefetch=prefetch,
            ids=wanted,
            from_file=from_file,
            out=out,
            concurrency=concurrency,
            rate=rate,
            timeout=timeout or None,
            sweep={"auto": None, "on": True, "off": False}[sweep],
            full_records=not list_records,
            quiet=quiet,
            show=progress_wanted(progress),
        )
    from ._ids import STDIN
    from ._poll import BatchRun, print_summary, run_batch
    from ._resultlog import ForeignFileError, ResultLog, same_file

    client = make_client(provider, base_url, api_key_env)
    if out is not None and from_file not in (None, STDIN) and same_file(out, from_file):
        raise ConfigurationError(
            f"--out {out} is the --from file: the results would be appended to "
            "the ids; choose another --out"
        )
    wanted = read_ids(ids, from_file)
    show = progress_wanted(progress)
    log = ResultLog(out) if out is not None else None
    if log is not None:
        try:
            contents = log.open()
        except BlockingIOError:
            raise ConfigurationError(
                f"{out} is in use by another replipoll process"
            ) from None
        except OSError as exc:
            raise ConfigurationError(
                f"cannot open {out}: {exc.strerror or exc}"
            ) from None
        except ForeignFileError as exc:  # left as it was
            raise ConfigurationError(
                f"{exc}; choose another --out, or delete it if it is yours"
            ) from None
        finished = contents.finished()
        done = {pid: contents.results[pid] for pid in wanted if pid in finished}
    else:
        done = {}
    run = BatchRun(wanted, done, log=log)
    if show and done:
        say(f"resuming: {len(done)} of {len(wanted)} ids already finished in {out}")

    async def main_task() -> None:
        async with client:
            await run_batch(
                run,
                client,
                concurrency=concurrency,
                rate=rate,
                timeout=timeout or None,
                console=stderr if show else None,
                sweep={"auto": None, "on": True, "off": False}[sweep],
                full_records=not list_records,
            )

    try:
        run_async(main_task())
    except Interrupted as stop:
        hint = (
            f"run the same command again to resume (finished ids are kept in {out})"
            if out is not None
            else "use --out FILE to make a batch resumable"
        )
        say(f"{run.summary_line(interrupted=True)}; {hint}")
        return stop.code
    finally:
        if log is not None:
            log.close()
    if show:
        print_summary(run, stdout if out is not None else stderr)
    elif not quiet and run.diagnosis is None:
        say(run.summary_line())
    if run.diagnosis is not None:
        # The batch failed for one reason: say it, and what to do, once.
        unsent = f"; {run.not_sent} ids not polled" if run.not_sent else ""
        rerun = "; fix it and run the same command again" if run.not_sent else ""
        say(f"error: {run.diagnosis.message}{unsent}{rerun}")
        return EXIT_FAILED if run.diagnosis.kind == "unreachable" else EXIT_USAGE
    return EXIT_OK if run.all_succeeded else EXIT_FAILED


@click.command()
@ids_options
@click.option(
    "--dest",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to save into; each prediction gets a subdirectory "
    "named after its id.",
)
@click.option("--overwrite", is_flag=True, help="Fetch files again even if present.")
@click.option(
    "--concurrency",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="Predictions handled at once, and files of each downloaded at once.",
)
@click.option(
    "--wait", is_flag=True, help="Poll each prediction until it is finished first."
)
@progress_option
@api_options
def download(
    ids: tuple[str, ...],
    from_file: str | None,
    dest: Path,
    overwrite: bool,
    concurrency: int,
    wait: bool,
    progress: bool | None,
    provider: str,
    base_url: str | None,
    api_key_env: str | None,
) -> int:
    """Save finished predictions' output files under DEST/ID/.

    Files already there are skipped; each file appears under its final name
    only once complete. Output URLs are fetched without the API key. On a
    terminal a progress bar counts predictions and files, and a table sums
    them up; otherwise each file is one line on standard output. Exit 1 if a
    prediction did not succeed or a file could not be saved.
    """
    from ._download import download_all

    client = make_client(provider, base_url, api_key_env)
    wanted = read_ids(ids, from_file)
    show = progress_wanted(progress)
    with retry_notices() if not show else contextlib.nullcontext():
        run = run_async(
            download_all(
                client,
                wanted,
                dest,
                overwrite=overwrite,
                concurrency=concurrency,
                wait=wait,
                out=stdout,
                err=stderr,
                progress=show,
            )
        )
    if show:
        stderr.print(run.table())
    else:
        say(run.summary_line())
    if run.diagnosis is not None:
        say(f"error: {run.diagnosis.message}; fix it and run the same command again")
        return EXIT_FAILED if run.diagnosis.kind == "unreachable" else EXIT_USAGE
    return EXIT_OK if run.ok else EXIT_FAILED


@click.command("fake-server")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to listen on."
)
@click.option(
    "--port",
    default=0,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0: a free one).",
)
@click.option(
    "--scenario",
    metavar="NAME",
    default="empty",
    show_default=True,
    help="Predictions to script at start: empty, demo or chaos "
    "(see replipoll.testing.SCENARIOS).",
)
@click.option(
    "--predictions",
    type=click.IntRange(0),
    metavar="N",
    help="How many the scenario creates.",
)
@click.option(
    "--ids-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the scenario's ids here, one a line.",
)
@click.option(
    "--api-key",
    default="test-key",
    show_default=True,
    help="The key the server accepts.",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seeds ids, scenarios and faults."
)
def fake_server(
    host: str,
    port: int,
    scenario: str,
    predictions: int | None,
    ids_file: Path | None,
    api_key: str,
    seed: int,
) -> int:
    """Run the fake Replicate-compatible server for your own tests.

    Serves /v1 (Replicate) and /replicate/v1 (DeerAPI, CometAPI) until
    Ctrl-C. Same as `python -m replipoll.testing`.
    """
    from ..testing import SCENARIOS, FakeReplicate, run_server

    if scenario not in SCENARIOS:
        known = ", ".join(SCENARIOS)
        raise click.BadParameter(
            f"{scenario!r}; known: {known}", param_hint="--scenario"
        )
    if scenario == "empty" and predictions:
        raise click.UsageError("--predictions needs --scenario demo or chaos")
    server = FakeReplicate(api_key, seed=seed)
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        runner.run(
            run_server(
                server,
                host=host,
                port=port,
                scenario=scenario,
                predictions=predictions,
                ids_file=ids_file,
            )
        )
    return EXIT_OK


def _batch_command(func: F) -> F:
    """Add the NAME argument, ``--redis`` and ``--redis-prefix``."""
    func = click.option(
        "--redis-prefix",
        default="replipoll:",
        show_default=True,
        metavar="PREFIX",
        help="What the batch's workers were given.",
    )(func)
    func = click.option(
        "--redis",
        "redis_url",
        metavar="URL",
        envvar="REPLIPOLL_REDIS_URL",
        required=True,
        help="The Redis that holds the batch (the password is never shown) "
        "[env: REPLIPOLL_REDIS_URL].",
    )(func)
    return click.argument("name", metavar="NAME")(func)


@click.group()
def batch() -> None:
    """A batch shared by `replipoll poll --redis URL --batch NAME` workers.

    See where it stands (status), write its results out (export), or remove
    it from Redis (delete).
    """


@batch.command("status")
@_batch_command
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def batch_status(name: str, redis_url: str, redis_prefix: str, as_json: bool) -> int:
    """Say how many ids of batch NAME are done, and how they ended."""
    from ._redisbatch import batch_status as show

    return show(redis_url, name, prefix=redis_prefix, as_json=as_json)


@batch.command("export")
@_batch_command
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append the results to this file (results of ids already in it are "
    "not written again). Default: standard output.",
)
def batch_export(name: str, redis_url: str, redis_prefix: str, out: Path | None) -> int:
    """Write every result of batch NAME as JSON Lines, each id once.

    The lines are those `replipoll poll --out` writes. A batch still running
    gives the results so far; export again into the same file to add the rest.
    """
    from ._redisbatch import export_batch

    return export_batch(redis_url, name, prefix=redis_prefix, out=out)


@batch.command("delete")
@_batch_command
def batch_delete(name: str, redis_url: str, redis_prefix: str) -> int:
    """Delete batch NAME from Redis: its ids, progress and results."""
    from ._redisbatch import delete_batch

    return delete_batch(redis_url, name, prefix=redis_prefix)
