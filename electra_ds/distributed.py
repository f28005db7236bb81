"""Process launch and the environment mapping for distributed training, in one place.

Locally ``electra-ds launch --nproc-per-node N -- pretrain ...`` starts N processes with torchrun;
inside a SLURM allocation (``SLURM_JOB_ID`` set) it starts them with
``srun -n <nodes x N> -N <nodes> --ntasks-per-node N -c <cpus> --kill-on-bad-exit=1`` instead
(the rule's ``{resources.mpi} -n {resources.tasks}`` pattern; ``--srun`` takes the rule's ``mpi``
resource, e.g. ``srun --mpi=pmix`` on sites that need it).
Each started process calls :func:`setup_env`, which maps SLURM's variables (SLURM_PROCID,
SLURM_LOCALID, SLURM_NTASKS, the job's first node, a port derived from the job id) onto the
torch.distributed ones (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and gives a single
process started without a launcher a one-process world (DeepSpeed otherwise looks for MPI).

The ``slurm_*``/``check_*`` functions at the end are the preflight checks the Snakemake workflow runs
before submitting anything with the SLURM profile: SLURM reachable, partition present, GPUs on it,
a world size that divides the global batch. Each failure is a :class:`UserError` naming the fix.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys

from electra_ds.errors import UserError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_first_node(nodelist: str) -> str:
    """First host of a SLURM nodelist such as ``gpu[003-005,007],cpu01`` (scontrol if available)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    first = nodelist.split(",")[0]
    if "[" in first:
        prefix, rest = first.split("[", 1)
        first = prefix + rest.rstrip("]").split(",")[0].split("-")[0]
    return first


def slurm_port(job_id: str) -> int:
    """A rendezvous port derived from the job id, so concurrent jobs on one node do not collide."""
    return 15000 + int(job_id) % 20000


def setup_env(environ=os.environ) -> dict:
    """Fill RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT and return them as ints/strs."""
    if "RANK" not in environ and "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
        environ["RANK"] = environ["SLURM_PROCID"]
        environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
        environ["WORLD_SIZE"] = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))
        environ.setdefault("MASTER_ADDR", slurm_first_node(environ.get("SLURM_STEP_NODELIST",
                                                                       environ.get("SLURM_JOB_NODELIST", "localhost"))))
        environ.setdefault("MASTER_PORT", str(slurm_port(environ.get("SLURM_JOB_ID", "0"))))
    if "RANK" not in environ:
        environ["RANK"], environ["LOCAL_RANK"], environ["WORLD_SIZE"] = "0", "0", "1"
        environ.setdefault("MASTER_ADDR", "127.0.0.1")
        environ.setdefault("MASTER_PORT", str(_free_port()))
    environ.setdefault("LOCAL_RANK", "0")
    return {
        "rank": int(environ["RANK"]), "local_rank": int(environ["LOCAL_RANK"]),
        "world_size": int(environ["WORLD_SIZE"]),
        "master_addr": environ.get("MASTER_ADDR"), "master_port": environ.get("MASTER_PORT"),
    }


