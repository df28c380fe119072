"""``replipoll run``: create predictions from the command line and wait for them.

The click command, and the batch's bookends: read the inputs, open and read
the results file, run (:mod:`replipoll._cli._runbatch`), sum up. One
prediction is :mod:`replipoll._cli._runone`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._client import DEFAULT_TIMEOUT, Client
from .._create import create_request
from .._errors import ConfigurationError
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    api_options,
    make_client,
    progress_option,
    progress_wanted,
    run_async,
    say,
    stderr,
    stdout,
)
from ._inputs import FORMS, InputError, input_digest, parse_inputs, parse_inputs_file

if TYPE_CHECKING:
    from ._resultlog import ResultLog
    from ._runbatch import RunBatch

__all__ = ["run"]


def _target(
    model: str | None, version: str | None, deployment: str | None
) -> tuple[dict[str, Any], str]:
    """``run_many``'s target arguments, and what they name (for digests, messages)."""
    given = [v for v in (model, version, deployment) if v is not None]
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of MODEL (owner/name, or owner/name:VERSION), "
            "--version ID and --deployment OWNER/NAME"
        )
    if model is not None:
        name = model
    elif version is not None:
        name = f"version {version}"
    else:
        name = f"deployment {deployment}"
    return {"model": model, "version": version, "deployment": deployment}, name


def _read_inputs(inputs_file: str, defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    from ._ids import STDIN, decode_lines, read_input

    source = "standard input" if inputs_file == STDIN else inputs_file
    try:
        data = read_input(inputs_file)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read inputs from {inputs_file}: {exc.strerror or exc}"
        ) from None
    try:
        return parse_inputs_file(decode_lines(data, source), source, defaults)
    except InputError as exc:
        raise ConfigurationError(str(exc)) from None


