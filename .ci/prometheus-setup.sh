#!/usr/bin/env bash
# Make the prometheus and promtool binaries available, from Debian's prometheus package.
# Installs the package only when either binary is missing, so it is safe to run again. It never
# starts the Debian service: the tests start their own Prometheus on 127.0.0.1. Needs root.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    echo "prometheus-setup.sh: $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "prometheus-setup.sh: run as root (it installs the prometheus package with apt-get)" >&2
    exit 1
fi

# The package's postinst starts prometheus.service through invoke-rc.d. A policy-rc.d that
# exits 101 denies that start, so add one for the install only, unless the machine has its own.
POLICY=/usr/sbin/policy-rc.d
added_policy=false
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    added_policy=true
fi
remove_added_policy() {
    if [[ $added_policy == true ]]; then
        rm -f "$POLICY"
    fi
}
trap remove_added_policy EXIT

echo "prometheus-setup.sh: installing the prometheus package"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
echo "prometheus-setup.sh: $(prometheus --version 2>&1 | head -n 1)"
