"""Backends: where a lab's targets live (local processes, Docker containers, a Kubernetes namespace)."""

from .local import LocalBackend

__all__ = ["LocalBackend"]
