"""What every test file shares: the repository root, the real-data folder, and the ways to run electra-ds:
in this process (:func:`cli`, :func:`cli_error`), as a subprocess (:func:`electra_ds`) and the workflow
(:func:`snakemake`). None of them swallows an error of the code under test.

The data builders are in ``helpers_data.py`` (demo documents and vocabulary) and ``helpers_models.py`` (a tiny
exported model, raw TSV files).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The read-only real-data folder: $ELECTRA_DS_SHARED_DATA, else ../shared/data beside the project."""
    for candidate in (os.environ.get("ELECTRA_DS_SHARED_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def shared_data() -> Path:
    """The real-data folder, or skip the test when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data folder ../shared/data is absent (set ELECTRA_DS_SHARED_DATA to use another)")
    return path


def cli(*args) -> int:
    """``electra-ds ARGS`` in this process (MLflow off unless the test turned it on); the exit status."""
    from electra_ds.cli import main

    return main([str(a) for a in args])


def cli_error(capsys, *args) -> str:
    """Run a command that must fail as a user error (exit 2); return its one-line message."""
    capsys.readouterr()
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message printed"
    return err[-1]


def electra_ds(args, env_extra=None, timeout=400, cwd=REPO) -> subprocess.CompletedProcess:
    """``python -m electra_ds ARGS`` as a subprocess (the launcher and multi-process runs need their own process)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "electra_ds", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def snakemake(configfile, *args, cores: int = 2, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    """The workflow on ``configfile`` from the repository root, with this interpreter's environment on PATH."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env_extra or {})}
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", str(configfile), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def set_field(cfg: dict, dotted: str, value) -> None:
    """Set the config field ``dotted`` (``"pretrain.max_steps"``) to ``value``, making the sections on the way."""
    node = cfg
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def config_with(tmp_path, base, name="config.yaml", **overrides) -> Path:
    """The config file ``base`` (a path, absolute or relative to the repository) with dotted-key ``overrides``
    (``**{"pretrain.max_steps": 4}``), written as ``tmp_path/name``."""
    import yaml

    cfg = yaml.safe_load((REPO / base).read_text())
    for dotted, value in overrides.items():
        set_field(cfg, dotted, value)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def micro_config(tmp_path, results=None, name="config.yaml", **overrides) -> Path:
    """tests/configs/micro.yaml (the whole DAG in a few minutes on CPU) with ``results_dir`` set to ``results``
    when given and dotted-key ``overrides``, written as ``tmp_path/name``."""
    if results is not None:
        overrides = {"results_dir": str(results), **overrides}
    return config_with(tmp_path, "tests/configs/micro.yaml", name=name, **overrides)



PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
              "no_proxy")


def direct_network(monkeypatch) -> None:
    """No proxy variables and no HF_ENDPOINT: the Hub check connects straight to huggingface.co:443."""
    for var in (*PROXY_VARS, "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)


def refuse_connections(monkeypatch, error: str = "connection refused") -> list:
    """``socket.create_connection`` refuses every address (no test touches the network); the list it returns fills
    with the (host, port) pairs asked, in order."""
    import socket

    asked = []

    def refuse(address, timeout=None, *args, **kwargs):
        asked.append(address)
        raise OSError(error)

    monkeypatch.setattr(socket, "create_connection", refuse)
    return asked
