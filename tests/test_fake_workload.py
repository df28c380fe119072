"""Seeded workloads and progress logs: what a realistic account looks like."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import attrs
import pytest
from replipoll.testing import (
    DEFAULT_MODELS,
    FakeClock,
    FakeReplicate,
    ModelProfile,
    Timeline,
    add_workload,
)
from replipoll.testing._progress import bar, interval, line_every, tail

KEY = "k-work"
#: One tqdm line: percent, bar, n/total, [elapsed<remaining, rate].
TQDM = re.compile(
    r"(?P<pct>[ \d]{3})%\|(?P<bar>.{10})\| (?P<n>\d+)/(?P<total>\d+) "
    r"\[(?P<elapsed>\d\d:\d\d)<(?P<remaining>\d\d:\d\d|\?), "
    r"(?P<rate>\?it/s|[ \d]\d\.\d\dit/s|[ \d]\d\.\d\ds/it)\]"
)


def seconds(text: str) -> int:
    minutes, secs = text.split(":")
    return int(minutes) * 60 + int(secs)


def parse(logs: str) -> list[re.Match[str]]:
    """The tqdm lines of *logs* (each must match in full)."""
    lines = [ln for ln in logs.split("\n") if "%|" in ln]
    matches = [TQDM.fullmatch(ln) for ln in lines]
    assert all(matches), lines
    return [m for m in matches if m is not None]


# -- progress logs ---------------------------------------------------------


def test_progress_lines_are_right_for_the_time_they_were_drawn() -> None:
    """50 steps over 10 s (0.5 s of tail): at 4.9 s, 25 steps, each line true."""
    clock = FakeClock()
    server = FakeReplicate(clock=clock)
    pid = server.add_prediction(
        queue=1, duration=10, logs="Using seed: 1234\n", progress_steps=50
    )
    step = 9.5 / 50  # the bar takes the run but its tail

    clock.now = 1 + 4.9
    logs = server.prediction_state(pid)["logs"]
    lines = parse(logs)

    assert logs.startswith("Using seed: 1234\n  0%|          | 0/50 [00:00<?, ?it/s]\n")
    assert logs.endswith("\n")
    assert [int(m["n"]) for m in lines] == list(range(26))  # 4.9 / 0.19 = 25.8
    for m in lines[1:]:
        n = int(m["n"])
        assert int(m["pct"]) == round(100 * n / 50)
        assert seconds(m["elapsed"]) == int(n * step)
        assert seconds(m["remaining"]) == int((50 - n) * step)
        assert m["rate"] == f"{1 / step:5.2f}it/s"
        assert m["bar"] == bar(n, 50)
    assert lines[25]["pct"] == " 50"
    assert lines[25]["bar"] == "█████     "


def test_the_bar_reaches_100_percent_before_the_run_ends() -> None:
    """After 100% comes the tail (post-processing), then the final status."""
    clock = FakeClock()
    server = FakeReplicate(clock=clock)
    pid = server.add_prediction(duration=10, progress_steps=50)

    clock.now = 9.6  # the bar ended at 9.5
    during_tail = server.prediction_state(pid)
    clock.now = 10
    done = server.prediction_state(pid)

    assert tail(10) == 0.5
    assert during_tail["status"] == "processing"
    assert parse(during_tail["logs"])[-1]["n"] == "50"
    assert parse(during_tail["logs"])[-1]["pct"] == "100"
    assert done["status"] == "succeeded"
    assert done["logs"] == during_tail["logs"]


def test_long_runs_print_every_few_steps_in_seconds_per_iteration() -> None:
    """500 steps of 1.2 s: a line every 10 steps, rates in s/it, H:MM:SS."""
    clock = FakeClock()
    server = FakeReplicate(clock=clock)
    pid = server.add_prediction(duration=600.5, progress_steps=500)
    clock.now = 601

    lines = parse(server.prediction_state(pid)["logs"])

    assert line_every(500) == 10
    assert [int(m["n"]) for m in lines] == list(range(0, 501, 10))
    assert lines[1]["rate"] == " 1.20s/it"
    assert interval(3725) == "1:02:05"


async def test_a_cancel_freezes_the_bar_and_no_start_means_no_logs() -> None:
    """Logs stop where the cancel came; a prediction still starting has none."""
    clock = FakeClock()
    async with (
        FakeReplicate(KEY, clock=clock) as server,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session,
    ):
        pid = server.add_prediction(queue=2, duration=10.5, progress_steps=10)
        assert server.prediction_state(pid)["logs"] == ""

        clock.now = 2 + 3.1  # steps of 1 s: 3 done
        url = f"{server.base_url()}/predictions/{pid}"
        async with session.post(f"{url}/cancel") as response:
            assert response.status == 200
        clock.now = 30
        async with session.get(url) as response:
            state = json.loads(await response.read())

    assert state["status"] == "canceled"
    assert [m["n"] for m in parse(state["logs"])] == ["0", "1", "2", "3"]
    assert server.timeline(pid) == Timeline(0.0, 2.0, 5.1, "canceled")


# -- workloads -------------------------------------------------------------


def snapshot(server: FakeReplicate, ids: list[str]) -> list[tuple[object, ...]]:
    return [
        (pid, server.timeline(pid), server.prediction_state(pid)["model"])
        for pid in ids
    ]


def test_a_workload_is_the_same_for_the_same_seed() -> None:
    """Ids, timings and models repeat for one seed and change with another."""

    def build(seed: int) -> list[tuple[object, ...]]:
        server = FakeReplicate(clock=FakeClock(), seed=5)
        return snapshot(server, add_workload(server, 300, seed=seed, over=60))

    assert build(1) == build(1)
    other = build(2)
    assert [t for _, t, _ in other] != [t for _, t, _ in build(1)]


def test_the_mix_follows_the_weights_and_the_run_times_their_medians() -> None:
    """60:30:10 of image, language and video models; medians 4 s, 12 s, 150 s."""
    server = FakeReplicate(clock=FakeClock(), seed=11)
    ids = add_workload(server, 6000)
    by_model: dict[str, list[Timeline]] = {}
    for pid in ids:
        model = server.prediction_state(pid)["model"]
        by_model.setdefault(model, []).append(server.timeline(pid))

    shares = {model: len(t) / len(ids) for model, t in by_model.items()}
    assert shares["acme/flux-fast"] == pytest.approx(0.6, abs=0.03)
    assert shares["acme/llm-chat"] == pytest.approx(0.3, abs=0.03)
    assert shares["acme/video-gen"] == pytest.approx(0.1, abs=0.02)
    for profile in DEFAULT_MODELS:
        runs = [
            t.completed - t.started
            for t in by_model[profile.model]
            if t.status == "succeeded" and t.started is not None
        ]
        assert statistics.median(runs) == pytest.approx(profile.median, rel=0.1)
    image_runs = [
        t.completed - t.started for t in by_model["acme/flux-fast"] if t.started
    ]
    assert max(image_runs) < 8  # a tight spread (failures stop early)


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_cold_starts_come_at_the_asked_rate(fraction: float) -> None:
    """A cold start waits 20-90 s in starting; the others 0.1-1 s."""
    server = FakeReplicate(clock=FakeClock(), seed=3)
    ids = add_workload(server, 4000, cold_start=fraction)
    queues = []
    for pid in ids:
        timeline = server.timeline(pid)
        assert timeline.started is not None
        queues.append(timeline.started - timeline.created)

    cold = [q for q in queues if q >= 20]
    assert len(cold) / len(ids) == pytest.approx(fraction, abs=0.025)
    assert all(q <= 90 for q in cold)
    assert all(0.1 <= q <= 1.0 for q in queues if q < 20)


def test_outputs_logs_and_inputs_look_like_each_model() -> None:
    """Images: files and a progress bar; the LLM: tokens, no bar."""
    clock = FakeClock()
    server = FakeReplicate(clock=clock, seed=2)
    ids = add_workload(server, 200)
    clock.now = 10_000
    states = [server.prediction_state(pid) for pid in ids]
    done = [s for s in states if s["status"] == "succeeded"]

    image = next(s for s in done if s["model"] == "acme/flux-fast")
    llm = next(s for s in done if s["model"] == "acme/llm-chat")
    assert image["output"] == [f"http://127.0.0.1/files/{image['id']}/out-0.bin"]
    assert image["logs"].startswith(f"Using seed: {image['input']['seed']}\n")
    assert parse(image["logs"])[-1]["pct"] == "100"
    assert "".join(llm["output"]) == DEFAULT_MODELS[1].text
    assert llm["logs"] == ""
    assert {s["status"] for s in states} <= {"succeeded", "failed"}


async def test_staggered_predictions_appear_over_http_as_they_are_created() -> None:
    """over=60: at 30 s about half are listed; the rest 404 until their time."""
    clock = FakeClock(1000.0)
    async with (
        FakeReplicate(KEY, clock=clock, seed=4) as server,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session,
    ):
        ids = add_workload(server, 150, over=60.0)
        created = [server.timeline(pid).created for pid in ids]
        assert created == sorted(created)
        assert created[0] >= 1000.0
        assert created[-1] < 1060.0

        clock.now = 1030.0
        visible = [pid for pid, at in zip(ids, created, strict=True) if at <= 1030]
        listed: list[str] = []
        url: str | None = f"{server.base_url()}/predictions"
        while url is not None:
            async with session.get(url) as response:
                body = json.loads(await response.read())
            listed.extend(r["id"] for r in body["results"])
            url = body["next"]
        hidden = ids[len(visible)]
        async with session.get(f"{server.base_url()}/predictions/{hidden}") as early:
            assert early.status == 404

        assert listed == visible[::-1]
        assert 50 < len(visible) < 100
        clock.now = 1060.0
        async with session.get(f"{server.base_url()}/predictions/{hidden}") as later:
            assert later.status == 200


def test_profiles_are_checked_and_can_be_mixed_freely() -> None:
    """A single custom profile; bad weights, chances and counts are refused."""
    only = ModelProfile("me/tiny", weight=1, median=0.5, sigma=0.0)
    server = FakeReplicate(clock=FakeClock())
    ids = add_workload(server, 20, models=[only], cold_start=0.0, start=5.0)
    timelines = [server.timeline(pid) for pid in ids]

    assert {t.created for t in timelines} == {5.0}
    assert {round(t.completed - t.started, 6) for t in timelines if t.started} == {0.5}
    assert Counter(server.prediction_state(p)["model"] for p in ids) == {"me/tiny": 20}
    with pytest.raises(ValueError, match="weight"):
        ModelProfile("me/x", weight=0, median=1, sigma=0)
    with pytest.raises(ValueError, match="failure_rate"):
        attrs.evolve(only, failure_rate=1.5)
    with pytest.raises(ValueError, match="model profile"):
        add_workload(server, 1, models=[])
    with pytest.raises(ValueError, match="cold_start"):
        add_workload(server, 1, cold_start=2)


@pytest.fixture
async def started() -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(KEY) as server:
        yield server


async def test_a_workload_on_the_real_clock_is_created_now(
    started: FakeReplicate,
) -> None:
    """No start, no spread: each prediction is created when it is added."""
    before = started.now()
    ids = add_workload(started, 50)
    after = started.now()
    created = [started.timeline(pid).created for pid in ids]
    assert before <= created[0] <= created[-1] <= after
