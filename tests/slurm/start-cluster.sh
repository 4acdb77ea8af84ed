#!/usr/bin/env bash
# Start a real SLURM cluster on this host for the end-to-end tests:
# munged, MariaDB + slurmdbd (so sacct answers like on a real cluster), slurmctld, and two slurmd.
#
# Node $HOST (partitions cpu and gpu) is the one node of the single-node tests. A second slurmd runs
# node $NODE2 (`slurmd -N $NODE2`, its own port, spool, pid and log file); partition `multi` holds both
# nodes, so a job there with --nodes=2 spans two SLURM nodes: two slurmds start its srun tasks,
# SLURM_JOB_NODELIST names both and SLURM_NODEID is 0 and 1 (both nodes are this host; SLURM does not care).
#
# The node is a GPU node on paper (SlurmdParameters=config_overrides): 64 CPUs, 500 GB and 8 GPUs
# of type "test" declared as GRES on placeholder devices, so the slurm profile's real requests
# (--gpus, --cpus-per-task, --mem, partitions, account) go through sbatch/srun unchanged and SLURM
# schedules and accounts them; the jobs themselves run on the CPU. Nothing is enforced (no cgroups).
#
# Idempotent: packages are installed only when missing, daemons started only when not running.
# Exit status: 0 cluster up and the node idle; 3 SLURM cannot be installed here (not root,
# not Debian/apt, no package registry): callers skip; anything else is a real failure.
#
# Usage: tests/slurm/start-cluster.sh        (as root; ~5 s when installed, ~30 s first time)
# Env:   PRDIT_SLURM_DIR  state, logs and pid files (default /var/tmp/prdit-slurm)
set -euo pipefail

DIR=${PRDIT_SLURM_DIR:-/var/tmp/prdit-slurm}
CLUSTER=prdit-test
ACCOUNT=prdit                 # = default-resources.slurm_account in profiles/slurm/config.yaml
MARKER="# written by prdit tests/slurm/start-cluster.sh"
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
DBPASS=prdit-test-only
HOST=$(hostname -s)
NGPU=8
GPUTYPE=test                  # GRES type: gpu_model: "test" in a profile asks for it
NODE2=n2                      # the second node (partition multi)
NODE2_PORT=6821               # its slurmd's port (the first one has the default, 6818)

mkdir -p "$DIR"
log() { printf '[start-cluster] %s\n' "$*" >&2; }
cannot() { log "SLURM cannot be installed here: $*"; exit 3; }

# --- packages ------------------------------------------------------------------------------
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge \
            slurmdbd:slurmdbd mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || cannot "not root (need: ${need[*]})"
    command -v apt-get >/dev/null || cannot "no apt-get (need: ${need[*]})"
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's postinst scripts try to start the daemons; we start them ourselves below.
    policy_added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    ok=1
    # another test may be installing at the same moment (Chromium): wait for dpkg's lock
    apt=(apt-get -o DPkg::Lock::Timeout=600)
    "${apt[@]}" update -qq >"$DIR/apt.log" 2>&1 || ok=0
    ((ok)) && { "${apt[@]}" install -y -qq --no-install-recommends "${need[@]}" >>"$DIR/apt.log" 2>&1 || ok=0; }
    ((policy_added)) && rm -f /usr/sbin/policy-rc.d
    ((ok)) || cannot "apt-get failed (see $DIR/apt.log)"
fi
[[ $(id -u) == 0 ]] || cannot "the test cluster's daemons run as root"

mkdir -p "$DIR"/{log,run,ctld,spool/$HOST,spool/$NODE2,dev}
# Placeholder GPUs: null devices (c 1:3) named like GPUs, so slurmd binds them and sets
# CUDA_VISIBLE_DEVICES as on a real node; where mknod is not allowed, GPUs are only counted.
gres_lines() {  # node device-prefix
    local line="NodeName=$1 Name=gpu Type=$GPUTYPE File=$DIR/dev/$2[0-$((NGPU - 1))]"
    for i in $(seq 0 $((NGPU - 1))); do
        [[ -c $DIR/dev/$2$i ]] && continue
        rm -f "$DIR/dev/$2$i"
        mknod -m 666 "$DIR/dev/$2$i" c 1 3 2>/dev/null || { line="NodeName=$1 Name=gpu Type=$GPUTYPE Count=$NGPU"; break; }
    done
    echo "$line"
}
gres_line="$(gres_lines "$HOST" gpu)
$(gres_lines "$NODE2" "$NODE2-gpu")"

# --- configuration -------------------------------------------------------------------------
if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    log "$CONF exists and was not written by this script; refusing to overwrite it"
    exit 1
