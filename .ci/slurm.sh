#!/usr/bin/env bash
# CI stage: a real two-node SLURM on one machine (Debian's slurmctld + slurmd + munge). Each node is a slurmd in
# a network namespace of its own (its own address and hostname) and the controller with the "login node"
# (where sbatch, squeue and Snakemake run) is a third namespace; the three meet only over a bridge this script
# creates, so srun, the torch.distributed rendezvous and gloo go over a network link as on a real cluster.
#
#   1. pytest tests/test_slurm.py against the live cluster (preflight errors)
#   2. the micro config through `snakemake --profile profiles/slurm --profile profiles/slurm_ci` with
#      tests/configs/micro_two_nodes.yaml laid over it: pretraining is ONE job of 2 nodes x 1 process. Asserted
#      from SLURM's records (jobcomp, scontrol) and the run: every job COMPLETED, the pretraining job had
#      NumNodes=2 and 2 tasks, rank 0 ran in node 1's namespace and rank 1 in node 2's (hostnames eds-n1/eds-n2),
#      world size 2, rank 1 met the rendezvous at node 1's address (10.77.0.1, not 127.0.0.1) and gloo pairs
#      joined the two addresses (.ci/netns_watch.py reads the ranks' sockets from /proc)
#   3. the same pretraining arguments as one job of 1 node x 2 processes (srun -N 1 -n 2): same losses
#   4. requeue: `scontrol requeue` of the running pretraining job (preemption); it starts again, resumes from its
#      latest checkpoint and ends with the uninterrupted run's losses; Snakemake sees one successful job
#   5. node loss: node 2's slurmd and all its processes are killed mid-run; the job fails (time measured and
#      bounded), node 2 comes back, Snakemake's restart-times resubmits the job, it resumes, same losses
#   6. one task: pretraining of 1 node x 1 process (the electra-small preset's shape; tests/configs/micro_one_task.yaml
#      over the same configs) through the same profiles: a plain one-task job (the plugin refuses an MPI job of one
#      task) that COMPLETED with NumTasks=1, its one process started by `electra-ds launch` itself, world size 1
#      (run before 4 and 5, and also with SLURM_CI_FAULTS=0)
# Every SLURM/Snakemake call is under `timeout`; daemons, namespaces, links and files are removed on any exit.
#
#   bash .ci/slurm.sh            (as root; installs the packages if missing; needs .venv from `make setup`)
#   KEEP_SLURM_WORK=1 bash .ci/slurm.sh   keeps the work directory (results, logs) for inspection
#   SLURM_CI_FAULTS=0 bash .ci/slurm.sh   skips 4 and 5 (requeue, node loss)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-$REPO/.venv}
T() { timeout -k 10 "$@"; }
say() { echo "[slurm-ci $(date +%T)] $*"; }
start=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "slurm.sh: must run as root (namespaces, slurmctld/slurmd/munged)" >&2; exit 2; }
[ -x "$VENV/bin/snakemake" ] || { echo "slurm.sh: $VENV/bin/snakemake missing; run 'make setup' first" >&2; exit 2; }
for tool in ip unshare nsenter; do
    command -v $tool >/dev/null || { echo "slurm.sh: $tool missing (iproute2, util-linux)" >&2; exit 2; }
done

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge"
    T 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive T 600 apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
fi

# ---- the cluster's names and addresses: all inside namespaces this script creates ------------------------
NS_CTL=edsci-ctl                 # controller + login node: slurmctld, sbatch/squeue, Snakemake
NS=(edsci-n1 edsci-n2)           # compute nodes: one slurmd each
NODE=(eds-n1 eds-n2)             # SLURM node names = the namespaces' hostnames (unshare --uts)
ADDR=(10.77.0.1 10.77.0.2)
CTL_ADDR=10.77.0.254
HOST=$(hostname -s)              # slurmctld checks that SlurmctldHost names the host it runs on

