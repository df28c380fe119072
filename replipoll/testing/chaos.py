"""The chaos machinery of replipoll's own test suite and soak.

Not needed to test an application against :class:`~replipoll.testing.FakeReplicate`,
and not covered by the compatibility promise of :mod:`replipoll.testing`: it
changes whenever replipoll's reliability tests do.

* :class:`ChaosBatch` scripts a batch that goes wrong in every way at once,
  and records what each id should end as;
* :class:`RequestWatch` counts requests client-side, through aiohttp's
  tracing, to check a client's behaviour (requests open, starts during a
  ``Retry-After``) without the server's grace for requests in flight.
"""

from ._chaos import ChaosBatch
from ._watch import RequestWatch

__all__ = ["ChaosBatch", "RequestWatch"]
