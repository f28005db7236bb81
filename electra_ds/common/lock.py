"""One pipeline at a time per results directory: ``<results_dir>/.electra-ds.lock``.

Snakemake's own lock (``.snakemake/locks``) lives in the working directory, so two checkouts writing
one results_dir never see each other. This lock lives in the results directory itself, and is taken by
the main Snakemake process when the pipeline starts (``onstart``: never for a dry run) and released when
it ends (``onsuccess`` / ``onerror``):

* ``fcntl.flock`` on a descriptor kept open for the pipeline's life. The OS drops it when the process
  dies (crash, kill -9, node reboot), so a dead pipeline never blocks the next one on the same host.
* a JSON record of the holder in the same file (host, pid, start time, working directory, checkout,
  command), for the message the second pipeline gets, and for file systems where flock does not reach
  across hosts (some NFS mounts). A record left by a process of this host whose lock is gone is stale
  and taken over with a warning; a record of another host cannot be checked from here, so it stops the
  pipeline until that host's process is gone and the file is deleted.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import link_error

LOCK_NAME = ".electra-ds.lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path("/")


def _holder_text(record: dict) -> str:
    if not record:
        return "holder unknown: its record is not written yet"
    return (f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started {record.get('started', '?')}, "
            f"working directory {record.get('cwd', '?')}, checkout {record.get('checkout', '?')}")


class ResultsLock:
    """``acquire()`` when the pipeline starts, ``release()`` when it ends; re-entrant within one process."""

    what = "pipeline"

    def __init__(self, results_dir, checkout=None):
        self.results_dir = Path(results_dir)
        self.path = self.results_dir / LOCK_NAME
        self.checkout = os.fspath(checkout) if checkout is not None else None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    # -- errors --------------------------------------------------------------------------------------
    def _unwritable(self, exc: OSError, what: str) -> UserError:
        parent = _nearest_existing(self.results_dir)
        reason = exc.strerror or str(exc)
        return UserError(
            f"the results directory {self.results_dir} cannot be used: {what} failed ({reason}: "
            f"{exc.filename or self.results_dir})", field="results_dir",
            fix=f"set results_dir (in your config file or --config results_dir=...) to a folder you can write, "
                f"or make {parent} a writable directory")

    def _busy(self, record: dict) -> UserError:
        return UserError(
            f"the results directory {self.results_dir} is in use by another pipeline ({_holder_text(record)}); "
            f"two pipelines writing one results directory would overwrite each other's files",
            field="results_dir",
            fix=f"wait for that pipeline to finish, or set another results_dir; if no such process is running "
                f"(a crash on another host), delete {self.path}")

    # -- the record ----------------------------------------------------------------------------------
    def record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "cwd": os.getcwd(), "checkout": self.checkout, "command": " ".join(sys.argv),
                "user": os.environ.get("USER") or str(os.getuid()), "slurm_job": _slurm_attempt()}

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            data = os.pread(fd, 1 << 16, 0)
            record = json.loads(data.decode("utf-8")) if data.strip() else {}
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def read_holder(self) -> dict:
        """The current holder's record ({} if none)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return {}
        try:
            return self._read(fd)
        finally:
            os.close(fd)

    # -- acquire / release ---------------------------------------------------------------------------
    def acquire(self, warn=None) -> None:
        """Create the results directory and take the lock, or raise :class:`UserError` naming the holder."""
        if self._fd is not None:
            return
        warn = warn or (lambda message: print(f"WARNING: {message}", file=sys.stderr))
        try:
            self.results_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc, "creating it") from None
        if not self.results_dir.is_dir():
            raise self._unwritable(NotADirectoryError(20, "Not a directory", str(self.results_dir)), "creating it")
        for _attempt in range(20):
            try:
                # O_NOFOLLOW: the holder record is written into this file, never through a link planted at its name
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise link_error(self.path) from None
                raise self._unwritable(exc, f"creating the lock file {LOCK_NAME}") from None
            flocked = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                record = self._read(fd)
                os.close(fd)
                raise self._busy(record) from None
            except OSError as exc:  # a file system without flock: the record alone decides
                flocked = False
                warn(f"{self.path}: flock is not supported here ({exc.strerror}); relying on the holder record")
            # the file may have been released (deleted) between open and flock: lock the file that is there now
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                self._take(fd, flocked, warn)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return
        raise UserError(f"could not take the lock {self.path}: it keeps being replaced", field="results_dir",
                        fix="check that no other pipeline is starting on this results_dir, then run again")

    def _take(self, fd: int, flocked: bool, warn) -> None:
        old = self._read(fd)
        if old and not (old.get("host") == socket.gethostname() and old.get("pid") == os.getpid()):
            if _earlier_attempt_of_this_job(old.get("slurm_job")):
                warn(f"{self.path}: took over the lock of an earlier attempt of this SLURM job ({old.get('slurm_job')}, "
                     f"host {old.get('host', '?')}, pid {old.get('pid', '?')}): a requeued job's earlier attempt is over")
            elif old.get("host") != socket.gethostname():
                # flock may not reach across hosts (NFS): a live holder there cannot be ruled out
                raise self._busy(old)
            else:
                pid = old.get("pid")
                alive = isinstance(pid, int) and pid_alive(pid)
                if alive and not flocked:  # without flock a live pid of this host may well be the holder
                    raise self._busy(old)
                # with flock on this host, a live holder would have kept it: the pid is gone or was reused
                state = "no longer holds the lock (its pid was reused)" if alive else "is no longer running"
                warn(f"{self.path}: took over a stale lock: the {self.what} that held it (pid {pid}, started "
                     f"{old.get('started', '?')}, working directory {old.get('cwd', '?')}) {state}")
        data = json.dumps(self.record(), sort_keys=True).encode("utf-8") + b"\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as exc:
            raise self._unwritable(exc, f"writing the lock file {LOCK_NAME}") from None

    def release(self) -> None:
        """Delete the lock file (if it is still ours) and drop the lock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)  # drops the flock; a waiter that opened the deleted file retries on the new one


def _slurm_attempt() -> str | None:
    """``<job id>.<restart count>`` inside a SLURM job, else None."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"{job}.{os.environ.get('SLURM_RESTART_COUNT', '0')}" if job else None


