"""A real ``mlflow server`` for tests: sqlite backend and artifact store under a tmp folder, a free port on
127.0.0.1, killed (SIGKILL, its whole process group: ``mlflow server`` runs uvicorn as a child) and started again
on the same port and folders, as a server that dies and returns."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_TIMEOUT = 120  # seconds for /health to answer (about 6 s on an idle machine, 25 s on a busy 2-core one)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.artifacts = self.root / "artifacts"
        self.backend = f"sqlite:///{self.root / 'mlflow.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.starts = 0

    def start(self) -> "MlflowServer":
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        cmd = [str(mlflow_cli), "server", "--backend-store-uri", self.backend, "--artifacts-destination",
               str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: "
                                   f"{(self.root / f'server-{self.starts}.log').read_text()[-2000:]}")
            if self.healthy():
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"mlflow server did not answer /health within {START_TIMEOUT} s")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL to the server and its uvicorn worker; returns once the port no longer answers."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None
        deadline = time.monotonic() + 30
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.1)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.url)