def started_by_launcher(environ=os.environ) -> bool:
    """True in a process torchrun (TORCHELASTIC_RUN_ID) or srun (a SLURM step task) started."""
    return bool(environ.get("TORCHELASTIC_RUN_ID")) or ("SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ)


PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 0.5


def exit_with_launcher(environ=os.environ) -> bool:
    """Make this rank die with the launcher that started it (torchrun, or slurmstepd under srun).

    torchrun starts every worker in a session of its own, so a SIGKILL of the launcher (or of its process
    group: Snakemake's cancel, a killed job shell) would leave the ranks training, and checkpointing, with
    nobody to receive their results. Two mechanisms, both installed here at the start of the stage:

    * under torchrun, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills this process the moment its parent dies; works
      even while Python holds the GIL in a long C call. It fires when the parent *thread* that forked us
      exits; torchrun forks from its main thread, but a launcher forking from a short-lived thread would kill
      healthy ranks, hence also
    * a daemon thread that polls ``os.getppid()`` every 0.5 s against the pid seen at start (reparenting to
      init or a subreaper means the launcher is gone) and then ends this rank with SIGKILL to its own process
      group when it leads one (torchrun's workers do: any compiler child goes too), else ``os._exit``.

    Both end the rank without a checkpoint, on purpose: SIGTERM would go through StopSignal and write one,
    but with the launcher gone the run has already failed; the last complete checkpoint stays intact and a
    rerun resumes from it (a save cut off half-way has no manifest and is skipped). Returns whether installed.
    """
    if not started_by_launcher(environ) or not sys.platform.startswith("linux"):
        return False
    import ctypes
    import signal
    import threading

    parent = os.getppid()
    if environ.get("TORCHELASTIC_RUN_ID"):  # torchrun forks from its main thread; slurmstepd's threading is its
        try:                                # own business (and it kills its tasks itself): watchdog only there
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog alone still covers it
    if parent == 1 or os.getppid() != parent:  # the launcher died before (or while) we got here
        _launcher_gone(parent)
    threading.Thread(target=_watch_parent, args=(parent,), name="launcher-watchdog", daemon=True).start()
    return True


def _watch_parent(parent: int) -> None:
    import time

    while True:
        time.sleep(WATCH_INTERVAL_S)
        if os.getppid() != parent:
            _launcher_gone(parent)


def _launcher_gone(parent: int) -> None:
    import signal

    try:
        print(f"electra-ds: the launcher (pid {parent}) is gone; rank {os.environ.get('RANK', '?')} stops now "
              "without a checkpoint (the last complete checkpoint is kept; rerun to resume)",
              file=sys.stderr, flush=True)
    except Exception:  # stderr may be a pipe nobody reads any more
        pass
    try:
        if os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
    except OSError:
        pass
    os._exit(1)


def launch_command(stage_args: list[str], nproc_per_node: int, nnodes: int = 1, launcher: str = "auto",
                   environ=os.environ, srun: str = "srun", cpus_per_task: int = 0) -> list[str]:
    """The command that runs ``electra-ds <stage_args>`` on nnodes x nproc_per_node processes.

    ``srun`` is the SLURM starter (the rule's ``mpi`` resource); ``cpus_per_task`` > 0 is passed to it
    as ``-c`` (since SLURM 22.11 a step no longer inherits the job's --cpus-per-task).
    """
    if launcher == "auto":
        launcher = "srun" if environ.get("SLURM_JOB_ID") else "torchrun"
    python = [sys.executable, "-m", "electra_ds", *stage_args]
    total = nproc_per_node * nnodes
    if launcher == "srun":
        starter = shlex.split(srun or "srun")
        if not shutil.which(starter[0]):
            raise UserError(f"launcher 'srun' requested but {starter[0]} is not on PATH", field="pretrain.launcher",
                            fix="run inside a SLURM allocation (the SLURM profile) or set pretrain.launcher: torchrun")
        cpus = ["-c", str(cpus_per_task)] if cpus_per_task > 0 else []
        return [*starter, "-n", str(total), "-N", str(nnodes), f"--ntasks-per-node={nproc_per_node}", *cpus,
                "--kill-on-bad-exit=1", *python]
    if launcher == "torchrun":
        if nnodes > 1:
            raise UserError(f"torchrun here starts one node; {nnodes} nodes need SLURM (srun)",
                            field="pretrain.nodes", fix="submit with the SLURM profile or set pretrain.nodes: 1")
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={total}",
                "-m", "electra_ds", *stage_args]
    if launcher == "none":
        if total != 1:
            raise UserError("launcher 'none' runs one process", field="pretrain.launcher",
                            fix="use torchrun or srun for more than one process")
        return python
    raise UserError(f"unknown launcher {launcher!r}", field="pretrain.launcher", fix="use auto, torchrun, srun or none")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes per node (one per GPU)")
    p.add_argument("--nnodes", type=int, default=1, help="number of nodes")
    p.add_argument("--launcher", default="auto", choices=["auto", "torchrun", "srun", "none"],
                   help="auto: srun inside a SLURM allocation, else torchrun")
    p.add_argument("--srun", default="srun", help="SLURM starter command (the rule's mpi resource), e.g. 'srun'")
    p.add_argument("--cpus-per-task", type=int, default=0, help="CPUs per process under srun (0 = SLURM default)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- <stage> [stage options]")


def run_launch(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("electra-ds launch: error: give the stage to run after --", file=sys.stderr)
        return 2
    try:
        cmd = launch_command(command, args.nproc_per_node, args.nnodes, args.launcher,
                             srun=args.srun, cpus_per_task=args.cpus_per_task)
    except UserError as exc:
        print(f"electra-ds launch: error: {exc}", file=sys.stderr)
        return 2
    print("electra-ds launch:", " ".join(cmd), file=sys.stderr, flush=True)
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    os.execvpe(cmd[0], cmd, env)  # replace this process: signals (SLURM's SIGTERM) reach the launcher


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""


# ---- SLURM preflight: checks the workflow runs before it submits anything -------------------------

def _slurm_query(cmd: list[str], run=subprocess.run, timeout: int = 20) -> str:
    """stdout of a SLURM client command, or a UserError saying SLURM is not usable here."""
    fix = ("run on a SLURM login node (sbatch, sinfo and squeue on PATH, slurmctld reachable), "
           "or drop --profile/--executor slurm to run locally")
    try:
        res = run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"the SLURM executor is selected but {cmd[0]} is not installed here", fix=fix)
    except subprocess.TimeoutExpired:
        raise UserError(f"the SLURM executor is selected but `{' '.join(cmd)}` did not answer in {timeout} s",
                        fix=fix)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise UserError(f"the SLURM executor is selected but `{' '.join(cmd)}` failed"
                        + (f": {detail[-1]}" if detail else ""), fix=fix)
    return res.stdout