fi
conf=$(cat <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# No cgroups and no systemd on the test host. pgid rather than linuxproc: like cgroup on a real
# cluster, it kills a step's leftover processes (orphans included) as soon as the step ends, so a
# training process whose wrappers exit before its checkpoint is written fails here as it would there.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu,gres/gpu:$GPUTYPE
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
AccountingStoreFlags=job_comment
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=30
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=64 RealMemory=512000 Gres=gpu:$GPUTYPE:$NGPU State=UNKNOWN
NodeName=$NODE2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$NODE2_PORT CPUs=64 RealMemory=512000 Gres=gpu:$GPUTYPE:$NGPU State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
PartitionName=multi Nodes=$HOST,$NODE2 MaxTime=INFINITE State=UP
EOF
)
changed=0
write_if_changed() {  # path mode content
    if [[ ! -e $1 ]] || [[ $(cat "$1") != "$3" ]]; then
        printf '%s\n' "$3" >"$1.tmp" && chmod "$2" "$1.tmp" && mv "$1.tmp" "$1"
        changed=1
    fi
}
mkdir -p /etc/slurm
write_if_changed "$CONF" 644 "$conf"
write_if_changed /etc/slurm/gres.conf 644 "$MARKER
$gres_line"
write_if_changed "$DBDCONF" 600 "$MARKER
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log"

started() { grep -qx "$1 $2" "$DIR/run/started" 2>/dev/null || echo "$1 $2" >>"$DIR/run/started"; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # seconds description command...
    local t=$1 what=$2; shift 2
    for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    log "timed out after ${t}s waiting for $what"; return 1
}

# --- munge ---------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
if ! (munge -n </dev/null | unmunge) >/dev/null 2>&1; then
    log "starting munged"
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    started munged /run/munge/munged.pid
    wait_for 10 munged sh -c 'munge -n </dev/null | unmunge'
fi

# --- MariaDB + slurmdbd --------------------------------------------------------------------
if ! mariadb-admin ping >/dev/null 2>&1; then
    log "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
    setsid mariadbd --user=mysql --skip-log-bin --log-error="$DIR/log/mariadb.log" \
        </dev/null >/dev/null 2>&1 &
    wait_for 30 MariaDB mariadb-admin ping
    started mariadb /run/mysqld/mysqld.pid
fi
mariadb -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF

restart() {  # pidfile: stop a daemon of ours whose config changed
    if alive "$1"; then
        local pid; pid=$(cat "$1")
        kill "$pid"; wait_for 20 "$1 to stop" sh -c "! kill -0 $pid"
    fi
}
if ((changed)); then
    log "configuration changed: (re)starting the SLURM daemons"
    restart "$DIR/run/slurmd.pid"  # an older version of this script: one slurmd
    restart "$DIR/run/slurmd-$HOST.pid"; restart "$DIR/run/slurmd-$NODE2.pid"
    restart "$DIR/run/slurmctld.pid"; restart "$DIR/run/slurmdbd.pid"
fi

if ! alive "$DIR/run/slurmdbd.pid"; then
    log "starting slurmdbd"
    slurmdbd
    started slurmdbd "$DIR/run/slurmdbd.pid"
    wait_for 60 slurmdbd sacctmgr -n list cluster
fi
sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" ||
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -n list account format=account | grep -qw "$ACCOUNT" ||
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="prdit tests" >/dev/null
sacctmgr -n list assoc user=root account="$ACCOUNT" format=user | grep -qw root ||
    sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null

# --- slurmctld + slurmd --------------------------------------------------------------------
if ! alive "$DIR/run/slurmctld.pid"; then
    log "starting slurmctld"
    slurmctld
    started slurmctld "$DIR/run/slurmctld.pid"
    wait_for 30 slurmctld scontrol ping
fi
for node in "$HOST" "$NODE2"; do
    if ! alive "$DIR/run/slurmd-$node.pid"; then
        log "starting slurmd $node"
        slurmd -N "$node"
        started "slurmd-$node" "$DIR/run/slurmd-$node.pid"
    fi
done
scontrol update nodename="$HOST,$NODE2" state=resume >/dev/null 2>&1 || true
node_idle() {
    [[ $(sinfo -h -N -n "$HOST,$NODE2" -o %t | sort -u) == idle ]] &&
        [[ $(sinfo -h -N -n "$HOST,$NODE2" -o %N | sort -u | wc -l) == 2 ]]
}
if ! wait_for 60 "nodes $HOST, $NODE2 idle" node_idle; then
    sinfo -N -l >&2 || true
    tail -n 20 "$DIR"/log/slurmd-*.log "$DIR/log/slurmctld.log" >&2 || true
    exit 1
fi
log "cluster $CLUSTER up: $(sinfo -h -o '%P %a %D %t %G' | tr '\n' ';')"
