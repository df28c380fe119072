"""Named, seeded sets of scripted predictions for demos, the CLI and benchmarks."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Final

from ._server import FakeReplicate

_MODELS: Final = (
    "black-forest-labs/flux-schnell",
    "stability-ai/sdxl",
    "bytedance/sdxl-lightning-4step",
)
_UNDOCUMENTED: Final = ("timed_out", "expired")


def _demo(server: FakeReplicate, n: int, rng: random.Random) -> list[str]:
    """Mostly successes after 0.5-5 s; every tenth fails, aborts or is canceled."""
    endings = ("succeeded",) * 7 + ("failed", "aborted", "canceled")

    def vary(i: int) -> dict[str, Any]:
        return {
            "queue": round(rng.uniform(0.0, 1.5), 3),
            "duration": round(rng.uniform(0.5, 5.0), 3),
            "outcome": endings[i % len(endings)],
            "n_files": rng.randint(1, 4),
            "model": rng.choice(_MODELS),
            "input": {"prompt": f"demo prompt {i}", "seed": i},
        }

    return server.add_predictions(n, vary)


def _chaos(server: FakeReplicate, n: int, rng: random.Random) -> list[str]:
    """Every outcome (undocumented ones too), odd outputs, unknown fields.

    Also a fault on one request in five (see :meth:`FakeReplicate.set_chaos`).
    """
    endings = ("succeeded",) * 5 + ("failed", "canceled", "aborted", *_UNDOCUMENTED)
    # Every ending at least once when n allows, in a seeded order.
    outcomes = [endings[i % len(endings)] for i in range(n)]
    rng.shuffle(outcomes)
    outputs: tuple[Any, ...] = ("a plain string", {"text": "a dict"}, [], None)

    def vary(i: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "queue": round(rng.uniform(0.0, 2.0), 3),
            "duration": round(rng.uniform(0.0, 4.0), 3),
            "outcome": outcomes[i],
            "n_files": rng.randint(0, 3),
            "model": rng.choice(_MODELS),
            "input": {"prompt": f"chaos prompt {i}"},
            "logs": "step 1/1\n",
        }
        if rng.random() < 0.2:
            kwargs["output"] = rng.choice(outputs)
        if rng.random() < 0.3:
            kwargs["extra"] = {"x_gateway": {"provider": "fake", "attempt": i % 3}}
        return kwargs

    ids = server.add_predictions(n, vary)
    server.set_chaos(0.2)
    return ids


def _empty(server: FakeReplicate, n: int, rng: random.Random) -> list[str]:
    """No predictions: create your own through the API."""
    if n:
        raise ValueError("the 'empty' scenario has no predictions to count")
    return []


_Builder = Callable[[FakeReplicate, int, random.Random], list[str]]
_BUILDERS: Final[Mapping[str, tuple[_Builder, int]]] = {
    "demo": (_demo, 12),
    "chaos": (_chaos, 60),
    "empty": (_empty, 0),
}

#: Names :func:`load_scenario` accepts.
SCENARIOS: Final = tuple(_BUILDERS)


def load_scenario(
    server: FakeReplicate, name: str, predictions: int | None = None
) -> list[str]:
    """Script the named scenario into *server*; return the new prediction ids.

    The same server seed gives the same scenario.

    Args:
        server: Where to add the predictions (started or not).
        name: One of :data:`SCENARIOS`: ``"demo"`` (12 mostly successful
            predictions), ``"chaos"`` (60 of every kind, plus random faults on
            a fifth of the requests) or ``"empty"``.
        predictions: How many predictions instead of the scenario's default.

    Raises:
        ValueError: Unknown name, or a count for ``"empty"``.
    """
    try:
        build, default = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {SCENARIOS}") from None
    rng = random.Random(f"{name}:{server.seed}")
    return build(server, default if predictions is None else predictions, rng)
