"""Run the fake server from a shell: ``python -m replipoll.testing --help``."""

import sys

from ._cli import main

sys.exit(main())