def _earlier_attempt_of_this_job(holder: str | None) -> bool:
    """The holder was an earlier attempt of the SLURM job this process runs in (a requeue starts it again, maybe
    on another node, after the earlier attempt ended): its lock is stale whatever host it names."""
    mine = _slurm_attempt()
    if not holder or not mine:
        return False
    job, _, restart = holder.partition(".")
    my_job, _, my_restart = mine.partition(".")
    return job == my_job and restart.isdigit() and my_restart.isdigit() and int(restart) < int(my_restart)


class OutputLock(ResultsLock):
    """One run per output directory: ``<parent>/.<name>.lock`` beside the stage's ``--output-dir``, held by the
    process that writes it (for pretraining, rank 0) from start to end.

    Two pretraining runs on one directory interleaved their train_log.jsonl, flipped `latest` between them and
    pruned each other's checkpoints; the second now stops at once naming the holder (host, pid, start time). The
    lock file sits beside the output directory, not in it: a fine-tuning job publishes its folder by a rename,
    and nothing a run writes is mixed with it. The mechanics (flock, the holder record, stale locks, a requeued
    SLURM job) are :class:`ResultsLock`'s."""

    what = "run"

    def __init__(self, output_dir, stage: str):
        self.output_dir = Path(output_dir)
        super().__init__(self.output_dir.parent)
        self.path = self.results_dir / f".{self.output_dir.name}.lock"
        self.stage = stage
        self.what = f"{stage} run"

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _unwritable(self, exc: OSError, what: str) -> UserError:
        return UserError(f"cannot lock the output directory: {what} failed ({exc.strerror or exc}: "
                         f"{exc.filename or self.results_dir})", path=self.output_dir,
                         fix="use an --output-dir in a folder you can write")

    def _busy(self, record: dict) -> UserError:
        return UserError(
            f"another {self.stage} run is writing this output directory ({_holder_text(record)}); two runs on one "
            "directory would interleave their logs and overwrite each other's files", path=self.output_dir,
            fix=f"wait for that run to end (or stop it), or use another --output-dir; if no such process is running "
                f"(a crash on another host), delete {self.path}")

    def remove_own_record(self) -> None:
        """Delete the lock file if this process's record is in it (a process that ends by os._exit, whose flock
        the OS drops but whose record would stay)."""
        record = self.read_holder()
        if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
            try:
                os.unlink(self.path)
            except OSError:
                pass
