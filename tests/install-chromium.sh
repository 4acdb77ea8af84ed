#!/usr/bin/env bash
# Install Chromium for the MLflow UI browser test (tests/unit/test_tracking_ui.py), the way
# tests/slurm/start-cluster.sh installs SLURM: Debian's package with apt, once; a no-op when present.
# Prints the browser's path. Exit status: 0 installed; 3 it cannot be installed here (not root, no apt-get,
# no package registry): the test skips saying why; anything else is a real failure.
set -euo pipefail
DIR=${PRDIT_CHROMIUM_LOG_DIR:-/var/tmp/prdit-chromium}
log() { printf '[install-chromium] %s\n' "$*" >&2; }
cannot() { log "Chromium cannot be installed here: $*"; exit 3; }
found() { command -v chromium || command -v chromium-browser; }

if ! found >/dev/null; then
    [[ $(id -u) == 0 ]] || cannot "not root (Debian: apt-get install -y chromium)"
    command -v apt-get >/dev/null || cannot "no apt-get"
    mkdir -p "$DIR"
    log "installing chromium (apt, once)"
    export DEBIAN_FRONTEND=noninteractive
    # another test may be running apt at the same moment (the SLURM cluster): wait for dpkg's lock
    apt=(apt-get -o DPkg::Lock::Timeout=600)
    "${apt[@]}" update -qq >"$DIR/apt.log" 2>&1 || cannot "apt-get update failed (see $DIR/apt.log)"
    "${apt[@]}" install -y -qq --no-install-recommends chromium >>"$DIR/apt.log" 2>&1 \
        || cannot "apt-get install chromium failed (see $DIR/apt.log)"
fi
found
