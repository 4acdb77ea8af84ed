#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/start-cluster.sh: cancel its jobs, then stop
# exactly the daemons that script started (recorded in $PRDIT_SLURM_DIR/run/started), newest
# first, by pid. Packages, configuration and the accounting database stay for the next start.
set -uo pipefail

DIR=${PRDIT_SLURM_DIR:-/var/tmp/prdit-slurm}
STARTED=$DIR/run/started
[[ -s $STARTED ]] || { echo "[stop-cluster] nothing to stop" >&2; exit 0; }

if command -v squeue >/dev/null && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %A 2>/dev/null)
    if [[ -n $jobs ]]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 50); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.2; done
    fi
fi

tac "$STARTED" | while read -r name pidfile; do
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null || continue
    echo "[stop-cluster] stopping $name ($pid)" >&2
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
done
rm -f "$STARTED"
exit 0
