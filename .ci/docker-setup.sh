#!/usr/bin/env bash
# Make a Docker engine and the validator image available on this machine, offline.
# Installs docker.io and debootstrap from Debian's packages when missing, starts dockerd without
# a bridge network or iptables rules (containers use host networking), then builds
# incidentlab/validator:local from a debootstrap rootfs. Safe to run again: each step is skipped
# when its result is already there. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKERD_LOG=/tmp/dockerd.log
DOCKERD_START_TIMEOUT=60
PYTHON=${PYTHON:-python3}

if [[ $(id -u) -ne 0 ]]; then
    echo "docker-setup.sh: run as root (it installs packages and starts dockerd)" >&2
    exit 1
fi

# 1. Packages: the engine and debootstrap, which builds the image's rootfs from the Debian mirror.
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "docker-setup.sh: installing docker.io and debootstrap"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io debootstrap
fi

# 2. The daemon. No bridge and no iptables: this machine has loopback only, and the lab's
# containers share the host's network namespace.
if ! docker info >/dev/null 2>&1; then
    echo "docker-setup.sh: starting dockerd, log in $DOCKERD_LOG"
    nohup dockerd --bridge=none --iptables=false >"$DOCKERD_LOG" 2>&1 &
    deadline=$((SECONDS + DOCKERD_START_TIMEOUT))
    until docker info >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "docker-setup.sh: dockerd did not respond to \`docker info\` within ${DOCKERD_START_TIMEOUT} s; last lines of $DOCKERD_LOG:" >&2
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        sleep 1
    done
    echo "docker-setup.sh: dockerd is up"
fi

# 3. The validator image, built offline (no registry is reachable here).
if ! "$PYTHON" -m incidentlab.backends.docker_image check >/dev/null 2>&1; then
    echo "docker-setup.sh: building the image incidentlab/validator:local"
    "$PYTHON" -m incidentlab.backends.docker_image build
fi
echo "docker-setup.sh: Docker engine and image incidentlab/validator:local are ready"
