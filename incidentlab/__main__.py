"""``python -m incidentlab``: the same as the ``incidentlab`` command."""

import sys

from .cli import main

sys.exit(main())
