#!/usr/bin/env bash
# A throwaway single-node Slurm cluster on the local machine, for testing the Hydra submitit launcher for real.
#
#   scripts/slurm_local.sh install        apt-get install the Slurm and munge daemons (idempotent)
#   scripts/slurm_local.sh start  DIR     write DIR/slurm.conf, start munged, slurmctld and slurmd from DIR,
#                                         wait for the node to be idle, print `export SLURM_CONF=DIR/slurm.conf`
#                                         and `export PATH=DIR/bin:$PATH` (a sacct stand-in): eval "$(... start DIR)"
#   scripts/slurm_local.sh stop   DIR     cancel the jobs and stop the daemons started from DIR (by pid files)
#   scripts/slurm_local.sh status DIR     show which daemons from DIR run, and sinfo/squeue
#
# Everything lives under DIR: config, munge key and socket, state, spool, logs and pid files. Nothing in /etc
# is touched, no systemd is needed (CI containers have none), and a system-wide munged/Slurm, if any, is left
# alone: our munged listens on its own socket (AuthInfo=socket=...) and the Slurm ports are picked free.
#
# The daemons run as root (slurmd must be root to launch jobs, and a container CI runs as root anyway).
#
# Environment knobs:
#   SLURM_LOCAL_PORT         first port to try for slurmctld (slurmd takes the next one); default 6817
#   SLURM_LOCAL_PARTITION    partition name; default "debug" (conf/hydra/launcher/slurm_local.yaml uses it)
#   SLURM_LOCAL_WAIT_S       how long `start` waits for the node to become idle; default 60
#   SLURM_LOCAL_MEM_MB       RealMemory advertised by the node; default: what `slurmd -C` detects
#
# There is no accounting (no slurmdbd): the real `sacct` fails, and submitit, which polls sacct, would only see
# a job as finished through its result file, waiting forever for a job that died hard. DIR/bin/sacct answers
# submitit's query from `scontrol show job` instead (MinJobAge below keeps finished jobs there for 10 min).
# Still bound anything that waits on jobs in time.

set -euo pipefail
# The daemons live in /usr/sbin, which is not on every user's or CI step's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

# Minimal set: slurm-wlm is only a metapackage over these three, and --no-install-recommends skips ~35
# plugin packages (hdf5, rrd, influxdb, ipmi, rocm...) that a local test cluster never loads.
PACKAGES=(slurmctld slurmd slurm-client munge)
PARTITION="${SLURM_LOCAL_PARTITION:-debug}"
WAIT_S="${SLURM_LOCAL_WAIT_S:-60}"

die() {
    echo "slurm_local.sh: $*" >&2
    exit 1
}

log() {
    echo "slurm_local.sh: $*" >&2
}

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

have_binaries() {
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
        && command -v munged >/dev/null 2>&1 && command -v sinfo >/dev/null 2>&1 \
        && command -v sbatch >/dev/null 2>&1
}

cmd_install() {
    if have_binaries; then
        log "Slurm and munge are already installed: $(slurmctld -V 2>/dev/null || true)"
        return 0
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "install needs root (or sudo)"
        sudo=(sudo)
    fi
    # The postinst scripts try to start the services through invoke-rc.d; without systemd (containers) that
    # is refused or fails harmlessly. We start our own daemons from DIR anyway.
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
    have_binaries || die "packages installed but the binaries are still missing from PATH"
}

# Absolute path of DIR, created if needed. The config embeds absolute paths, and the daemons chdir to /.
abs_dir() {
    [[ -n "${1:-}" ]] || usage
    mkdir -p "$1"
    (cd "$1" && pwd -P)
}

# PID from a pid file if that process is alive and is the expected daemon (guards against pid reuse after
# a reboot or a long-dead daemon). Prints nothing otherwise.
live_pid() {
    local pidfile=$1 name=$2 pid comm
    [[ -s "$pidfile" ]] || return 0
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 0
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    # comm is truncated to 15 chars; slurmd/slurmctld may be the *-wlm alternatives on Debian.
    [[ "$comm" == "$name"* ]] || return 0
    # A zombie (exited, not reaped by a PID 1 that is no real init) is not running.
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 0
    echo "$pid"
}

port_in_use() {
    # bash's /dev/tcp connect succeeds only if something listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_ports() {
    local p=${SLURM_LOCAL_PORT:-6817}
    local last=$((p + 200))
    while ((p < last)); do
        if ! port_in_use "$p" && ! port_in_use $((p + 1)); then
            echo "$p"
            return 0
        fi
        p=$((p + 2))
    done
    die "no free port pair between ${SLURM_LOCAL_PORT:-6817} and $last"
}

