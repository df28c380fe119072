"""A seeded, realistic mix of predictions: models, run times, cold starts."""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from typing import Any, Final

import attrs

from ._records import MISSING, Prediction
from ._server import FakeReplicate

#: Different ``seed`` inputs a workload's predictions draw from: enough to
#: look varied, few enough that their inputs and log lines are shared objects
#: (400,000 predictions must not mean 400,000 input dicts).
_SEEDS: Final = 1000


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, not {value!r}")


@attrs.frozen
class ModelProfile:
    """One kind of model in a workload: its name, its share, its run times.

    Run times (``processing``) are lognormal: *median* seconds, spread
    *sigma* (0.1: nearly all within ±25%; 0.8: from a quarter to four times
    the median).

    Attributes:
        model: ``owner/name``.
        weight: Share of the mix, relative to the other profiles' weights.
        median: Median seconds of processing.
        sigma: Sigma of the run time's logarithm.
        progress_steps: Steps of the tqdm progress bar it prints while it
            runs (see :meth:`FakeReplicate.add_prediction`); ``None``: none.
        logs: What it prints when it starts; ``{seed}`` becomes its input's
            ``seed``.
        failure_rate: Chance that a prediction fails (after a random part
            of its run time), from 0 to 1.
        n_files: Output files of a success (0: the output is *text*).
        text: The output of a success when *n_files* is 0, served as a list
            of tokens as language models on Replicate answer.
        prompt: The ``prompt`` of each prediction's input.
    """

    model: str
    weight: float = attrs.field(validator=_positive)
    median: float = attrs.field(validator=_positive)
    sigma: float = attrs.field(validator=attrs.validators.ge(0.0))
    progress_steps: int | None = None
    logs: str = ""
    failure_rate: float = attrs.field(
        default=0.0, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    n_files: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    text: str = "Sure! Here is a short answer."
    prompt: str = "a photo of an astronaut riding a horse"


#: Image, language and video models in the proportions 60:30:10.
DEFAULT_MODELS: Final = (
    ModelProfile(
        "acme/flux-fast",
        weight=6,
        median=4.0,
        sigma=0.1,
        progress_steps=28,
        logs="Using seed: {seed}\n",
        failure_rate=0.01,
    ),
    ModelProfile(
        "acme/llm-chat",
        weight=3,
        median=12.0,
        sigma=0.8,
        failure_rate=0.01,
        n_files=0,
        prompt="Write a haiku about polling.",
    ),
    ModelProfile(
        "acme/video-gen",
        weight=1,
        median=150.0,
        sigma=0.3,
        progress_steps=50,
        logs="Using seed: {seed}\nLoading video pipeline...\n",
        failure_rate=0.02,
        prompt="a drone shot over a mountain lake at dawn",
    ),
)


def add_workload(
    server: FakeReplicate,
    n: int,
    *,
    seed: int | None = None,
    models: Sequence[ModelProfile] = DEFAULT_MODELS,
    cold_start: float = 0.2,
    cold_start_time: tuple[float, float] = (20.0, 90.0),
    queue_time: tuple[float, float] = (0.1, 1.0),
    start: float | None = None,
    over: float = 0.0,
) -> list[str]:
    """Script *n* predictions of a realistic mix into *server*; return their ids.

    Each picks a profile of *models* by weight, a run time from its
    distribution, and a queue: usually short (*queue_time*, uniform), or on
    a cold start (chance *cold_start*) a long *cold_start_time*.  The same
    *seed*, server seed and call order give the same predictions (ids
    included); :meth:`FakeReplicate.timeline` tells when each completes.

    Args:
        server: Where to add them (started or not).
        n: How many.
        seed: Seed of the draws; default: the server's *seed*.
        models: The profiles to mix.
        cold_start: Chance of a cold start, from 0 to 1.
        cold_start_time: Range of a cold start's seconds in ``starting``.
        queue_time: Range of the usual seconds in ``starting``.
        start: Creation time of the first, in seconds of the server's
            clock; default: now.
        over: Spread the creation times at random over this many seconds
            from *start* (arrivals of a constant average rate), ids in
            creation order; predictions created later are unknown to the
            API until then.  0: all created at *start* (or, with no
            *start*, each now).

    Raises:
        ValueError: No models, a negative count or time, or a chance
            outside 0..1.

    Example:
        >>> from replipoll.testing import FakeClock, FakeReplicate
        >>> server = FakeReplicate(clock=FakeClock(), seed=7)
        >>> ids = add_workload(server, 1000, over=600.0)
        >>> timelines = [server.timeline(pid) for pid in ids]
        >>> max(t.created for t in timelines) < 600.0
        True
        >>> sorted({server.prediction_state(pid)["model"] for pid in ids})
        ['acme/flux-fast', 'acme/llm-chat', 'acme/video-gen']
    """
    if not models:
        raise ValueError("a workload needs at least one model profile")
    if n < 0 or over < 0 or not 0 <= cold_start <= 1:
        raise ValueError("n and over must be >= 0, cold_start within 0..1")
    if min(*cold_start_time, *queue_time) < 0:
        raise ValueError("queue and cold start times must be >= 0")
    rng = random.Random(f"workload:{server.seed if seed is None else seed}")
    cumulative = list(itertools.accumulate(profile.weight for profile in models))
    total = cumulative[-1]
    if start is None and over:
        start = server.now()
    if over:
        assert start is not None
        times: Sequence[float | None] = sorted(
            start + rng.random() * over for _ in range(n)
        )
    else:
        times = [start] * n
    shared = _Shared()
    ids = []
    for created in times:
        profile = models[bisect.bisect_right(cumulative, rng.random() * total)]
        duration = rng.lognormvariate(math.log(profile.median), profile.sigma)
        if rng.random() < cold_start:
            queue = rng.uniform(*cold_start_time)
        else:
            queue = rng.uniform(*queue_time)
        outcome = "succeeded"
        if rng.random() < profile.failure_rate:
            outcome = "failed"
            duration *= rng.uniform(0.05, 1.0)
        value = rng.randrange(_SEEDS)
        # Straight to the server's store, past add_prediction: it would copy
        # the shared input dict of every prediction.
        p = Prediction(
            server._new_id(),
            server.now() if created is None else created,
            round(queue, 6),
            round(duration, 6),
            outcome,
            shared.output(profile),
            profile.n_files,
            1024,
            None,
            shared.input(profile, value),
            profile.model,
            shared.logs(profile, value),
            None,
            None,
            profile.progress_steps or 0,
        )
        ids.append(server._script(p))
    return ids


@attrs.define
class _Shared:
    """Inputs, logs and outputs shared by a workload's predictions."""

    _inputs: dict[tuple[str, int], dict[str, Any]] = attrs.Factory(dict)
    _logs: dict[tuple[str, int], str] = attrs.Factory(dict)
    _outputs: dict[str, list[str]] = attrs.Factory(dict)

    def input(self, profile: ModelProfile, seed: int) -> dict[str, Any]:
        key = (profile.prompt, seed)
        found = self._inputs.get(key)
        if found is None:
            found = self._inputs[key] = {"prompt": profile.prompt, "seed": seed}
        return found

    def logs(self, profile: ModelProfile, seed: int) -> str:
        key = (profile.logs, seed)
        found = self._logs.get(key)
        if found is None:
            found = self._logs[key] = profile.logs.replace("{seed}", str(seed))
        return found

    def output(self, profile: ModelProfile) -> Any:
        if profile.n_files:
            return MISSING
        found = self._outputs.get(profile.text)
        if found is None:
            tokens = [f" {word}" for word in profile.text.split(" ")]
            tokens[0] = tokens[0][1:]
            found = self._outputs[profile.text] = tokens
        return found
