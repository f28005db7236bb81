"""Process launch and the environment mapping for distributed training, in one place.

Locally ``electra-ds launch --nproc-per-node N -- pretrain ...`` starts N processes with torchrun (run in this
process, so that a rank's own clear error, not torchrun's traceback, ends the launch);
inside a SLURM allocation (``SLURM_JOB_ID`` set) it starts them with
``srun -n <nodes x N> -N <nodes> --ntasks-per-node N -c <cpus> --kill-on-bad-exit=1`` instead
(the rule's ``{resources.mpi} -n {resources.tasks}`` pattern; ``--srun`` takes the rule's ``mpi``
resource, e.g. ``srun --mpi=pmix`` on sites that need it), and runs a single process (1 node x 1) directly:
that job is a plain one-task job, whose shell line the SLURM plugin already runs in a ``srun -n1`` step.
Each started process calls :func:`setup_env`, which maps SLURM's variables (SLURM_PROCID,
SLURM_LOCALID, SLURM_NTASKS, the job's first node, a port derived from the job id) onto the
torch.distributed ones (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and gives a single
process started without a launcher a one-process world (DeepSpeed otherwise looks for MPI).

The ranks' collectives on small Python objects (:func:`broadcast`, :func:`all_gather`, :func:`agree`) and the
watchdog that ends a run whose ranks stopped answering (:class:`StallWatch`) are here too.

The checks the workflow runs before it submits anything to SLURM are in :mod:`electra_ds.pipeline.slurm_preflight`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import open_nofollow


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

    while True:
        time.sleep(WATCH_INTERVAL_S)
        if os.getppid() != parent:
            _launcher_gone(parent)


def _launcher_gone(parent: int) -> None:

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
    python = [sys.executable, "-m", "electra_ds", *stage_args]
    total = nproc_per_node * nnodes
    if launcher == "auto":
        if not environ.get("SLURM_JOB_ID"):
            launcher = "torchrun"
        else:  # one process in a SLURM job runs right here: a one-task job is not an MPI job for the SLURM plugin,
            # which runs its shell line in a `srun -n1` step already (a nested srun would wait for that step's CPUs)
            launcher = "srun" if total > 1 else "none"
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
                   help="auto: srun inside a SLURM allocation (one process: run it directly), else torchrun")
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
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    # The ranks run `python -m electra_ds`, which would put the working directory first on sys.path: a job run in a
    # checkout (Snakemake's working directory) would then import the checkout's package, not the installed one this
    # launch runs (a container image's copy, or a wheel). Python >= 3.11 leaves the working directory out with this.
    os.environ.setdefault("PYTHONSAFEPATH", "1")
    if cmd[1:3] == ["-m", "torch.distributed.run"]:
        return _torchrun(cmd[3:])
    os.execvp(cmd[0], cmd)  # replace this process: signals (SLURM's SIGTERM) reach the launcher


USER_ERROR_STATUS = 2  # what electra_ds.cli returns for a UserError, after printing its one line
STALL_STATUS = 3  # what a rank's StallWatch exits with, after printing its one line
REPORTED = (USER_ERROR_STATUS, STALL_STATUS)  # a rank that ended with these has said what is wrong itself


def _drop_torchrun_failure_lines(record) -> bool:
    """torchrun's "failed (exitcode: N) local_rank: ..." line and its "Sending process N closing signal SIGTERM"
    lines: left out, because ``_torchrun`` says itself which rank failed and how (or leaves the word to a rank that
    ended with a UserError or a stall report, which has said what is wrong in one line). torchrun names the rank that
    ended *first*, which is not always the cause: a stalled rank's watchdog kills the stalled rank (exit -9) and then
    exits 3, and torchrun may see the killed one first."""
    msg = str(record.msg)
    return not (msg.startswith("Sending process") or msg.startswith("failed (exitcode:"))


def _torchrun(torchrun_args: list[str]) -> int:
    """torchrun in this process, as ``python -m torch.distributed.run`` runs it (this process is the launcher that
    SLURM's or Snakemake's signals reach, as with exec), except that a failed rank ends the launch with the rank's
    exit status and its own error, not with torchrun's ChildFailedError traceback after it."""
    from torch.distributed import run as torch_run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_drop_torchrun_failure_lines)
    try:
        torch_run.run(torch_run.parse_args(torchrun_args))
    except SignalException as exc:  # Ctrl-C or SIGTERM: torchrun passed it on to the ranks and waited for them
        name = signal.Signals(exc.sigval).name
        print(f"electra-ds launch: stopped by {name}; each rank's own last lines say where it stopped (a run "
              f"checkpoints the step it is in) -- run the same command again to resume", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()  # the root cause: the others were stopped because of it
        reported = [(r, f) for r, f in exc.failures.items() if f.exitcode in REPORTED]
        if reported:  # a rank that said what is wrong (a stalled rank's watchdog kills the stalled one first)
            rank, failure = min(reported, key=lambda item: item[1].timestamp)
        status = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -N: killed by signal N
        if status not in REPORTED:
            print(f"electra-ds launch: error: rank {rank} (pid {failure.pid}) failed with exit status "
                  f"{failure.exitcode} ({failure.signal_name() if failure.exitcode < 0 else 'its output is above'})",
                  file=sys.stderr)
        return status
    return 0


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""


# -- collectives on small Python objects (the training loop's decisions) ----------------------------------------------
def broadcast(obj, world: int):
    """rank 0's ``obj`` on every rank."""
    if world == 1:
        return obj
    import torch

    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj, world: int) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world == 1:
        return [obj]
    import torch

    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def agree(flags: list, device) -> list[bool]:
    """Every rank acts on a flag raised on any rank (one small all-reduce per step)."""
    import torch

    t = torch.tensor([float(bool(f)) for f in flags], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


# -- a stalled rank ------------------------------------------------------------------------------------------------
def process_group_timeout(collective_timeout_minutes: float):
    """The process group's own timeout: a backstop well after the StallWatch, which speaks first and clearly."""
    import datetime

    return datetime.timedelta(minutes=2 * collective_timeout_minutes + 1)


class StallWatch:
    """Ends a run whose ranks stopped making progress, with one line naming the step and the rank that did not answer.

    A rank that stops (SIGSTOP, a hung GPU, a node that froze) leaves the others waiting in their next collective,
    by default for 30 minutes and then with a backend traceback. Here every rank's thread writes a heartbeat (its
    step, the wall time, host and pid) to ``<dir>/rank-<r>.json`` about every second; the main loop reports progress
    with :meth:`progress`. When a rank has made no progress for ``timeout_s``, it reads the heartbeats: ranks whose
    heartbeat is old are the ones that stopped answering (a rank merely waiting keeps beating). The lowest live rank
    prints the message; the stalled ranks on this host are killed (a stopped process would otherwise hold its
    launcher for its kill timeout); every live rank ends with status STALL_STATUS, which the launcher passes on
    without a traceback. Checkpoints are untouched: the last complete one is what a rerun (or SLURM's requeue)
    resumes from."""

    def __init__(self, directory, rank: int, world: int, timeout_s: float, *, what: str = "pretrain",
                 kept=lambda: "the last checkpoint is kept", on_exit=lambda: None):
        self.dir, self.rank, self.world, self.timeout_s = Path(directory), rank, world, timeout_s
        self.what, self.kept, self.on_exit = what, kept, on_exit
        self.interval = max(0.05, min(1.0, timeout_s / 10))
        self.step, self.phase, self.last = 0, "starting", time.monotonic()
        self._stop = threading.Event()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._beat()
        self._thread = threading.Thread(target=self._run, name="stall-watchdog", daemon=True)
        self._thread.start()

    def progress(self, step: int, phase: str) -> None:
        self.step, self.phase, self.last = step, phase, time.monotonic()

    def stop(self) -> None:
        """Stop the watchdog and wait for its thread: a daemon thread still running when the interpreter exits
        can be torn down mid-call (pthread_exit's forced unwind), which aborted ranks at the end of a finished run
        ('terminate called without an active exception', SIGABRT; 1 in 4 two-rank runs at the study's shape)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 3 * self.interval))

    def _beat(self) -> None:
        record = {"rank": self.rank, "step": self.step, "phase": self.phase, "time": time.time(),
                  "host": socket.gethostname(), "pid": os.getpid()}
        path = self.dir / f"rank-{self.rank}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.unlink(missing_ok=True)  # a leftover, or a link planted there: removed, never written through
            with open_nofollow(tmp, "w") as out:  # (and a link planted again since is refused, not followed)
                out.write(json.dumps(record))
            os.replace(tmp, path)  # replaces a link at the name itself; never follows it
        except (OSError, UserError):
            pass  # a heartbeat that cannot be written only makes this rank look stalled to the others

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()
            if time.monotonic() - self.last > self.timeout_s:
                self._stalled()

    def _read(self) -> dict:
        out = {}
        for r in range(self.world):
            try:
                out[r] = json.loads((self.dir / f"rank-{r}.json").read_text())
            except (OSError, ValueError):
                out[r] = None
        return out

    def _stalled(self) -> None:
        beats, now = self._read(), time.time()
        stale_after = max(3 * self.interval, 2.0)
        silent = {r: b for r, b in beats.items() if b is None or now - b["time"] > stale_after}
        live = [r for r in range(self.world) if r not in silent]
        if silent:
            who = "; ".join(f"rank {r} did not answer" + (f" (its last heartbeat {now - b['time']:.0f} s ago, at step "
                                                          f"{b['step']}, {b['phase']}, pid {b['pid']} on {b['host']})"
                                                          if b else " (no heartbeat at all)")
                            for r, b in silent.items())
        else:
            behind = min(b["step"] for b in beats.values())
            who = ("every rank still answers, but rank(s) " + ", ".join(str(r) for r, b in beats.items()
                                                                         if b["step"] == behind)
                   + f" are at step {behind}: a collective that the ranks entered in a different order")
        if not live or self.rank == min(live):
            message = (f"electra-ds {self.what}: error: no progress for {time.monotonic() - self.last:.0f} s after "
                       f"step {self.step} ({self.phase}; rank {self.rank} waits in a collective): {who}; "
                       f"{self.kept()}. Fix: check that rank's node (or raise pretrain.collective_timeout_minutes, "
                       f"now {self.timeout_s / 60:g}, if a step or a save takes longer), then run the same command "
                       "again to resume")
            try:
                print(message, file=sys.stderr, flush=True)
            except Exception:
                pass
        for r, b in silent.items():
            if b and b["host"] == socket.gethostname() and _is_rank_process(b["pid"]):
                try:
                    os.kill(b["pid"], signal.SIGKILL)
                except OSError:
                    pass
        try:
            self.on_exit()
        finally:
            os._exit(STALL_STATUS)


def _is_rank_process(pid: int) -> bool:
    try:
        return b"electra_ds" in Path(f"/proc/{pid}/cmdline").read_bytes() and pid != os.getpid()
    except OSError:
        return False
