"""Poll Replicate-style predictions from asyncio: one, or a hundred thousand.

replipoll speaks the prediction API of Replicate and of the gateways that
re-expose it (DeerAPI, CometAPI, any base URL serving the same paths):

* :class:`Client` fetches or cancels one prediction, retrying what is worth
  retrying, and returns a frozen :class:`Prediction` record;
* :class:`PollManager` polls many predictions under a concurrency cap and a
  shared rate budget until each is terminal;
* :func:`save_outputs` copies a finished prediction's files to your storage;
* :mod:`replipoll.testing` is a fake Replicate-compatible server for tests.
"""

from ._client import Client
from ._download import DownloadReport, SavedFile, save_outputs
from ._errors import (
    AuthenticationError,
    BadRequestError,
    BaseURLError,
    BatchStoppedError,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    DecodeError,
    DownloadError,
    GatewayError,
    HTTPStatusError,
    InvalidPredictionIdError,
    ManagerClosedError,
    MismatchedIdError,
    MissingAPIKeyError,
    NoStreamError,
    NotFoundError,
    PollTimeout,
    PredictionMayExistError,
    RateLimitedError,
    ReplipollError,
    RequestError,
    RequestTimeoutError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
    WebhookVerificationError,
)
from ._learn import LearnedPolicy, Progress, parse_progress
from ._manager import PollManager, PollResult, PollStats, RunResult
from ._models import (
    TERMINAL_STATUSES,
    Prediction,
    PredictionMetrics,
    PredictionUrls,
    Status,
)
from ._providers import PROVIDERS, Provider, Timeouts
from ._results import Diagnosis
from ._retry import Retrying, RetryPolicy
from ._schedule import PollPolicy, RateBudget
from ._share import Budget, Share, ShareHooks
from ._sse import StreamEvent
from ._version import VERSION as __version__
from ._webhook_handler import WebhookReceiver, webhook_handler
from ._webhooks import ReplayGuard, sign_webhook, verify_webhook

__all__ = [
    "PROVIDERS",
    "TERMINAL_STATUSES",
    "AuthenticationError",
    "BadRequestError",
    "BaseURLError",
    "BatchStoppedError",
    "Budget",
    "Client",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectError",
    "DecodeError",
    "Diagnosis",
    "DownloadError",
    "DownloadReport",
    "GatewayError",
    "HTTPStatusError",
    "InvalidPredictionIdError",
    "LearnedPolicy",
    "ManagerClosedError",
    "MismatchedIdError",
    "MissingAPIKeyError",
    "NoStreamError",
    "NotFoundError",
    "PollManager",
    "PollPolicy",
    "PollResult",
    "PollStats",
    "PollTimeout",
    "Prediction",
    "PredictionMayExistError",
    "PredictionMetrics",
    "PredictionUrls",
    "Progress",
    "Provider",
    "RateBudget",
    "RateLimitedError",
    "ReplayGuard",
    "ReplipollError",
    "RequestError",
    "RequestTimeoutError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "Retrying",
    "RunResult",
    "SavedFile",
    "ServerError",
    "Share",
    "ShareHooks",
    "Status",
    "StreamEvent",
    "Timeouts",
    "TransportError",
    "WebhookReceiver",
    "WebhookVerificationError",
    "__version__",
    "parse_progress",
    "save_outputs",
    "sign_webhook",
    "verify_webhook",
    "webhook_handler",
]

# Tracebacks say replipoll.NotFoundError, not where it is defined (pickle
# finds every one of them here too).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and issubclass(_obj, BaseException):
        _obj.__module__ = __name__
del _name, _obj