write_conf() {
    local dir=$1 ctld_port=$2 hw cpus mem
    # Describe the node exactly as slurmd detects it: a node configured with more CPUs or memory than it
    # has is drained at registration ("Low RealMemory"/"Low CPUs") and never runs a job.
    hw=$(slurmd -C | head -n 1)
    cpus=$(sed -n 's/.*\bCPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*\bRealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ -n "$cpus" && -n "$mem" ]] || die "cannot parse 'slurmd -C' output: $hw"
    if [[ -n "${SLURM_LOCAL_MEM_MB:-}" ]] && ((SLURM_LOCAL_MEM_MB < mem)); then
        mem=$SLURM_LOCAL_MEM_MB
    fi
    # Keep the topology fields (Boards, Sockets, Cores, Threads) from slurmd -C, swap in our node name.
    local topo
    topo=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//' <<<"$hw")

    cat >"$dir/slurm.conf" <<EOF
# Written by scripts/slurm_local.sh for a throwaway single-node test cluster. Do not edit: rewritten on start.
ClusterName=qpruning-local
# "localhost" instead of the real hostname: CI containers get random hostnames that may not resolve, and
# slurmctld accepts SlurmctldHost=localhost whatever the hostname is. The address avoids ::1 surprises.
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
SlurmUser=root
SlurmdUser=root

# Our own munged, on its own socket (see start): no /etc/munge, no conflict with a system munged.
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket.2
CredType=cred/munge

StateSaveLocation=$dir/state/ctld
SlurmdSpoolDir=$dir/state/slurmd
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups: containers (docker, gVisor) rarely give a usable cgroup tree. linuxproc tracks job processes
# through /proc parentage, task/none does no binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true

# Memory is a consumable resource so that jobs can (and do) pass --mem; jobs without a request get 256 MB.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerNode=256

# A fresh node that registers is usable at once, also after a crash left it DOWN in the state files.
ReturnToService=2
# Without accounting, squeue/scontrol are the only way to see how a job ended: keep finished jobs 10 min.
MinJobAge=600
# Small cluster, fast turnaround: poll often, don't wait for the default 300 s before declaring a node dead.
SlurmdTimeout=30
SlurmctldTimeout=30
InactiveLimit=0
KillWait=5
MessageTimeout=20

NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost $topo RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    log "node localhost: CPUs=$cpus RealMemory=${mem}MB partition=$PARTITION ports=$ctld_port,$((ctld_port + 1))"
}

# A stand-in for sacct, in DIR/bin (put it first on PATH). Without slurmdbd the real sacct only says "Slurm
# accounting storage is disabled", submitit then sees every job as UNKNOWN and waits forever for the result
# of a job that died hard (OOM kill, segfault, scancel). This answers the one query submitit makes
# (sacct -o JobID,State,NodeList --parsable2 -j ID...) from `scontrol show job`, which keeps finished jobs
# for MinJobAge: submitit then sees FAILED and raises with the job's stderr instead of hanging.
write_sacct_shim() {
    local dir=$1
    mkdir -p "$dir/bin"
    cat >"$dir/bin/sacct" <<'EOF_SHIM'
#!/usr/bin/env bash
# sacct stand-in written by scripts/slurm_local.sh: a test cluster without accounting. Answers
# `sacct ... -j ID[,ID] ...` with the columns JobID|State|NodeList (other options are ignored).
set -uo pipefail
ids=()
while (($#)); do
    case $1 in
        -j | --jobs) ids+=("${2:-}"); shift 2 || shift ;;
        -j* ) ids+=("${1#-j}"); shift ;;
        --jobs=*) ids+=("${1#--jobs=}"); shift ;;
        *) shift ;;
    esac
done
echo "JobID|State|NodeList"
for id in ${ids[@]+"${ids[@]//,/ }"}; do
    # shellcheck disable=SC2086  # split the comma-separated lists
    for one in $id; do
        scontrol -o show job "$one" 2>/dev/null | awk '{
            delete f
            for (i = 1; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v = $i; sub(/^[^=]*=/, "", v); f[k] = v }
            id = f["JobId"]
            if (f["ArrayJobId"] != "" && f["ArrayTaskId"] != "") {
                t = f["ArrayTaskId"]
                id = f["ArrayJobId"] "_" (t ~ /[-,%]/ ? "[" t "]" : t)
            }
            print id "|" f["JobState"] "|" f["NodeList"]
        }'
    done
done
exit 0
EOF_SHIM
    chmod 0755 "$dir/bin/sacct"
}

