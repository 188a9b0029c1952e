#!/usr/bin/env bash
# End-to-end test of `reslim sweep --slurm` against a real Slurm on this machine.
#
# On Debian (root), installs Slurm from the distribution if it is missing
# (slurm-wlm), writes a one-node slurm.conf for this host into a fresh temporary
# directory (auth/none and cred/none when the packaged Slurm has them: no munge daemon;
# else munged on a private socket), starts slurmctld and slurmd as plain background
# processes, then:
#   1. submits the quick sweep (experiments/quick.toml, 4 shards) with
#      `reslim sweep --slurm`, waits for the array and the collect job, and checks that
#      the collected errors.csv is byte-identical to a local run of the same spec;
#   2. submits it again on a fresh directory (one element at a time), cancels one array
#      element (scancel) while it runs, resubmits with `reslim sweep --slurm` (only the
#      shard with missing tasks), and checks that the result is complete, identical, and
#      that no task that had finished was redone.
# The daemons it started are stopped however it ends. Usage: scripts/slurm-e2e.sh
# (RESLIM=path/to/reslim to skip the build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
T0=$(date +%s)
say() { echo "slurm-e2e [$(($(date +%s) - T0)) s]: $*"; }
fail() { echo "slurm-e2e: FAILED: $*" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    say "installing Slurm from apt (slurm-wlm)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
say "$(slurmctld -V)"

if [ -z "${RESLIM:-}" ]; then
    cargo build --release --quiet
    RESLIM=$ROOT/target/release/reslim
fi
SPEC=$ROOT/experiments/quick.toml

WORK=$(mktemp -d /tmp/reslim-slurm-e2e.XXXXXX)
PIDS=()
JOBS=()
cleanup() {
    local rc=$?
    if [ ${#JOBS[@]} -gt 0 ]; then scancel "${JOBS[@]}" 2>/dev/null || true; sleep 1; fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    if [ "$rc" != 0 ]; then
        echo "--- slurmctld log (tail)"; tail -n 20 "$WORK/slurmctld.log" 2>/dev/null || true
        echo "--- slurmd log (tail)"; tail -n 20 "$WORK/slurmd.log" 2>/dev/null || true
        echo "(kept $WORK)"
    else
        rm -rf "$WORK"
    fi
    say "daemons stopped"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Slurm for this host alone.
PLUGINS=$(dirname "$(find /usr/lib -name auth_munge.so -path '*slurm*' | head -n1)")
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10))
if [ -f "$PLUGINS/auth_none.so" ] && [ -f "$PLUGINS/cred_none.so" ]; then
    AUTH="AuthType=auth/none
CredType=cred/none"
else
    mkdir -p "$WORK/munge"
    chmod 700 "$WORK/munge"
    dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$WORK/munge/munge.key"
    munged --force --key-file="$WORK/munge/munge.key" --socket="$WORK/munge/socket" \
        --pid-file="$WORK/munge/pid" --log-file="$WORK/munge/log" --seed-file="$WORK/munge/seed"
    PIDS+=("$(cat "$WORK/munge/pid")")
    AUTH="AuthType=auth/munge
AuthInfo=socket=$WORK/munge/socket
CredType=cred/munge"
fi
mkdir -p "$WORK/state" "$WORK/spool"
export SLURM_CONF=$WORK/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=reslime2e
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
$AUTH
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=e2e Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i -f "$SLURM_CONF" >>"$WORK/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" >>"$WORK/slurmd.out" 2>&1 &
PIDS+=($!)
for i in $(seq 100); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n1 || true)
    [ "$state" = idle ] && break
    [ "$i" = 100 ] && fail "the node never became idle (state '$state')"
    sleep 0.3
done
say "slurmctld and slurmd up: one node '$HOST', $CPUS CPUs, ${MEM} MB"

# Waits until job $1 has left the queue; prints its final state.
wait_job() {
    for _ in $(seq 1200); do
        if [ -z "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; then
            scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n1
            return 0
        fi
        sleep 0.5
    done
    fail "job $1 did not finish in 600 s"
}
submit() { # dir, extra flags...; sets ARRAY and COLLECT
    local out
    out=$("$RESLIM" sweep "$SPEC" --out "$@" --slurm --jobs 1)
    echo "$out" | sed 's/^/    /'
    ARRAY=$(echo "$out" | awk '/^array job/ {print $3}')
    COLLECT=$(echo "$out" | awk '/^collect job/ {print $3}')
    [ -n "$ARRAY" ] && [ -n "$COLLECT" ] || fail "no job ids from reslim sweep --slurm"
    JOBS+=("$ARRAY" "$COLLECT")
}
snapshot() { find "$1/tasks" -name records.json -printf '%P %T@ %i\n' | sort; }

# --- The local reference.
"$RESLIM" sweep "$SPEC" --out "$WORK/local" --jobs "$CPUS" >/dev/null 2>&1
say "local run done ($(ls "$WORK/local/tasks" | wc -l) tasks)"

# --- 1. The sweep through Slurm.
say "case 1: submit the quick sweep in 4 shards"
submit "$WORK/slurm" --shards 4
wait_job "$ARRAY" >/dev/null
state=$(wait_job "$COLLECT")
say "array $ARRAY and collect $COLLECT finished ($state)"
[ "$state" = JobState=COMPLETED ] || fail "collect job: $state; $(cat "$WORK"/slurm/slurm/logs/collect_*.out)"
grep -q "all 192 tasks finished" "$WORK"/slurm/slurm/logs/collect_*.out || fail "collect log: not complete"
cmp "$WORK/local/errors.csv" "$WORK/slurm/errors.csv" || fail "errors.csv differs from the local run"
say "case 1: errors.csv byte-identical to the local run ($(wc -l <"$WORK/local/errors.csv") lines)"

# --- 2. A cancelled element, then a resubmission.
say "case 2: submit again on a fresh directory, one element at a time"
OUT=$WORK/fault
submit "$OUT" --shards 4 --max-parallel 1
VICTIM=""
for _ in $(seq 6000); do
    running=$(squeue -h -r -j "$ARRAY" -t RUNNING -o %K 2>/dev/null | head -n1 || true)
    if [ -n "$running" ] && [ "$running" != 0 ]; then
        # The element's shard is running alone: cancel it once it finished a task.
        base=$(find "$OUT/tasks" -maxdepth 1 -name 'r*' 2>/dev/null | wc -l)
        now=$base
        for _ in $(seq 2000); do
            now=$(find "$OUT/tasks" -maxdepth 1 -name 'r*' | wc -l)
            [ "$now" -gt "$base" ] && break
            sleep 0.01
        done
        scancel "${ARRAY}_${running}"
        say "case 2: element $running running, $((now - base)) of its tasks finished: scancel ${ARRAY}_${running}"
        VICTIM=$running
        break
    fi
    sleep 0.05
done
[ -n "$VICTIM" ] || fail "no array element was seen running"
say "case 2: cancelled element ${ARRAY}_$VICTIM while it ran"
wait_job "$ARRAY" >/dev/null
state=$(wait_job "$COLLECT")
grep -q "reslim: tasks are missing" "$OUT"/slurm/logs/collect_*.out ||
    fail "the collect job did not report missing tasks ($state)"
status=$("$RESLIM" sweep "$SPEC" --out "$OUT" --status 2>&1 || true)
echo "$status" | grep -v '^shard' | sed 's/^/    /'
echo "$status" | grep -q "in shard(s) $VICTIM of 4" || fail "expected only shard $VICTIM incomplete"
echo "$status" | grep -q "^shard $VICTIM/4: [1-9][0-9]*/[0-9]* finished; missing" ||
    fail "the cancel did not land mid-shard: $(echo "$status" | grep "^shard $VICTIM/4" | cut -c1-40)"
before=$(snapshot "$OUT")
nbefore=$(echo "$before" | wc -l)
say "case 2: $nbefore of 192 tasks finished after the cancel; resubmitting"
rm -f "$OUT"/slurm/logs/collect_*.out
submit "$OUT"
grep -q "^#SBATCH --array=$VICTIM$" "$OUT/slurm/array.sbatch" ||
    fail "the resubmission should run shard $VICTIM alone: $(grep -- --array "$OUT/slurm/array.sbatch")"
wait_job "$ARRAY" >/dev/null
state=$(wait_job "$COLLECT")
[ "$state" = JobState=COMPLETED ] || fail "collect job after resubmission: $state"
after=$(snapshot "$OUT")
missing=$(comm -23 <(echo "$before") <(echo "$after") | wc -l)
[ "$missing" = 0 ] || fail "$missing finished task(s) were redone or lost"
nafter=$(echo "$after" | wc -l)
[ "$nafter" = 192 ] || fail "$nafter of 192 tasks after the resubmission"
cmp "$WORK/local/errors.csv" "$OUT/errors.csv" || fail "errors.csv differs from the local run"
say "case 2: resubmission ran $((nafter - nbefore)) task(s) (shard $VICTIM), redid none of the $nbefore finished; errors.csv byte-identical to the local run"
say "PASSED"
