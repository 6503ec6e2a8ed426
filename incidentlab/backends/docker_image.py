"""Build the validator image offline: a Debian rootfs made by debootstrap, imported into the Docker daemon.

Touches the Debian mirror named in apt's sources, a rootfs cache folder and the local Docker daemon.
CLI: ``python -m incidentlab.backends.docker_image build [--force]`` and ``... check``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ConfigError, IncidentLabError
from ..localnet.supervisor import tail_lines

__all__ = [
    "IMAGE",
    "ImageBuildError",
    "build_image",
    "build_rootfs",
    "debian_mirror",
    "engine_client",
    "image_exists",
    "import_rootfs",
    "main",
]

logger = logging.getLogger(__name__)

#: Tag of the image that the docker backend runs validators from.
IMAGE = "incidentlab/validator:local"
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3",)
#: Dockerfile instructions applied by the import. The package is bind-mounted at /opt/incidentlab.
IMAGE_CHANGES = ("ENV PYTHONPATH=/opt", "ENV PYTHONUNBUFFERED=1", "LABEL incidentlab.image=validator")
#: Folder for cached rootfs trees, used when no cache folder is given.
DEFAULT_CACHE_DIR = Path("~/.cache/incidentlab/rootfs")
#: Files of apt's sources, one-line (.list) and deb822 (.sources) format.
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
#: Paths left out of the image: Docker mounts its own /dev, /proc and /sys, and apt's caches only add size.
TAR_EXCLUDES = ("./dev/*", "./proc/*", "./sys/*", "./var/cache/apt/archives/*.deb", "./var/lib/apt/lists/*")
#: Seconds the SDK waits for the daemon during an import of the rootfs (the bookworm rootfs with python3 makes an image of about 160 MB).
IMPORT_TIMEOUT = 600
ENGINE_TIMEOUT = 60
LOG_LINES_IN_ERRORS = 20


class ImageBuildError(IncidentLabError):
    """debootstrap or the import into the Docker daemon failed; the message has the tool's last output lines."""


def engine_client(timeout: float = ENGINE_TIMEOUT):
    """Connect to the Docker daemon like ``docker info``, with the Docker SDK's ``docker.from_env()``.

    Takes the API timeout in seconds. Returns a ``docker.DockerClient``. Raises ConfigError when
    the SDK is not installed or the daemon cannot be reached, saying how to install and start one.
    """
    try:
        import docker
    except ImportError as exc:
        raise ConfigError("the Docker SDK for Python is not installed; install it with `pip install docker`") from exc
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise ConfigError(
            f"cannot connect to the Docker engine at {host} ({exc}); install one with `apt-get install docker.io` "
            "and start it with `systemctl start docker` or `dockerd &`, or run .ci/docker-setup.sh as root"
        ) from exc
    return client


def image_exists(client=None, image: str = IMAGE) -> bool:
    """Return True when the daemon has ``image``, like ``docker image inspect`` exiting 0.

    Raises ConfigError when the Docker engine cannot be reached.
    """
    import docker

    client = client or engine_client()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def build_image(*, force: bool = False, cache_dir: str | os.PathLike | None = None,
                mirror: str | None = None, client=None) -> str:
    """Build ``incidentlab/validator:local`` without any registry, like ``docker import`` of a debootstrap tree.

    Takes ``force`` to rebuild the cached rootfs and the image even when they exist, the rootfs
    cache folder (default ~/.cache/incidentlab/rootfs), the Debian mirror (default: the one in
    apt's sources) and a Docker client. Returns the image id. Raises ConfigError when not root or
    when debootstrap or Docker is missing, and ImageBuildError when a build step fails.
    """
    _check_prerequisites()
    client = client or engine_client(IMPORT_TIMEOUT)
    if not force and image_exists(client):
        image_id = client.images.get(IMAGE).id
        logger.info("image %s exists (%s); pass force=True to rebuild it", IMAGE, image_id[:19])
        return image_id

    cache = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
    rootfs = build_rootfs(cache, mirror or debian_mirror(), force=force)
    return import_rootfs(client, rootfs)


def build_rootfs(cache_dir: Path, mirror: str, *, force: bool = False) -> Path:
    """Run ``debootstrap --variant=minbase --include=python3 bookworm`` into the cache, once.

    Takes the cache folder, the mirror URL and ``force`` to build again over a cached tree.
    Returns the rootfs folder. The tree is built in a ``.partial`` folder and renamed when
    debootstrap succeeds, so an interrupted build is never taken from the cache. Raises
    ImageBuildError with the last lines of debootstrap's log when it fails.
    """
    name = f"{SUITE}-{VARIANT}-{'-'.join(PACKAGES)}"
    rootfs, partial, done = cache_dir / name, cache_dir / f"{name}.partial", cache_dir / f"{name}.done"
    if done.exists() and rootfs.is_dir() and not force:
        logger.info("using the cached rootfs %s", rootfs)
        return rootfs

    # Start clean: a half-built tree or a forced rebuild must not leave old files behind.
    cache_dir.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    for folder in (partial, rootfs):
        shutil.rmtree(folder, ignore_errors=True)

    log_path = cache_dir / "debootstrap.log"
    command = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", SUITE, str(partial), mirror]
    logger.info("running %s (log in %s)", " ".join(command), log_path)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        lines = "\n".join(tail_lines(log_path, LOG_LINES_IN_ERRORS)) or "(empty)"
        raise ImageBuildError(
            f"debootstrap exited with code {result.returncode} while building {partial} from {mirror}. "
            f"Last lines of {log_path}:\n{lines}\nCheck that `apt-get update` reaches {mirror}, or pass another mirror."
        )

    partial.rename(rootfs)
    done.write_text(f"{mirror} {_dt.datetime.now(_dt.timezone.utc).isoformat()}\n", encoding="utf-8")
    logger.info("rootfs %s built in %.0f s", rootfs, time.monotonic() - started)
    return rootfs