start_munged() {
    local dir=$1 pid
    pid=$(live_pid "$dir/run/munged.pid" munged)
    if [[ -n "$pid" ]]; then
        log "munged already running (pid $pid)"
        return 0
    fi
    # munged refuses a key or socket directory that others can write to, and warns unless the socket directory
    # is searchable by all (0711: other users reach the socket, cannot list the key, which stays 0600).
    install -d -m 0711 "$dir/munge"
    if [[ ! -s "$dir/munge/munge.key" ]]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$dir/munge/munge.key"
        else  # munge < 0.5.14 has no mungekey
            dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
        fi
    fi
    chmod 0600 "$dir/munge/munge.key"
    # --force: DIR may sit below a group-writable folder (a CI workspace); the key stays 0600 either way.
    munged --force \
        --socket="$dir/munge/munge.socket.2" \
        --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/run/munged.pid" \
        --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" \
        </dev/null >>"$dir/log/munged.out" 2>&1 \
        || { tail -n 20 "$dir/log/munged.log" "$dir/log/munged.out" >&2 2>/dev/null; die "munged failed to start"; }
    # munged forks; wait for its socket to answer.
    local i
    for ((i = 0; i < 50; i++)); do
        if munge -n --socket="$dir/munge/munge.socket.2" </dev/null 2>/dev/null \
            | unmunge --socket="$dir/munge/munge.socket.2" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$dir/log/munged.log" >&2 2>/dev/null || true
    die "munged does not answer on $dir/munge/munge.socket.2"
}

dump_logs() {
    local dir=$1 f
    for f in munged.log slurmctld.log slurmd.log slurmctld.out slurmd.out; do
        [[ -s "$dir/log/$f" ]] || continue
        echo "----- $dir/log/$f (tail) -----" >&2
        tail -n 30 "$dir/log/$f" >&2
    done
}

STARTING_DIR=""
on_start_exit() {
    local rc=$?
    ((rc != 0)) || return 0
    set +e
    log "start failed (exit $rc); stopping what was started from $STARTING_DIR"
    dump_logs "$STARTING_DIR"
    cmd_stop "$STARTING_DIR" >&2
    exit "$rc"
}

cmd_start() {
    local dir
    dir=$(abs_dir "${1:-}")
    [[ $(id -u) -eq 0 ]] || die "start must run as root: slurmd needs root to launch jobs"
    have_binaries || die "Slurm/munge binaries missing: run '$0 install' first"
    export SLURM_CONF="$dir/slurm.conf"

    if [[ -n "$(live_pid "$dir/run/slurmctld.pid" slurmctld)" ]]; then
        log "a cluster from $dir is already running; reusing it"
    else
        # Leftovers of a crashed cluster from DIR (say munged or slurmd without slurmctld) would hold the
        # pid files and ports: start from nothing.
        if [[ -n "$(live_pid "$dir/run/slurmd.pid" slurmd)$(live_pid "$dir/run/munged.pid" munged)" ]]; then
            log "stopping the leftovers of an earlier cluster from $dir"
            cmd_stop "$dir"
        fi
        mkdir -p "$dir/run" "$dir/log" "$dir/state/ctld" "$dir/state/slurmd"
        write_conf "$dir" "$(pick_ports)"
        write_sacct_shim "$dir"
        # From here on, a failure (die, set -e) must not leave half a cluster behind.
        STARTING_DIR=$dir
        trap on_start_exit EXIT
        start_munged "$dir"
        # -c: start from an empty job state, even if DIR is reused after a crash. The daemons fork and
        # detach; their stdio goes to files so that a caller capturing our output does not hang on the pipe.
        slurmctld -c </dev/null >>"$dir/log/slurmctld.out" 2>&1
        # -N localhost: the node name from slurm.conf, whatever the container's hostname is.
        slurmd -N localhost </dev/null >>"$dir/log/slurmd.out" 2>&1
    fi
    STARTING_DIR=$dir
    trap on_start_exit EXIT

    local i state=""
    for ((i = 0; i < WAIT_S * 2; i++)); do
        state=$(sinfo -h -n localhost -o '%T' 2>/dev/null | head -n 1 || true)
        [[ "$state" == idle || "$state" == mixed || "$state" == allocated ]] && break
        # A node DOWN or DRAINED with a reason will not heal by waiting; fail fast with the reason.
        if [[ "$state" == drain* || "$state" == down* ]] && ((i > 10)); then
            break
        fi
        sleep 0.5
    done
    if [[ "$state" != idle && "$state" != mixed && "$state" != allocated ]]; then
        log "node localhost is '${state:-unknown}' after ${WAIT_S}s, not idle"
        sinfo -R 2>/dev/null >&2 || true
        exit 1
    fi
    trap - EXIT
    log "cluster up: node localhost $state"
    echo "export SLURM_CONF=$dir/slurm.conf"
    echo "export PATH=$dir/bin:\$PATH"
}