def gres_gpus(gres: str) -> int:
    """GPUs per node in a sinfo %G field: ``gpu:a100:8(S:0-1),nvme:1`` -> 8, ``(null)`` -> 0."""
    best = 0
    for item in gres.split(","):
        item = item.split("(")[0].strip()
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 else "1"
        best = max(best, int(count) if count.isdigit() else 1)
    return best


def parse_partitions(sinfo_out: str) -> tuple[dict[str, int], str | None]:
    """``sinfo -h -o '%P|%G'`` -> ({partition: max GPUs per node}, default partition)."""
    gpus: dict[str, int] = {}
    default = None
    for line in sinfo_out.splitlines():
        if "|" not in line:
            continue
        name, gres = line.strip().split("|", 1)
        if name.endswith("*"):
            name = name[:-1]
            default = name
        gpus[name] = max(gpus.get(name, 0), gres_gpus(gres))
    return gpus, default


def check_slurm_jobs(jobs: list[dict], run=subprocess.run, which=shutil.which) -> None:
    """Preflight for the SLURM executor. ``jobs``: one dict per job to submit with keys
    rule, partition, account, gpus (GPUs per node the job asks for)."""
    for tool in ("sbatch", "sinfo", "squeue"):
        if not which(tool):
            raise UserError(f"the SLURM executor is selected (profiles/slurm) but `{tool}` is not on PATH",
                            fix="run on a SLURM login node, or run locally without --profile profiles/slurm")
    partitions, default = parse_partitions(_slurm_query(["sinfo", "-h", "-o", "%P|%G"], run=run))
    for job in jobs:
        for key, value in (("slurm_partition", job.get("partition")), ("slurm_account", job.get("account"))):
            if isinstance(value, str) and value.startswith("<"):
                raise UserError(f"rule {job['rule']}: resource {key} is still the placeholder {value!r}",
                                field=key, fix=f"set {key} for your site in your SLURM profile "
                                               "(see profiles/README.md)")
        partition = job.get("partition") or default
        if partition is None:
            raise UserError(f"rule {job['rule']}: no partition given and the cluster has no default partition",
                            field="slurm_partition", fix="set default-resources: slurm_partition in your profile")
        if partition not in partitions:
            raise UserError(f"rule {job['rule']}: partition {partition!r} does not exist (sinfo lists: "
                            f"{', '.join(sorted(partitions)) or 'none'})", field="slurm_partition",
                            fix="set slurm_partition in your SLURM profile to one of those")
        if job.get("gpus", 0) > partitions[partition]:
            have = partitions[partition]
            raise UserError(f"rule {job['rule']} asks for {job['gpus']} GPUs per node but partition {partition!r} "
                            + (f"has at most {have} per node" if have else "has no GPUs (sinfo %G shows no gpu GRES)"),
                            field="pretrain.gpus_per_node",
                            fix="submit pretrain to a GPU partition (set-resources: pretrain: slurm_partition: ... "
                                "in your profile) or set pretrain.gpus_per_node: 0 for CPU processes")


def check_world_size(global_batch: int, micro_batch: int, nodes: int, processes_per_node: int,
                     gpus_per_node: int = 0) -> int:
    """World size = nodes x processes_per_node; it must divide the global batch (with the micro-batch)."""
    from electra_ds.ds_config import derive_batch

    if gpus_per_node and processes_per_node != gpus_per_node:
        raise UserError(f"processes_per_node {processes_per_node} != gpus_per_node {gpus_per_node}: "
                        "pretraining starts one process per GPU", field="pretrain.processes_per_node",
                        fix=f"set pretrain.processes_per_node: {gpus_per_node}")
    world = nodes * processes_per_node
    try:
        derive_batch(global_batch, micro_batch, world)
    except UserError:
        raise UserError(f"world size {world} (nodes {nodes} x processes_per_node {processes_per_node}) "
                        f"with micro-batch {micro_batch or 'auto'} does not divide the global batch {global_batch}",
                        field="pretrain.global_batch_size",
                        fix="make global_batch_size a multiple of micro_batch_size x nodes x processes_per_node")
    return world