def import_rootfs(client, rootfs: Path, image: str = IMAGE) -> str:
    """Stream ``tar -C ROOTFS -c .`` into the daemon as ``image``, like ``docker import --change``.

    Takes a Docker client, the rootfs folder and the image tag. Returns the image id. Raises
    ImageBuildError when tar or the daemon fails.
    """
    import docker

    repository, _, tag = image.rpartition(":")
    command = ["tar", "-C", str(rootfs), "--numeric-owner", *(f"--exclude={pattern}" for pattern in TAR_EXCLUDES), "-c", "."]
    started = time.monotonic()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as tar:
        try:
            client.api.import_image(src=tar.stdout, repository=repository, tag=tag,
                                    changes=list(IMAGE_CHANGES), stream_src=True)
        except docker.errors.APIError as exc:
            tar.kill()
            raise ImageBuildError(f"the Docker daemon rejected the import of {rootfs} as {image}: {exc}") from exc
        errors = tar.stderr.read().decode("utf-8", "replace").strip()
    if tar.returncode != 0:
        raise ImageBuildError(f"`{' '.join(command)}` exited with code {tar.returncode}: {errors or '(no output)'}")

    image_id = client.images.get(image).id
    logger.info("imported %s as %s (%s) in %.0f s", rootfs, image, image_id[:19], time.monotonic() - started)
    return image_id


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES, suite: str = SUITE) -> str:
    """Return the first Debian mirror URL in apt's sources that serves ``suite`` itself (not -security or -updates).

    Reads one-line ``sources.list`` files and deb822 ``.sources`` files. Raises ConfigError when
    no source serves the suite, naming the files read.
    """
    files: list[Path] = []
    for path in sources:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources")))
        elif path.is_file():
            files.append(path)
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for uri, suites in entries:
            if suite in suites:
                return uri.rstrip("/")
    read = ", ".join(str(p) for p in files) or "none"
    raise ConfigError(
        f"no apt source serves Debian {suite} (files read: {read}); "
        "pass a mirror with `--mirror http://deb.debian.org/debian`"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI: ``build [--force]`` builds the image, ``check`` exits 0 when it exists and 1 when not."""
    parser = argparse.ArgumentParser(prog="python -m incidentlab.backends.docker_image", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help=f"build {IMAGE} offline from a debootstrap rootfs (needs root)")
    build.add_argument("--force", action="store_true", help="rebuild the rootfs and the image even when they exist")
    build.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                       help="folder of the cached rootfs (default: %(default)s)")
    build.add_argument("--mirror", help="Debian mirror URL (default: the bookworm source in /etc/apt)")
    commands.add_parser("check", help=f"exit 0 when the image {IMAGE} exists, 1 when it does not")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        if args.command == "check":
            found = image_exists()
            sys.stdout.write(f"{IMAGE} {'exists' if found else 'is missing'}\n")
            return 0 if found else 1
        started = time.monotonic()
        image_id = build_image(force=args.force, cache_dir=args.cache_dir, mirror=args.mirror)
        sys.stdout.write(f"{IMAGE} {image_id} ready after {time.monotonic() - started:.0f} s\n")
        return 0
    except IncidentLabError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise ConfigError(
            f"building {IMAGE} needs root, because debootstrap creates files owned by other users "
            "and device nodes; run `sudo python3 -m incidentlab.backends.docker_image build`"
        )
    if shutil.which("debootstrap") is None:
        raise ConfigError("debootstrap is not installed; install it with `apt-get install debootstrap`")
    if shutil.which("tar") is None:
        raise ConfigError("tar is not installed; install it with `apt-get install tar`")


def _one_line_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for line in text.splitlines():
        # Options in brackets ("deb [arch=amd64 signed-by=...] URI suite components") come before the URI.
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            entries.append((words[1], [words[2]]))
    return entries


def _deb822_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields = {}
        for line in paragraph.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith(("#", " ", "\t")):
                fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        entries.extend((uri, fields.get("suites", "").split()) for uri in fields.get("uris", "").split())
    return entries


if __name__ == "__main__":
    sys.exit(main())