# Send TERM, wait up to $3 seconds, then KILL.
stop_pid() {
    local pid=$1 name=$2 wait_s=${3:-10} i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait_s * 10; i++)); do
        [[ -d "/proc/$pid" ]] || { log "stopped $name (pid $pid)"; return 0; }
        # A zombie has exited already: the daemons detached, so PID 1 reaps them, and a PID 1 that is not
        # a real init (containers, CI sandboxes) may take its time or never do it.
        if [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]]; then
            log "stopped $name (pid $pid, exited, not reaped yet)"
            return 0
        fi
        sleep 0.1
    done
    log "$name (pid $pid) ignored SIGTERM for ${wait_s}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Print the pids of all descendants of $1, children before their parents' siblings (depth first).
descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$child"
        descendants "$child"
    done
}

# slurmstepd processes (and the job processes below them) outlive slurmd. The normal way to end them is
# scancel while slurmd runs (cmd_stop does that); this is the fallback when slurmd is gone already (crashed,
# killed). Find this cluster's by the SLURM_CONF in their environment (inherited from our slurmd), and kill
# them with all their descendants.
kill_stepds() {
    local dir=$1 p pid env victims
    for p in /proc/[0-9]*; do
        [[ "$(cat "$p/comm" 2>/dev/null)" == slurmstepd ]] || continue
        [[ "$(awk '{print $3}' "$p/stat" 2>/dev/null)" != Z ]] || continue
        env=$(tr '\0' '\n' 2>/dev/null <"$p/environ" || true)  # stderr first: the file may vanish
        grep -qxF "SLURM_CONF=$dir/slurm.conf" <<<"$env" || continue
        pid=${p#/proc/}
        # Collect the tree before killing: once the stepd is gone, its children are reparented away.
        victims=$(descendants "$pid")
        log "killing leftover slurmstepd $pid and its processes: $(tr '\n' ' ' <<<"$victims")"
        # shellcheck disable=SC2086  # one pid per word
        kill -KILL "$pid" $victims 2>/dev/null || true
    done
}

cmd_stop() {
    local dir pid i
    dir=$(abs_dir "${1:-}")
    export SLURM_CONF="$dir/slurm.conf"
    pid=$(live_pid "$dir/run/slurmctld.pid" slurmctld)
    if [[ -n "$pid" && -n "$(live_pid "$dir/run/slurmd.pid" slurmd)" ]]; then
        # Cancel jobs while slurmd still runs, so that their processes are killed the normal way. %F is the
        # array job id (the job id for plain jobs): one id cancels a whole submitit/Hydra job array.
        local jobs
        jobs=$(timeout 10 squeue -h -o %F 2>/dev/null | sort -u || true)
        # shellcheck disable=SC2086  # one id per word
        [[ -z "$jobs" ]] || timeout 10 scancel --quiet --full $jobs 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            [[ -z "$(timeout 5 squeue -h -t R,CG,PD -o %i 2>/dev/null || true)" ]] && break
            sleep 0.5
        done
    fi
    # slurmd first: stopping slurmctld first makes slurmd log errors while it tries to reach it.
    pid=$(live_pid "$dir/run/slurmd.pid" slurmd)
    [[ -z "$pid" ]] || stop_pid "$pid" slurmd 10
    kill_stepds "$dir"
    pid=$(live_pid "$dir/run/slurmctld.pid" slurmctld)
    [[ -z "$pid" ]] || stop_pid "$pid" slurmctld 10
    pid=$(live_pid "$dir/run/munged.pid" munged)
    [[ -z "$pid" ]] || stop_pid "$pid" munged 5
    rm -f "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid" "$dir/run/munged.pid"
}

cmd_status() {
    local dir name pid rc=0
    dir=$(abs_dir "${1:-}")
    export SLURM_CONF="$dir/slurm.conf"
    for name in munged slurmctld slurmd; do
        pid=$(live_pid "$dir/run/$name.pid" "$name")
        if [[ -n "$pid" ]]; then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            rc=3
        fi
    done
    if [[ -n "$(live_pid "$dir/run/slurmctld.pid" slurmctld)" ]]; then
        timeout 10 sinfo -N -l || true
        timeout 10 squeue || true
    fi
    echo "SLURM_CONF=$dir/slurm.conf"
    return "$rc"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    status) cmd_status "${2:-}" ;;
    *) usage ;;
esac