WORK=$(mktemp -d /tmp/electra-ds-slurm.XXXXXX)
chmod 755 "$WORK"
CONF=/etc/slurm/slurm.conf   # the default path: srun inside jobs runs without SLURM_CONF (the plugin strips SLURM_*)
CONF_BACKUP=""
STARTED_MUNGE=""
WATCH_PID=""
declare -A TIMES=()

ns_pids() { ip netns pids "$1" 2>/dev/null || true; }
kill_ns() {  # every process of a namespace: TERM, then KILL after 5 s
    local pids
    pids=$(ns_pids "$1"); [ -n "$pids" ] || return 0
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 25); do [ -n "$(ns_pids "$1")" ] || return 0; sleep 0.2; done
    pids=$(ns_pids "$1"); [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
}

stop_all() {
    local rc=$?
    set +e
    say "stopping SLURM and removing the namespaces (exit status $rc)"
    [ -e "/run/netns/$NS_CTL" ] && CT 15 scancel --user "$(id -un)" >/dev/null 2>&1
    [ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null
    for ns in "${NS[@]}" "$NS_CTL"; do kill_ns "$ns"; done   # slurmd, slurmstepd, job processes; then slurmctld
    for ns in "${NS[@]}" "$NS_CTL"; do
        [ -e "/run/netns/$ns" ] && ip netns delete "$ns"      # takes its end of the veth pair (and the bridge)
    done
    if [ -n "$STARTED_MUNGE" ] && [ -s /run/munge/munged.pid ]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null
    fi
    if [ -n "$CONF_BACKUP" ]; then mv -f "$CONF_BACKUP" "$CONF"; else rm -f "$CONF"; fi
    if [ "${KEEP_SLURM_WORK:-0}" = 1 ] || [ "$rc" != 0 ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    for k in "${!TIMES[@]}"; do say "time: $k ${TIMES[$k]}"; done
    say "done in $(( $(date +%s) - start )) s"
    exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

for ns in "$NS_CTL" "${NS[@]}"; do
    if [ -e "/run/netns/$ns" ]; then
        [ -z "$(ns_pids "$ns")" ] || { echo "slurm.sh: namespace $ns is in use (another run of this stage?)" >&2; exit 2; }
        ip netns delete "$ns"   # left by a run that was killed before its trap
    fi
done

# ---- network: a bridge in the controller's namespace, one veth pair to each node ---------------------------
ip netns add "$NS_CTL"
ip -n "$NS_CTL" link set lo up
ip -n "$NS_CTL" link add br0 type bridge
ip -n "$NS_CTL" addr add "$CTL_ADDR/24" dev br0
ip -n "$NS_CTL" link set br0 up
for i in 0 1; do
    ip netns add "${NS[i]}"
    ip -n "${NS[i]}" link set lo up
    ip -n "$NS_CTL" link add "port$i" type veth peer name eth0 netns "${NS[i]}"
    ip -n "$NS_CTL" link set "port$i" master br0 up
    ip -n "${NS[i]}" addr add "${ADDR[i]}/24" dev eth0
    ip -n "${NS[i]}" link set eth0 up
done
# The cluster's /etc/hosts (node names -> namespace addresses), seen only by processes in the namespaces.
cat > "$WORK/hosts" <<EOF
127.0.0.1 localhost
$CTL_ADDR $HOST eds-ctl
${ADDR[0]} ${NODE[0]}
${ADDR[1]} ${NODE[1]}
EOF
# A command "on" a machine of the cluster: in namespace $1's network, with hostname $2 (its own UTS namespace)
# and the cluster's /etc/hosts (bind-mounted in its own mount namespace). Not `ip netns exec`: that remounts
# /sys, which hides the cgroup mounts slurmd needs.
in_ns() {
    local ns=$1 name=$2; shift 2
    nsenter --net="/run/netns/$ns" unshare --mount --uts --propagation private \
        sh -c 'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"' "$WORK/hosts" "$name" "$@"
}
CT() { in_ns "$NS_CTL" "$HOST" timeout -k 10 "$@"; }   # a command on the login node, bounded

# ---- munge (must run as the munge user; its socket is a file, reachable from every namespace) -------------
if ! T 10 munge -n </dev/null 2>/dev/null | T 10 unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || T 30 runuser -u munge -- /usr/sbin/mungekey --create 2>/dev/null || true
    install -d -o munge -g munge -m 0755 /run/munge
    T 30 runuser -u munge -- /usr/sbin/munged
    STARTED_MUNGE=1
    for _ in $(seq 1 50); do T 10 munge -n </dev/null 2>/dev/null | T 10 unmunge >/dev/null 2>&1 && break; sleep 0.2; done
fi

# ---- slurm.conf: two nodes, no cgroups, no accounting, job completion log in a text file ------------------
# Faster than SLURM's defaults so the fault checks take seconds: a dead node is DOWN after SlurmdTimeout=10 s
# (default 300), a requeued job may start again 21 s after the requeue (cred_expire+1; default 121 s), and the
# scheduler looks at pending jobs every 5 s (default 60).
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 40 / 100 ))   # each node: 40% of the machine
mkdir -p "$WORK/state" "$WORK/spool/${NODE[0]}" "$WORK/spool/${NODE[1]}" "$WORK/log" /etc/slurm
[ -e "$CONF" ] && { CONF_BACKUP="$WORK/slurm.conf.orig"; cp -p "$CONF" "$CONF_BACKUP"; }
cat > "$CONF" <<EOF
ClusterName=ci
SlurmctldHost=$HOST($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
SlurmdTimeout=10
KillWait=10
AuthInfo=cred_expire=20
SchedulerParameters=sched_interval=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$WORK/log/jobcomp.log
EnforcePartLimits=ALL
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool/%n
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.%n.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.%n.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=${NODE[0]} NodeHostname=${NODE[0]} NodeAddr=${ADDR[0]} CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=${NODE[1]} NodeHostname=${NODE[1]} NodeAddr=${ADDR[1]} CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

start_node() {  # slurmd of node $1 (0 or 1), in its namespace, under its own hostname
    in_ns "${NS[$1]}" "${NODE[$1]}" timeout -k 10 30 slurmd -N "${NODE[$1]}"
}
node_state() { CT 10 sinfo -h -n "$1" -o %t 2>/dev/null | head -1 || true; }
wait_idle() {   # node names...
    for node in "$@"; do
        for i in $(seq 1 60); do
            state=$(node_state "$node")
            [ "$state" = idle ] && break
            [ "$i" = 60 ] && { echo "$node never became idle (state '$state')"; tail -20 "$WORK"/log/*.log; exit 1; }
            sleep 1
        done
    done
}

say "starting slurmctld ($NS_CTL, $CTL_ADDR) and slurmd ${NODE[0]} (${ADDR[0]}), ${NODE[1]} (${ADDR[1]}): $CPUS CPUs, $MEM_MB MB each"
CT 30 slurmctld
start_node 0
start_node 1
wait_idle "${NODE[@]}"
CT 10 sinfo -N -o "%N %t %c %m %o"

export PATH="$VENV/bin:$PATH" DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export ELECTRA_DS_MLFLOW=1
unset MLFLOW_TRACKING_URI
# watches the pretraining ranks in the node namespaces (rank, node, hostname, sockets) for the checks below
"$VENV/bin/python" .ci/netns_watch.py "$WORK/ranks.json" "${NS[0]}=${NODE[0]}" "${NS[1]}=${NODE[1]}" &
WATCH_PID=$!
CHECK() { CT 120 "$VENV/bin/python" .ci/slurm_checks.py "$@"; }
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ---- 1. the live pytest checks (bad environment -> clear errors) now that SLURM answers --------------------
t=$(date +%s)
say "pytest tests/test_slurm.py against the live cluster"
CT 600 "$VENV/bin/python" -m pytest -q tests/test_slurm.py -p no:cacheprovider
TIMES[1-pytest]=$(elapsed $t)

# ---- 2. the micro pipeline through SLURM, pretraining on both nodes ---------------------------------------
RESULTS=$WORK/results
SNAKEMAKE=("$VENV/bin/snakemake" --profile profiles/slurm --profile profiles/slurm_ci
           --configfile tests/configs/micro.yaml tests/configs/micro_two_nodes.yaml
           --config "results_dir=$RESULTS" --slurm-logdir "$WORK/slurm_logs" --latency-wait 10)
show_logs() {
    find "$WORK/slurm_logs" -name '*.log' -exec sh -c 'echo "== $1"; tail -30 "$1"' _ {} \; 2>/dev/null
    for f in "$RESULTS"/logs/*.log "$RESULTS"/logs/*/*.log; do [ -f "$f" ] && { echo "== $f"; tail -20 "$f"; }; done
    tail -30 "$WORK/log/slurmctld.log"
}
wait_job() {  # job id, limit (s) -> prints the job's final state
    local t0=$SECONDS state
    while :; do
        state=$(CT 10 scontrol -o show job "$1" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
        case $state in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)
            echo "$state"; return;; esac
        (( SECONDS - t0 < $2 )) || { echo "STILL_$state"; return; }
        sleep 1
    done
}
t=$(date +%s)
say "snakemake --profile profiles/slurm --profile profiles/slurm_ci (micro config, pretraining on 2 nodes)"
CT 1500 "${SNAKEMAKE[@]}" &
snake=$!
# ---- 3. (while the pipeline goes on) the same pretraining arguments on one node with two processes ------------
for _ in $(seq 1 1500); do [ -s "$RESULTS/pretrain/electra/summary.json" ] || ! kill -0 $snake 2>/dev/null && break; sleep 1; done
ref_job=""
if [ -s "$RESULTS/pretrain/electra/summary.json" ]; then
    CHECK reference-cmd "$WORK" "$RESULTS"
    say "the same pretraining on one node with two processes: $(cat "$WORK/reference_cmd.txt")"
    ref_job=$(CT 30 sbatch --parsable -J reference -N 1 -n 2 -c 1 --mem=6000 -t 20 \
        -o "$WORK/reference.out" --export=ALL,ELECTRA_DS_MLFLOW=0 --wrap "$(cat "$WORK/reference_cmd.txt")")
fi
if ! wait $snake; then
    say "snakemake failed; SLURM job logs:"; show_logs; exit 1
fi
TIMES[2-pipeline]=$(elapsed $t)
say "checking what SLURM and the run recorded"
CHECK pipeline "$WORK" "$RESULTS"
[ -n "$ref_job" ] || exit 1
state=$(wait_job "$ref_job" 400)
[ "$state" = COMPLETED ] || { say "reference job $ref_job: $state"; tail -40 "$WORK/reference.out"; exit 1; }
grep -q "srun -n 2 -N 1 --ntasks-per-node=2" "$WORK/reference.out" || { tail -40 "$WORK/reference.out"; exit 1; }
CT 10 scontrol -o show job "$ref_job" | grep -q "NumNodes=1 .*NumTasks=2" || { CT 10 scontrol show job "$ref_job"; exit 1; }
TIMES[3-pipeline-and-one-node-reference]=$(elapsed $t)
CHECK same-losses "$WORK/reference/train_log.jsonl" "$WORK/uninterrupted_train_log.jsonl" \
    "2 nodes x 1 process vs 1 node x 2 processes"
PRETRAIN_OUT=$RESULTS/pretrain/electra

# ---- 6. one task: pretraining of 1 node x 1 process is a plain SLURM job (no mpi), its process run in the step ----
t=$(date +%s)
say "one task: pretraining of 1 node x 1 process through the same profiles"
rm -rf "$PRETRAIN_OUT"
ONE_TASK=("$VENV/bin/snakemake" --profile profiles/slurm --profile profiles/slurm_ci
          --configfile tests/configs/micro.yaml tests/configs/micro_two_nodes.yaml tests/configs/micro_one_task.yaml
          --config "results_dir=$RESULTS" --slurm-logdir "$WORK/slurm_logs" --latency-wait 10)
if ! CT 900 "${ONE_TASK[@]}" "$PRETRAIN_OUT/summary.json" > "$WORK/one_task.snakemake.log" 2>&1; then
    say "snakemake failed for the one-task pretraining"; cat "$WORK/one_task.snakemake.log"; show_logs; exit 1
fi
submitted=$(grep -o "has been submitted with SLURM jobid [0-9]*" "$WORK/one_task.snakemake.log" | awk '{print $NF}' || true)
[ "$(echo "$submitted" | wc -w)" = 1 ] || { say "expected one submitted job: '$submitted'"; cat "$WORK/one_task.snakemake.log"; exit 1; }
CHECK one-task "$RESULTS" "$submitted"
TIMES[6-one-task]=$(elapsed $t)

if [ "${SLURM_CI_FAULTS:-1}" = 1 ]; then
    pretrain_job() {  # the id of the running (or pending) pretraining job, waiting up to $1 s for it
        local t0=$SECONDS id
        while (( SECONDS - t0 < $1 )); do
            id=$(CT 10 squeue -h -o '%i %k' | awk '/rule_pretrain/ {print $1; exit}')
            [ -n "$id" ] && { echo "$id"; return; }
            sleep 0.5
        done
        return 1
    }
    wait_checkpoint() {  # until a checkpoint of step >= $1 is complete (latest names it), up to $2 s
        local t0=$SECONDS tag
        while (( SECONDS - t0 < $2 )); do
            tag=$(cat "$PRETRAIN_OUT/checkpoints/latest" 2>/dev/null || true)
            [[ $tag =~ ^step0*([0-9]+)$ ]] && (( BASH_REMATCH[1] >= $1 )) && { echo "$tag"; return; }
            sleep 0.2
        done
        return 1
    }

    # ---- 4. requeue (preemption): the job starts again and resumes ----------------------------------------
    t=$(date +%s)
    say "requeue: pretraining again; scontrol requeue once it has a checkpoint"
    rm -rf "$PRETRAIN_OUT"
    CT 900 "${SNAKEMAKE[@]}" --slurm-requeue "$PRETRAIN_OUT/summary.json" > "$WORK/requeue.snakemake.log" 2>&1 &
    snake=$!
    job=$(pretrain_job 120) || { say "no pretraining job appeared"; cat "$WORK/requeue.snakemake.log"; exit 1; }
    tag=$(wait_checkpoint 10 300) || { say "no checkpoint"; cat "$WORK/requeue.snakemake.log"; show_logs; exit 1; }
    t_requeue=$(date +%s.%N)
    CT 20 scontrol requeue "$job"
    say "requeued job $job at checkpoint $tag"
    for _ in $(seq 1 600); do  # until the job runs again
        info=$(CT 10 scontrol -o show job "$job")
        [[ $info == *JobState=RUNNING* && $info == *Restarts=1* ]] && break
        sleep 0.5
    done
    TIMES[4-requeue-to-running-again]="$(since "$t_requeue") s"
    if ! wait "$snake"; then say "snakemake failed after the requeue"; cat "$WORK/requeue.snakemake.log"; show_logs; exit 1; fi
    grep -q "1 of 1 steps (100%) done" "$WORK/requeue.snakemake.log" && ! grep -q "Error in rule" "$WORK/requeue.snakemake.log" \
        && [ "$(grep -c "has been submitted with SLURM jobid" "$WORK/requeue.snakemake.log")" = 1 ] \
        || { cat "$WORK/requeue.snakemake.log"; exit 1; }
    # SLURM's job completion log: the requeue (back to PENDING), then the run that completed
    [ "$(grep "^JobId=$job " "$WORK/log/jobcomp.log" | grep -o 'JobState=[A-Z_]*' | xargs)" = "JobState=PENDING JobState=COMPLETED" ] \
        || { grep "^JobId=$job " "$WORK/log/jobcomp.log"; exit 1; }
    CT 10 scontrol -o show job "$job" | grep -q "Restarts=1" || { CT 10 scontrol show job "$job"; exit 1; }
    CHECK resumed "$WORK" "$RESULTS" "$job"
    CHECK same-losses "$WORK/uninterrupted_train_log.jsonl" "$PRETRAIN_OUT/train_log.jsonl" "requeued vs uninterrupted"
    say "requeue: Snakemake saw one job ($job), which SLURM ran twice and which ended COMPLETED"
    TIMES[4-requeue]=$(elapsed $t)

    # ---- 5. node loss: node 2 dies mid-run; the job fails, node 2 returns, Snakemake resubmits, it resumes ----
    t=$(date +%s)
    say "node loss: pretraining again; node ${NODE[1]} killed once the job has a checkpoint"
    rm -rf "$PRETRAIN_OUT"
    CT 900 "${SNAKEMAKE[@]}" --restart-times 1 --slurm-no-requeue "$PRETRAIN_OUT/summary.json" \
        > "$WORK/nodeloss.snakemake.log" 2>&1 &
    snake=$!
    job=$(pretrain_job 120) || { say "no pretraining job appeared"; cat "$WORK/nodeloss.snakemake.log"; exit 1; }
    tag=$(wait_checkpoint 10 300) || { say "no checkpoint"; cat "$WORK/nodeloss.snakemake.log"; show_logs; exit 1; }
    t_kill=$(date +%s.%N)
    kill -9 $(ns_pids "${NS[1]}")   # slurmd, slurmstepd and rank 1: the node is gone
    say "killed every process of ${NODE[1]} at checkpoint $tag (job $job)"
    state=$(wait_job "$job" 120)
    failed_after=$(since "$t_kill")
    say "job $job ended $state ${failed_after} s after the node died"
    case $state in FAILED|NODE_FAIL) ;; *) say "job $job did not fail: $state"; exit 1;; esac
    TIMES[5-node-loss-to-job-failed]="$failed_after s ($state)"
    (( ${failed_after%.*} < 60 )) || { say "the job took ${failed_after} s to fail (bound: 60 s)"; exit 1; }
    sleep 2
    start_node 1   # the node comes back (ReturnToService=2: it rejoins when its slurmd registers)
    if ! wait "$snake"; then say "snakemake failed after the node loss"; cat "$WORK/nodeloss.snakemake.log"; show_logs; exit 1; fi
    grep -q "Trying to restart job" "$WORK/nodeloss.snakemake.log" || { cat "$WORK/nodeloss.snakemake.log"; exit 1; }
    job2=$(CT 10 squeue -h -t all -o '%i %k' | awk -v j="$job" '/rule_pretrain/ && $1 > j {print $1}' | sort -n | tail -1)
    [ -n "$job2" ] || { say "no resubmitted pretraining job"; exit 1; }
    CHECK resumed "$WORK" "$RESULTS" "$job" "$job2"
    CHECK same-losses "$WORK/uninterrupted_train_log.jsonl" "$PRETRAIN_OUT/train_log.jsonl" "node loss vs uninterrupted"
    say "node loss: job $job $state after ${failed_after} s; Snakemake resubmitted it as $job2, which resumed and COMPLETED"
    TIMES[5-node-loss]=$(elapsed $t)
fi
say "SLURM CI stage passed"
