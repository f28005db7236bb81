#!/usr/bin/env bash
# CI stage: a real one-node SLURM (Debian's slurmctld + slurmd + munge), then the micro config through
# `snakemake --profile profiles/slurm --profile profiles/slurm_ci`, with pretraining as a 2-task srun job
# on CPU. Asserts from SLURM itself that every job ran under it, and from the run that pretraining saw
# world size 2. Every SLURM/snakemake call is under `timeout`; the daemons are stopped on any exit.
#
#   bash .ci/slurm.sh            (as root; installs the packages if missing; needs .venv from `make setup`)
#   KEEP_SLURM_WORK=1 bash .ci/slurm.sh   keeps the work directory (results, logs) for inspection
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-$REPO/.venv}
T() { timeout -k 10 "$@"; }
say() { echo "[slurm-ci $(date +%T)] $*"; }
start=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "slurm.sh: must run as root (it starts slurmctld/slurmd/munged)" >&2; exit 2; }
[ -x "$VENV/bin/snakemake" ] || { echo "slurm.sh: $VENV/bin/snakemake missing; run 'make setup' first" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge"
    T 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive T 600 apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
fi

WORK=$(mktemp -d /tmp/electra-ds-slurm.XXXXXX)
chmod 755 "$WORK"
CONF=/etc/slurm/slurm.conf   # the default path: srun inside jobs runs without SLURM_CONF (the plugin strips SLURM_*)
CONF_BACKUP=""
STARTED_MUNGE=""

stop_all() {
    local rc=$?
    set +e
    say "stopping SLURM (exit status $rc)"
    T 15 scancel --user "$(id -un)" >/dev/null 2>&1
    for name in slurmctld slurmd; do
        if [ -s "$WORK/$name.pid" ]; then
            pid=$(cat "$WORK/$name.pid")
            kill "$pid" 2>/dev/null
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null
        fi
    done
    if [ -n "$STARTED_MUNGE" ] && [ -s /run/munge/munged.pid ]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null
    fi
    if [ -n "$CONF_BACKUP" ]; then mv -f "$CONF_BACKUP" "$CONF"; else rm -f "$CONF"; fi
    if [ "${KEEP_SLURM_WORK:-0}" = 1 ] || [ "$rc" != 0 ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    say "done in $(( $(date +%s) - start )) s"
    exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# ---- munge (must run as the munge user) ---------------------------------------------------------
if ! T 10 munge -n </dev/null 2>/dev/null | T 10 unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || T 30 runuser -u munge -- /usr/sbin/mungekey --create 2>/dev/null || true
    install -d -o munge -g munge -m 0755 /run/munge
    T 30 runuser -u munge -- /usr/sbin/munged
    STARTED_MUNGE=1
    for _ in $(seq 1 50); do T 10 munge -n </dev/null 2>/dev/null | T 10 unmunge >/dev/null 2>&1 && break; sleep 0.2; done
fi

# ---- slurm.conf: one node, no cgroups, no accounting, job completion log in a text file ---------
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 80 / 100 ))
mkdir -p "$WORK/state" "$WORK/spool" "$WORK/log" /etc/slurm
[ -e "$CONF" ] && { CONF_BACKUP="$WORK/slurm.conf.orig"; cp -p "$CONF" "$CONF_BACKUP"; }
cat > "$CONF" <<EOF
ClusterName=ci
SlurmctldHost=$HOST(127.0.0.1)
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
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$WORK/log/jobcomp.log
EnforcePartLimits=ALL
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

say "starting slurmctld and slurmd ($HOST: $CPUS CPUs, $MEM_MB MB)"
T 30 slurmctld
T 30 slurmd
for i in $(seq 1 60); do
    state=$(T 10 sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    [ "$state" = idle ] && break
    [ "$i" = 60 ] && { echo "node never became idle (state '$state')"; tail -20 "$WORK"/log/*.log; exit 1; }
    sleep 1
done
T 10 sinfo

# ---- the live pytest checks (bad environment -> clear errors) now that SLURM answers -----------
export PATH="$VENV/bin:$PATH" DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export ELECTRA_DS_MLFLOW=1
unset MLFLOW_TRACKING_URI
say "pytest tests/test_slurm.py against the live cluster"
T 600 "$VENV/bin/python" -m pytest -q tests/test_slurm.py -p no:cacheprovider

# ---- the micro pipeline through SLURM ----------------------------------------------------------
RESULTS=$WORK/results
say "snakemake --profile profiles/slurm --profile profiles/slurm_ci (micro config)"
if ! T 1500 "$VENV/bin/snakemake" --profile profiles/slurm --profile profiles/slurm_ci \
        --configfile tests/configs/micro.yaml --config "results_dir=$RESULTS" \
        --slurm-logdir "$WORK/slurm_logs" --latency-wait 10; then
    say "snakemake failed; SLURM job logs:"
    find "$WORK/slurm_logs" -name '*.log' -exec sh -c 'echo "== $1"; tail -30 "$1"' _ {} \; 2>/dev/null
    for f in "$RESULTS"/logs/*.log "$RESULTS"/logs/*/*.log; do [ -f "$f" ] && { echo "== $f"; tail -20 "$f"; }; done
    tail -30 "$WORK/log/slurmctld.log"
    exit 1
fi

say "checking what SLURM and the run recorded"
T 120 "$VENV/bin/python" - "$WORK/log/jobcomp.log" "$RESULTS" <<'PY'
import json, re, subprocess, sys
from pathlib import Path

jobcomp, results = Path(sys.argv[1]), Path(sys.argv[2])
records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in jobcomp.read_text().splitlines() if line.strip()]
assert records, "jobcomp log is empty: no job ran under SLURM"
by_rule = {}
for rec in records:
    # the plugin puts the rule into the job's comment; scontrol still knows ended jobs (MinJobAge=3600)
    show = subprocess.run(["scontrol", "-o", "show", "job", rec["JobId"]], capture_output=True, text=True,
                          timeout=20, check=True).stdout
    info = dict(re.findall(r"(\w+)=(\S*)", show))
    rule = re.match(r"rule_([a-z]+)", info.get("Comment", "")).group(1)
    by_rule.setdefault(rule, []).append((rec, info))
    assert rec["JobState"] == "COMPLETED", (rule, rec)
expected = {"corpus": 1, "dedup": 1, "vocab": 1, "shards": 1, "probes": 1, "pretrain": 1, "export": 1,
            "finetune": 2, "evaluate": 1}
got = {rule: len(jobs) for rule, jobs in by_rule.items()}
assert got == expected, f"SLURM jobs per rule {got} != {expected}"
(rec, info), = by_rule["pretrain"]
assert info["NumTasks"] == "2", f"pretrain job had {info['NumTasks']} tasks, want 2"
print(f"SLURM ran {len(records)} jobs, all COMPLETED: {got}; pretrain job {rec['JobId']} with NumTasks=2")

log = (results / "logs/pretrain/electra.log").read_text()
launch = next(line for line in log.splitlines() if line.startswith("electra-ds launch:"))
assert " srun -n 2 -N 1 " in f" {launch.split(':', 1)[1]} ", launch
assert "world size 2," in log, "pretraining did not report world size 2"
summary = json.loads((results / "pretrain/electra/summary.json").read_text())
assert summary["world_size"] == 2 and summary["steps"] == 8, summary
print("pretraining: launched by", launch.split(":", 1)[1].split(" -m ")[0].strip(), "| world size", summary["world_size"])

from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
runs = client.search_runs([client.get_experiment_by_name("electra-ds-micro").experiment_id])
kinds = [r.data.tags.get("electra_ds.kind") for r in runs]
assert sorted(kinds) == ["model"] + ["pipeline"] + ["stage"] * 10 and all(
    r.info.status == "FINISHED" for r in runs), [(r.data.tags.get("electra_ds.rule"), r.info.status) for r in runs]
print(f"MLflow: {len(runs)} runs (1 pipeline + 10 SLURM jobs + 1 model), all FINISHED")
PY
say "SLURM CI stage passed"
