"""Entry point of ``python -m incidentlab.localnet.cluster``."""

import sys

from .server import main

sys.exit(main())