def _open_log(out: Path, inputs_file: str) -> ResultLog:
    """The results file, opened and locked; one-line errors for what is wrong."""
    from ._ids import STDIN
    from ._resultlog import ForeignFileError, ResultLog, same_file

    if inputs_file != STDIN and same_file(out, inputs_file):
        raise ConfigurationError(
            f"--out {out} is the --inputs file: choose another --out"
        )
    log = ResultLog(out)
    try:
        log.open()
    except BlockingIOError:
        raise ConfigurationError(
            f"{out} is in use by another replipoll process"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot open {out}: {exc.strerror or exc}") from None
    except ForeignFileError as exc:  # left as it was
        raise ConfigurationError(
            f"{exc}; choose another --out, or delete it if it is yours"
        ) from None
    return log


def _run_batch(
    client: Client,
    target: Mapping[str, Any],
    name: str,
    inputs: list[dict[str, Any]],
    *,
    inputs_file: str,
    out: Path | None,
    concurrency: int,
    rate: float | None,
    timeout: float | None,
    recreate_uncertain: bool,
    quiet: bool,
    show: bool,
) -> int:
    from ._journal import Journal, JournalError, ResumePlan, plan_resume, read_lines
    from ._runbatch import RunBatch, count, print_summary, run_inputs

    digests = [input_digest(name, one) for one in inputs]
    log = _open_log(out, inputs_file) if out is not None else None
    if log is not None:
        try:
            plan = plan_resume(
                read_lines(log.path),
                digests,
                str(out),
                recreate_uncertain=recreate_uncertain,
            )
        except JournalError as exc:
            log.close()
            raise ConfigurationError(str(exc)) from None
    else:
        plan = ResumePlan(list(range(len(inputs))), {}, {})
    batch = RunBatch(inputs, digests, plan, Journal(log))
    if show and (plan.done or plan.poll):
        say(
            f"resuming from {out}: {len(plan.done)} of {len(inputs)} inputs "
            f"finished, {len(plan.poll)} created earlier to poll, "
            f"{len(plan.create)} to create"
        )

    async def main_task() -> None:
        async with client:
            await run_inputs(
                batch,
                client,
                target,
                concurrency=concurrency,
                rate=rate,
                timeout=timeout,
                console=stderr if show else None,
            )

    try:
        run_async(main_task())
    except Interrupted as stop:
        batch.journal.close()
        _say_interrupted(batch, out)
        return stop.code
    finally:
        batch.journal.close()
    if show:
        print_summary(batch, stdout if out is not None else stderr)
    elif not quiet and batch.diagnosis is None:
        say(batch.summary_line())
    if batch.uncertain:
        where = f' ("sent_at" in {out})' if out is not None else ""
        say(
            f"{count(batch.uncertain, 'input')} uncertain: a create failed after "
            f"it may have reached the server, so a prediction may exist{where}; "
            "look for it, then run again with --recreate-uncertain to create "
            "anew what you did not find"
        )
    if batch.diagnosis is not None:
        say(
            f"error: {batch.diagnosis}; {count(batch.not_sent, 'input')} not "
            "created; fix it and run the same command again"
        )
        return EXIT_USAGE if batch.usage else EXIT_FAILED
    return EXIT_OK if batch.all_succeeded else EXIT_FAILED


def _say_interrupted(batch: RunBatch, out: Path | None) -> None:
    from ._runbatch import count

    flying = count(len(batch.in_flight), "create")
    if out is None:
        may = f"; {flying} in flight (a prediction may exist for each)"
        may = may if batch.in_flight else ""
        hint = "use --out FILE to make a batch resumable"
        say(f"{batch.summary_line(interrupted=True)}{may}; {hint}")
        return
    if batch.in_flight:
        say(
            f"{flying} in flight when interrupted: a prediction may exist for "
            "each, so a rerun leaves them alone (uncertain) unless "
            "--recreate-uncertain"
        )
    say(
        f"{batch.summary_line(interrupted=True)}; run the same command again to "
        f"resume (nothing recorded in {out} is created again)"
    )


@click.command()
@click.argument("model", required=False, metavar="[MODEL]")
@click.option(
    "-i",
    "--input",
    "input_args",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"An input: {FORMS}. Repeat for each.",
)
@click.option("--version", "version_id", metavar="ID", help="Run this version.")
@click.option("--deployment", metavar="OWNER/NAME", help="Run this deployment.")
@click.option(
    "--wait",
    "sync_wait",
    type=click.IntRange(1, 60),
    metavar="N",
    help="Sync mode: the server holds the create's answer up to N seconds "
    "until the prediction is done.",
)
@click.option(
    "--cancel-after",
    metavar="DURATION",
    help="A deadline the server keeps (90s, 5m, 1h30m): not started by then, "
    "the prediction ends aborted; running, canceled.",
)
@click.option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds each prediction may take to finish (0: no limit).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole record.")
@click.option(
    "--save",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Save the output files under DIR/ID/ and print their paths.",
)
@click.option(
    "--inputs",
    "inputs_file",
    metavar="FILE",
    help="Batch: one JSON object of inputs a line ('-' for standard input); "
    "-i adds to every line.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Batch: append each input's lines to this file (fsynced); rerun with "
    "the same file to resume without creating anything twice. Default: "
    "outcomes to standard output.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    metavar="N",
    help="Batch: most requests in flight, creates included [default: 32].",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="R",
    help="Batch: most poll requests per second.",
)
@click.option(
    "--create-rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="R",
    help="Batch: most creates per second (Replicate allows 10).",
)
@click.option(
    "--recreate-uncertain",
    is_flag=True,
    help="Batch: create again the inputs whose create may have made a "
    "prediction (which may then exist twice).",
)
@click.option("-q", "--quiet", is_flag=True, help="Batch: no summary line.")
@progress_option
@api_options
def run(
    model: str | None,
    input_args: tuple[str, ...],
    version_id: str | None,
    deployment: str | None,
    sync_wait: int | None,
    cancel_after: str | None,
    timeout: float,
    as_json: bool,
    save: Path | None,
    inputs_file: str | None,
    out: Path | None,
    concurrency: int | None,
    rate: float | None,
    create_rate: float | None,
    recreate_uncertain: bool,
    quiet: bool,
    progress: bool | None,
    provider: str,
    base_url: str | None,
    api_key_env: str | None,
) -> int:
    """Create predictions and wait for them; print the output.

    One prediction: `replipoll run owner/name -i prompt="a cat" -i steps:=30`
    prints its output (a list one item a line; --json the record; --save DIR
    the saved files). A batch: `--inputs FILE` (one JSON object a line) with
    `--out results.jsonl`, which a rerun resumes: finished inputs are
    skipped, created ones polled, none created twice. Exit 0 if every
    prediction succeeded, 1 if not (or a create may have made one), 2 for
    bad usage.
    """
    target, name = _target(model, version_id, deployment)
    target.update(cancel_after=cancel_after, wait=sync_wait)
    try:
        defaults = parse_inputs(input_args)
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    try:  # checked here: nothing is sent for a bad one
        create_request(**target, input={})
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    show = progress_wanted(progress)
    options = {} if create_rate is None else {"create_rate_limit": create_rate}
    if inputs_file is None:
        batch_only = {
            "--out": out,
            "--concurrency": concurrency,
            "--rate": rate,
            "--create-rate": create_rate,
            "--recreate-uncertain": recreate_uncertain or None,
        }
        given = [option for option, value in batch_only.items() if value is not None]
        if given:
            raise click.UsageError(f"{given[0]} is for a batch: add --inputs FILE")
        from ._runone import run_one

        return run_one(
            make_client(provider, base_url, api_key_env, **options),
            target,
            defaults,
            name=name,
            timeout=timeout or None,
            show=show,
            as_json=as_json,
            save=save,
        )
    if as_json or save is not None:
        raise click.UsageError(
            "--json and --save are for one prediction: with --inputs each "
            "outcome is a JSON line (replipoll download saves the files)"
        )
    client = make_client(provider, base_url, api_key_env, **options)
    return _run_batch(
        client,
        target,
        name,
        _read_inputs(inputs_file, defaults),
        inputs_file=inputs_file,
        out=out,
        concurrency=concurrency or 32,
        rate=rate,
        timeout=timeout or None,
        recreate_uncertain=recreate_uncertain,
        quiet=quiet,
        show=show,
    )
