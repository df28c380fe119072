"""A web service that reports on Replicate predictions, with aiohttp.

GET /predictions/{id} waits up to WAIT seconds for the prediction to end:

- 200 and the prediction's record, as the provider sent it, once it has ended;
- 202 with {"id": ..., "status": ...} and a Retry-After header while it runs;
- 400 for a string that cannot be a prediction id;
- 404 for an id the provider does not know;
- 502 when the provider or the network failed, with the provider's request id.

The key is read from REPLICATE_API_TOKEN; REPLIPOLL_BASE_URL, if set, points
the client at another base URL (a gateway, or replipoll's fake server).
Run it with: python web_aiohttp.py
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import replipoll
from aiohttp import web

#: Seconds one HTTP request waits for its prediction to end.
WAIT = 20.0
#: Seconds a 202 answer asks the caller to wait before asking again.
RETRY_AFTER = 2
#: How many ids the 202 answers remember a status for.
REMEMBERED = 10_000

#: An HTTP answer: status code, JSON body, headers.
Answer = tuple[int, dict[str, Any], dict[str, str]]


def status_keeper(statuses: dict[str, str]) -> Callable[[replipoll.Prediction], None]:
    """An ``on_update`` callback that keeps the latest status of running ids."""

    def remember(prediction: replipoll.Prediction) -> None:
        statuses.pop(prediction.id, None)
        if not prediction.is_terminal:
            statuses[prediction.id] = str(prediction.status)
            if len(statuses) > REMEMBERED:
                del statuses[next(iter(statuses))]  # the oldest

    return remember


def running(prediction_id: str, status: str | None) -> Answer:
    body = {"id": prediction_id, "status": status or "starting"}
    return 202, body, {"Retry-After": str(RETRY_AFTER)}


async def answer(
    manager: replipoll.PollManager,
    statuses: dict[str, str],
    prediction_id: str,
    wait: float,
) -> Answer:
    """The answer to GET /predictions/{id}, whatever the web framework."""
    try:
        async with asyncio.timeout(wait):
            # wait(), not submit(): when this request gives up (the timeout,
            # or a client that hung up), the id's shared poll goes on.
            prediction = await manager.wait(prediction_id)
    except TimeoutError:
        return running(prediction_id, statuses.get(prediction_id))
    except replipoll.PollTimeout as error:
        # The manager's deadline passed; the next request polls afresh.
        return running(prediction_id, error.last and str(error.last.status))
    except replipoll.InvalidPredictionIdError as error:
        return 400, {"error": f"invalid prediction id: {error.reason}"}, {}
    except replipoll.NotFoundError:
        return 404, {"error": f"no prediction {prediction_id}"}, {}
    except replipoll.RequestError as error:
        return 502, {"error": error.message, "request_id": error.request_id}, {}
    return 200, prediction.to_json(), {}


manager_key = web.AppKey("manager", replipoll.PollManager)
statuses_key = web.AppKey("statuses", dict[str, str])
wait_key = web.AppKey("wait", float)


async def replipoll_ctx(app: web.Application) -> AsyncIterator[None]:
    """One client and one manager for the whole process, closed at shutdown."""
    async with (
        replipoll.Client() as client,  # REPLICATE_API_TOKEN, REPLIPOLL_BASE_URL
        replipoll.PollManager(
            client,
            rate_limit=40,
            timeout=600,
            on_update=status_keeper(app[statuses_key]),
        ) as manager,
    ):
        app[manager_key] = manager
        yield


async def get_prediction(request: web.Request) -> web.Response:
    app = request.app
    status, body, headers = await answer(
        app[manager_key], app[statuses_key], request.match_info["id"], app[wait_key]
    )
    return web.json_response(body, status=status, headers=headers)


def make_app(*, wait: float = WAIT) -> web.Application:
    app = web.Application()
    app[statuses_key] = {}
    app[wait_key] = wait
    app.cleanup_ctx.append(replipoll_ctx)
    app.router.add_get("/predictions/{id}", get_prediction)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=8080)
