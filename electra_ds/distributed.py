"""Process launch and the environment mapping for distributed training, in one place.

Locally ``electra-ds launch --nproc-per-node N -- pretrain ...`` starts N processes with torchrun;
inside a SLURM allocation (``SLURM_JOB_ID`` set) it starts them with ``srun -n <tasks>`` instead.
Each started process calls :func:`setup_env`, which maps SLURM's variables (SLURM_PROCID,
SLURM_LOCALID, SLURM_NTASKS, the job's first node, a port derived from the job id) onto the
torch.distributed ones (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and gives a single
process started without a launcher a one-process world (DeepSpeed otherwise looks for MPI).
"""

from __future__ import annotations

import argparse
import os
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


def launch_command(stage_args: list[str], nproc_per_node: int, nnodes: int = 1, launcher: str = "auto",
                   environ=os.environ) -> list[str]:
    """The command that runs ``electra-ds <stage_args>`` on nnodes x nproc_per_node processes."""
    if launcher == "auto":
        launcher = "srun" if environ.get("SLURM_JOB_ID") else "torchrun"
    python = [sys.executable, "-m", "electra_ds", *stage_args]
    total = nproc_per_node * nnodes
    if launcher == "srun":
        if not shutil.which("srun"):
            raise UserError("launcher 'srun' requested but srun is not on PATH", field="pretrain.launcher",
                            fix="run inside a SLURM allocation or set pretrain.launcher: torchrun")
        return ["srun", "-n", str(total), "--kill-on-bad-exit=1", *python]
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
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- <stage> [stage options]")


def run_launch(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("electra-ds launch: error: give the stage to run after --", file=sys.stderr)
        return 2
    try:
        cmd = launch_command(command, args.nproc_per_node, args.nnodes, args.launcher)
    except UserError as exc:
        print(f"electra-ds launch: error: {exc}", file=sys.stderr)
        return 2
    print("electra-ds launch:", " ".join(cmd), file=sys.stderr, flush=True)
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    os.execvpe(cmd[0], cmd, env)  # replace this process: signals (SLURM's SIGTERM) reach the launcher


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""
