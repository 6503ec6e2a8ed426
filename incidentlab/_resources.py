"""Locate the repository's data/ and notebooks/ folders from the installed package."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

__all__ = ["data_path", "notebooks_dir", "project_root"]


def project_root() -> Path:
    """Return the folder that contains the package, data/ and notebooks/.

    incidentlab is installed editable (``pip install -e .``) so that data/ and notebooks/
    stay beside the package.
    """
    return Path(__file__).resolve().parent.parent


def data_path(*parts: str) -> Path:
    """Return a path under data/, raising ConfigError when it does not exist."""
    path = project_root().joinpath("data", *parts)
    if not path.exists():
        raise ConfigError(
            f"data file {path} not found; install incidentlab from its source tree "
            "with `pip install -e .` so that data/ stays beside the package"
        )
    return path


def notebooks_dir() -> Path:
    """Return the folder of the curriculum notebooks."""
    return project_root() / "notebooks"
