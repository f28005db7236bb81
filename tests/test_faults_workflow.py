"""Faults at the workflow level: hostile or unusable paths in the config, and two pipelines on one results_dir."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, micro_config, set_field

from electra_ds.common.errors import UserError
from electra_ds.common.lock import LOCK_NAME, ResultsLock
from electra_ds.common.settings import SCHEMA_PATH
from electra_ds.pipeline.config import config_error

# these tests run Snakemake in the checkout (its .snakemake folder): `make test` runs them alone, one at a time
pytestmark = pytest.mark.workflow

# Each is a shell command if a value reaching a shell line is not quoted; {m} is the marker folder.
HOSTILE = ["$(touch {m}/{tag}1)", "`touch {m}/{tag}2`", "; touch {m}/{tag}3", "|| touch {m}/{tag}4 #"]


def hostile(markers: Path, tag: str) -> str:
    """One path component holding every injection at once (it also holds spaces)."""
    return "x " + " ".join(h.format(m=markers, tag=tag) for h in HOSTILE)


def snakemake(configfile, *args, timeout=300):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "ELECTRA_DS_MLFLOW": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *map(str, args), "--configfile", str(configfile)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def small_source(path: Path) -> Path:
    """A few distinct one-line documents: the corpus and dedup rules take a second on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    lines = [" ".join(words[(i + j * 7) % len(words)] + str(i * j % 11) for j in range(30)) for i in range(40)]
    path.write_text("\n".join(lines) + "\n")
    return path


def shell_commands(output: str) -> list[str]:
    """The shell lines a dry run with -p prints (the target rule `all` has none)."""
    lines = [line.split("Shell command: ", 1)[1] for line in output.splitlines() if "Shell command: " in line]
    return [line for line in lines if line.startswith("electra-ds ")]


# ---- 1. shell injection and unsafe paths ----------------------------------------------------------

def test_hostile_paths_run_corpus_and_dedup_without_running_commands(tmp_path):
    """results_dir and a corpus source path full of shell syntax (and spaces): the data rules run, nothing injected."""
    markers = tmp_path / "markers"
    markers.mkdir()
    results = tmp_path / "exp old" / hostile(markers, "r")
    source = small_source(tmp_path / "src dir" / (hostile(markers, "s") + ".txt"))
    config = micro_config(tmp_path, results, **{
        "corpus.sources": [{"type": "local", "paths": [str(source)], "documents": "line"}],
        "corpus.min_chars": 20})
    res = snakemake(config, f"{results}/dedup/stats.json")
    out = res.stdout + res.stderr
    assert not list(markers.iterdir()), out[-4000:]
    assert res.returncode == 0, out[-4000:]
    stats = json.loads((results / "dedup/stats.json").read_text())
    assert stats["documents_out"] > 0
    assert (results / "corpus/documents.jsonl").stat().st_size > 0
    assert (results / "logs/corpus.log").exists() and (results / "logs/dedup.log").exists()
    assert not (tmp_path / "exp").exists()  # nothing went to the part of the path before the space
    assert not (results / LOCK_NAME).exists()  # released when the pipeline ended


def test_every_shell_line_quotes_every_path(tmp_path):
    """Every rule's shell line (dry run, whole DAG, scatter/gather dedup, GLUE from a local dir, MNLI init,
    a scratch model), with hostile results_dir, ds_config and glue_dir, run through bash with a no-op
    electra-ds: no injected command runs."""
    markers = tmp_path / "markers"
    markers.mkdir()
    ds_config = tmp_path / "ds" / (hostile(markers, "d") + ".json")
    ds_config.parent.mkdir(parents=True)
    shutil.copy(REPO / "ds_configs/zero2.json", ds_config)
    glue_dir = tmp_path / "glue" / hostile(markers, "g")
    glue_dir.mkdir(parents=True)
    results = tmp_path / "res" / hostile(markers, "r")
    config = micro_config(tmp_path, results, **{
        "pretrain.ds_config": str(ds_config), "finetune.glue_dir": str(glue_dir),
        "finetune.tasks": ["probe-acceptability", "rte"], "finetune.init_from_mnli": True,
        "dedup.parts": 2, "models": {"electra": {}, "scratch": {"source": "scratch"}},
        "vocab.byte_fallback": True})
    res = snakemake(config, "-n", "-p", "--forceall")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    commands = shell_commands(out)
    rules = {cmd.split()[1] for cmd in commands}
    assert {"corpus", "scatter", "dedup", "vocab", "shards", "probes", "launch", "export", "finetune",
            "evaluate"} <= rules, rules
    assert any("--sign-only" in cmd for cmd in commands)
    assert not results.exists() and not list(markers.iterdir())  # a dry run writes nothing
    for cmd in commands:
        # the shell line as the job runs it, with electra-ds doing nothing (redirections may fail: the
        # folders do not exist; expansions, where an injection would run, come first)
        subprocess.run(["bash", "-c", "electra-ds() { :; }\n" + cmd], capture_output=True, timeout=30)
        assert not list(markers.iterdir()), cmd
    tokens = [tok for cmd in commands for tok in shlex.split(cmd)]
    for value in (results, ds_config, glue_dir):  # each path reaches the command line as one word
        assert any(tok.startswith(str(value)) for tok in tokens), value


