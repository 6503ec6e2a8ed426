"""VEID identity scoring: capture preprocessing, a small numpy model, seeded captures and drift statistics.

The modules import numpy and Pillow, so the localnet's standard-library processes never import them.
"""

#: Score at or above which a verification is approved.
APPROVAL_THRESHOLD = 0.75
#: Name of the VEID scoring service in the localnet.
SERVICE_NAME = "virtengine-veid"
