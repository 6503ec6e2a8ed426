"""The embedded VirtEngine localnet: validator processes on 127.0.0.1.

Everything under this package that a validator process imports uses only the standard
library, so the same code runs inside any image that has python3.
"""