@pytest.mark.parametrize("dotted, value", [
    ("results_dir", "results/a\nb"), ("results_dir", "results/ab\n"), ("pretrain.ds_config", "ds_configs/z\tero2.json"),
    ("finetune.glue_dir", "glue\x00"), ("mlflow.tracking_uri", "sqlite:///m\rlflow.db"),
    ("corpus.sources", [{"type": "local", "paths": ["ok.txt", "bad\x1b.txt"]}]),
    ("corpus.sources", [{"type": "url", "url": "https://example.org/a.txt", "sha256": "0" * 64, "cache_dir": "c\x7f"}]),
])
def test_control_characters_in_a_path_name_the_field(dotted, value):
    cfg = yaml.safe_load((REPO / "tests/configs/micro.yaml").read_text())
    set_field(cfg, dotted, value)
    problem = config_error(cfg, SCHEMA_PATH)
    field = {"corpus.sources": "corpus.sources.0."}.get(dotted, dotted)
    assert problem and problem.startswith(f"config field '{field}") and "control character" in problem, problem
    assert "\n" not in problem  # one line


def test_newline_in_results_dir_stops_the_pipeline_naming_the_field(tmp_path):
    results = tmp_path / "res\nults"
    res = snakemake(micro_config(tmp_path, results), "-n")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "config field 'results_dir': " in out and "holds a control character" in out, out[-3000:]
    assert not results.exists() and not (tmp_path / "res").exists()


# ---- 2. a results_dir that cannot be written ------------------------------------------------------

def _unwritable_results(tmp_path, under_file):
    if under_file:  # a folder under a regular file: refused even to root
        (tmp_path / "afile").write_text("not a folder\n")
        return tmp_path / "afile" / "sub"
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (the case under a file covers root)")
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "results"


@pytest.mark.parametrize("under_file", [True, False], ids=["under-a-file", "read-only-parent"])
def test_unwritable_results_dir_stops_before_any_job_naming_the_field(tmp_path, under_file):
    results = _unwritable_results(tmp_path, under_file)
    try:
        res = snakemake(micro_config(tmp_path, results), f"{results}/corpus/stats.json")
    finally:
        if not under_file:
            results.parent.chmod(0o700)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "field 'results_dir': the results directory" in out and "cannot be used" in out, out[-3000:]
    assert "Fix: set results_dir" in out and "OSError" not in out and "Traceback" not in out
    assert not results.exists()


# ---- 3. two pipelines on one results_dir ----------------------------------------------------------

def test_second_pipeline_on_a_locked_results_dir_stops_naming_the_holder(tmp_path):
    results = tmp_path / "results"
    holder = ResultsLock(results, checkout="/elsewhere/electra-ds")
    holder.acquire()
    try:
        config = micro_config(tmp_path, results)
        dry = snakemake(config, "-n", f"{results}/corpus/stats.json")  # a dry run takes no lock
        assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
        res = snakemake(config, f"{results}/corpus/stats.json")
    finally:
        holder.release()
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"is in use by another pipeline (host {socket.gethostname()}, pid {os.getpid()}, started " in out, out[-3000:]
    assert "checkout /elsewhere/electra-ds" in out and f"working directory {os.getcwd()}" in out
    assert f"if no such process is running (a crash on another host), delete {results / LOCK_NAME}" in out
    assert not (results / "corpus").exists() and not (results / "logs").exists()  # no job ran
    assert not (results / LOCK_NAME).exists()  # the holder's release removed it; the refused run left nothing


def test_lock_is_exclusive_and_released():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        first, second = ResultsLock(Path(tmp) / "r"), ResultsLock(Path(tmp) / "r")
        first.acquire()
        record = json.loads((Path(tmp) / "r" / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["cwd"]
        with pytest.raises(UserError, match="in use by another pipeline"):
            second.acquire()
        first.acquire()  # re-entrant in the holding process
        first.release()
        assert not (Path(tmp) / "r" / LOCK_NAME).exists()
        second.acquire()
        second.release()
        first.release()  # twice is harmless


def test_lock_of_a_killed_pipeline_is_taken_over_with_a_warning(tmp_path):
    """A crash (kill -9) leaves the record but not the flock: the next pipeline on this host takes over."""
    results = tmp_path / "results"
    code = ("import os, sys; from electra_ds.common.lock import ResultsLock; "
            "ResultsLock(sys.argv[1]).acquire(); os.kill(os.getpid(), 9)")
    crashed = subprocess.run([sys.executable, "-c", code, str(results)], capture_output=True, timeout=60)
    assert crashed.returncode == -9
    dead_pid = json.loads((results / LOCK_NAME).read_text())["pid"]
    warnings = []
    lock = ResultsLock(results)
    lock.acquire(warn=warnings.append)
    try:
        assert len(warnings) == 1 and "took over a stale lock" in warnings[0] and f"pid {dead_pid}" in warnings[0]
        assert json.loads((results / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_lock_record_of_another_host_stops_until_deleted(tmp_path):
    """flock may not reach across NFS hosts: another host's record is never guessed stale."""
    results = tmp_path / "results"
    results.mkdir()
    (results / LOCK_NAME).write_text(json.dumps({"host": "node-elsewhere", "pid": 4242, "started": "2026-01-01",
                                                  "cwd": "/home/a/run", "checkout": "/home/a/electra-ds"}))
    with pytest.raises(UserError) as err:
        ResultsLock(results).acquire()
    assert "host node-elsewhere, pid 4242" in str(err.value) and f"delete {results / LOCK_NAME}" in str(err.value)
    (results / LOCK_NAME).unlink()
    lock = ResultsLock(results)
    lock.acquire()
    lock.release()
