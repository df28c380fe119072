"""Bad options: each one is refused with a ConfigurationError that names it.

A ConfigurationError is a ValueError, so code that caught ValueError keeps
working; its ``option`` says which argument to fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from replipoll import (
    Client,
    ConfigurationError,
    PollManager,
    PollPolicy,
    Prediction,
    RateBudget,
    RetryPolicy,
    Timeouts,
    save_outputs,
)
from replipoll.testing import FakeReplicate

BASE = "http://127.0.0.1:9/v1"


def client(**options: Any) -> Client:
    return Client(**{"base_url": BASE, "api_key": "k" * 10, **options})


#: (option named, a call that must be refused)
REFUSED: list[tuple[str, Callable[[], object]]] = [
    ("provider", lambda: Client("nope", api_key="k")),
    ("base_url", lambda: client(base_url="ftp://example.com")),
    ("base_url", lambda: client(base_url="https://x/v1?q=1")),
    ("api_key", lambda: Client(base_url=BASE, api_key="")),
    ("api_key", lambda: Client(base_url=BASE, api_key="a\nb")),
    ("max_connections", lambda: client(max_connections=0)),
    ("max_connections", lambda: client(max_connections=1.5)),
    ("burst", lambda: client(burst=0)),
    ("rate_limit", lambda: client(rate_limit=0)),
    ("rate_limit", lambda: client(rate_limit=-5)),
    ("rate_limit", lambda: client(rate_limit=math.nan)),
    ("timeouts", lambda: client(timeouts=30)),
    ("retry", lambda: client(retry={"max_attempts": 3})),
    ("session", lambda: client(session="a session")),
    ("client", lambda: PollManager("a client")),  # type: ignore[arg-type]
    ("max_concurrency", lambda: PollManager(client(), max_concurrency=0)),
    ("max_concurrency", lambda: PollManager(client(), max_concurrency=True)),
    ("burst", lambda: PollManager(client(), burst=0)),
    ("rate_limit", lambda: PollManager(client(), rate_limit=0)),
    ("timeout", lambda: PollManager(client(), timeout=0)),
    ("timeout", lambda: PollManager(client(), timeout=-1)),
    ("coalesce", lambda: PollManager(client(), coalesce=-0.1)),
    ("coalesce", lambda: PollManager(client(), coalesce=math.inf)),
    ("policy", lambda: PollManager(client(), policy=1.5)),  # type: ignore[arg-type]
    ("retry", lambda: PollManager(client(), retry=3)),  # type: ignore[arg-type]
    ("on_update", lambda: PollManager(client(), on_update="print")),  # type: ignore[arg-type]
    ("max_attempts", lambda: RetryPolicy(max_attempts=0)),
    ("base_delay", lambda: RetryPolicy(base_delay=-1)),
    ("max_delay", lambda: RetryPolicy(max_delay=math.nan)),
    ("max_retry_after", lambda: RetryPolicy(max_retry_after=-1)),
    ("timeout", lambda: RetryPolicy(timeout=0)),
    ("retry_statuses", lambda: RetryPolicy(retry_statuses=[99])),
    ("retry_statuses", lambda: RetryPolicy(retry_statuses=["503"])),
    ("on_retry", lambda: RetryPolicy(on_retry=42)),  # type: ignore[arg-type]
    ("min_interval", lambda: PollPolicy(min_interval=0)),
    ("age_factor", lambda: PollPolicy(age_factor=-0.1)),
    ("max_interval", lambda: PollPolicy(max_interval=-1)),
    ("jitter", lambda: PollPolicy(jitter=1.5)),
    ("rate", lambda: RateBudget(rate=0)),
    ("burst", lambda: RateBudget(rate=1, burst=0)),
    ("total", lambda: Timeouts(total=0)),
    ("connect", lambda: Timeouts(connect=-1)),
    ("read", lambda: Timeouts(read="60")),
]


@pytest.mark.parametrize(
    ("option", "make"), REFUSED, ids=[f"{o}-{i}" for i, (o, _) in enumerate(REFUSED)]
)
def test_a_bad_option_is_a_configuration_error_naming_it(
    option: str, make: Callable[[], object]
) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()
    assert isinstance(info.value, ValueError)
    assert info.value.option == option
    assert option in str(info.value) or option in {"provider", "api_key"}


async def test_client_wait_refuses_a_bad_timeout(fake_replicate: FakeReplicate) -> None:
    async with Client(
        base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key
    ) as c:
        with pytest.raises(ConfigurationError) as info:
            await c.wait("abc", timeout=0)
    assert info.value.option == "timeout"


async def test_save_outputs_refuses_a_bad_concurrency(tmp_path: Path) -> None:
    done = Prediction(id="p", status="succeeded", output=None)
    with pytest.raises(ConfigurationError) as info:
        await save_outputs(done, tmp_path, concurrency=0)
    assert info.value.option == "concurrency"


def test_good_options_pass() -> None:
    """The limits themselves are allowed: one connection, no jitter, no delay."""
    client(max_connections=1, burst=1, rate_limit=0.01)
    RetryPolicy(max_attempts=1, base_delay=0, max_delay=0, timeout=0.001)
    PollPolicy(jitter=0, age_factor=0)
    Timeouts(total=None, connect=None, read=None)
