"""Planted symbolic links (issue 24 item 11): outputs are never written through a link, and tracking-replay sends
records only to the store the user names and only artifacts from under the results directory.

Each test plants real links (to files and folders outside the output directory) and checks that the targets are
untouched and the error is one line naming the link."""

from __future__ import annotations

import json
import os

import pytest
from helpers import electra_ds
from test_faults_pretrain import args_for

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import atomic_path, open_nofollow, write_json

# these tests run Snakemake in the checkout (its .snakemake folder): `make test` runs them alone, one at a time
pytestmark = pytest.mark.workflow

PRECIOUS = "precious: must not change\n"


def _plant(link, target):
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def _outside(tmp_path, name="outside.txt"):
    target = tmp_path / "elsewhere" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(PRECIOUS)
    return target


def _one_line_error(res, link):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, lines
    assert f"{link}:" in errors[0] and "is a symbolic link" in errors[0] and "Fix: remove the link" in errors[0]


def test_atomic_writes_refuse_a_link_at_the_destination(tmp_path):
    target = _outside(tmp_path)
    link = tmp_path / "out" / "summary.json"
    _plant(link, target)
    with pytest.raises(UserError, match="summary.json: is a symbolic link .*refusing to write through it"):
        write_json(link, {"a": 1})
    assert target.read_text() == PRECIOUS and link.is_symlink()

    folder = tmp_path / "elsewhere" / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text(PRECIOUS)
    out_dir = tmp_path / "out" / "shards"
    _plant(out_dir, folder)
    with pytest.raises(UserError, match="shards: is a symbolic link"):
        with atomic_path(out_dir, is_dir=True) as tmp:
            (tmp / "index.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"] and (folder / "keep.txt").read_text() == PRECIOUS
    assert not list((tmp_path / "out").glob(".shards.tmp-*"))  # refused before any work, nothing left behind


def test_appends_refuse_a_link_even_one_planted_after_the_file_was_opened_once(tmp_path):
    log = tmp_path / "train_log.jsonl"
    with open_nofollow(log, "a") as f:
        f.write("one\n")
    target = _outside(tmp_path)
    log.unlink()
    _plant(log, target)  # planted between two appends: the kernel refuses it at the open (O_NOFOLLOW)
    with pytest.raises(UserError, match="train_log.jsonl: is a symbolic link"):
        with open_nofollow(log, "a") as f:
            f.write("two\n")
    assert target.read_text() == PRECIOUS


def test_locks_never_write_their_holder_record_through_a_planted_link(tmp_path):
    """The pipeline's lock (results_dir/.electra-ds.lock) and a stage's output-directory lock write a holder record
    into their file: a link planted at either name is refused, its target untouched."""
    from electra_ds.common.lock import LOCK_NAME, OutputLock, ResultsLock

    results = tmp_path / "results"
    for lock, name in ((ResultsLock(results), LOCK_NAME), (OutputLock(results / "pretrain", "pretrain"),
                                                           ".pretrain.lock")):
        target = _outside(tmp_path, f"{name}.txt")
        _plant(results / name, target)
        with pytest.raises(UserError, match=f"{name}: is a symbolic link"):
            lock.acquire()
        assert target.read_text() == PRECIOUS


def test_stale_temporary_that_is_a_link_is_removed_not_followed(tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "keep.txt").write_text(PRECIOUS)
    _plant(tmp_path / "out" / ".data.json.tmp-deadbeef", folder)
    write_json(tmp_path / "out" / "data.json", [1])
    assert not (tmp_path / "out" / ".data.json.tmp-deadbeef").is_symlink()
    assert (folder / "keep.txt").read_text() == PRECIOUS


@pytest.mark.parametrize("planted", ["train_log.jsonl", "checkpoints/.train_log.jsonl.snapshot",
                                     "checkpoints/step00000002", "checkpoints"])
def test_pretraining_refuses_planted_links_before_any_work(prepared, tmp_path, planted):
    """The log, the checkpoint's log snapshot, a step directory (a link to a folder) and the checkpoint folder
    itself, planted as links: the run stops at once with one line naming the link; what they point at is
    untouched and nothing was trained."""
    out = tmp_path / "run"
    link = out / planted
    if planted.startswith("checkpoints/step") or planted == "checkpoints":
        target = tmp_path / "elsewhere" / "folder"
        target.mkdir(parents=True)
        (target / "keep.txt").write_text(PRECIOUS)
    else:
        target = _outside(tmp_path)
    _plant(link, target)
    res = electra_ds(args_for(prepared, out, steps=2))
    _one_line_error(res, link)
    if target.is_dir():
        assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
        assert (target / "keep.txt").read_text() == PRECIOUS
    else:
        assert target.read_text() == PRECIOUS
    assert not (out / "summary.json").exists()


@pytest.mark.slow  # a real pretraining start (DeepSpeed), about 15 s alone, 60 s on the shared 2-core machine
def test_step_directory_planted_while_pretraining_runs_is_refused_at_the_save(prepared, tmp_path):
    """Links planted at every later step directory once the run has started (after the check before it): the next
    save stops the run with one line naming the link; the folder it points at is untouched, `latest` keeps
    naming the last checkpoint."""
    import subprocess
    import sys
    import time

    from helpers import REPO

    out = tmp_path / "run"
    target = tmp_path / "elsewhere" / "folder"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text(PRECIOUS)
    args = args_for(prepared, out, steps=400, extra=("--checkpoint-every", "4"))
    proc = subprocess.Popen([sys.executable, "-m", "electra_ds", *args], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DS_ACCELERATOR": "cpu"})
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "latest").exists():  # a first checkpoint (step 2 or 4) is written
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    for step in range(4, 401, 4):
        try:
            _plant(out / "checkpoints" / f"step{step:08d}", target / "new")  # dangling: DeepSpeed would mkdir it
        except FileExistsError:  # saved before the links were planted
            pass
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "is a symbolic link" in errors[0] and "checkpoints/step" in errors[0], errors
    assert "Traceback" not in stderr
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"] and (target / "keep.txt").read_text() == PRECIOUS
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert latest.is_dir() and not latest.is_symlink() and (latest / "electra_ds_manifest.json").is_file()


def test_results_dir_that_is_a_link_is_fine_an_output_that_is_one_is_refused(prepared, tmp_path):
    """The results directory (or a parent, or pretraining's --output-dir) may be a link: only what a stage creates
    inside it is checked. A folder output replaced as a whole (shards, vocab, export, a fine-tuning job) that is
    itself a link is refused: renaming over it would drop the link, and writing into it would go elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    results = tmp_path / "results"
    _plant(results, disk)  # results -> disk/: legitimate (a results folder on a bigger disk)
    shards = ["shards", "--input", prepared["docs"], "--tokenizer-dir", prepared["vocab"], "--max-seq-len", "64",
              "--threads", "1", "--output-dir"]
    res = electra_ds([*shards, results / "shards"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((disk / "shards" / "index.json").read_text())

    planted = results / "shards-b"
    _plant(planted, disk / "shards")  # a folder output planted as a link to another stage's output
    before = {p.name: p.stat().st_mtime_ns for p in (disk / "shards").iterdir()}
    res = electra_ds([*shards, planted])
    _one_line_error(res, planted)
    assert {p.name: p.stat().st_mtime_ns for p in (disk / "shards").iterdir()} == before


def _planted_spool(tmp_path):
    """A spool file as someone could plant it: it names its own store and artifact location, and points artifacts
    at /etc/passwd, directly and through a link under the results directory, beside one genuine artifact."""
    results = tmp_path / "results"
    (results / "mlflow-spool").mkdir(parents=True)
    (results / "ok.json").write_text('{"documents": 3}')
    _plant(results / "innocent.txt", "/etc/passwd")
    theirs = tmp_path / "theirs"
    run = {"op": "run", "run": "spool-planted", "remote": False, "uri": f"sqlite:///{theirs / 'store.db'}",
           "experiment": "planted", "artifact_root": (theirs / "artifacts").as_uri(), "run_name": "planted",
           "tags": {}, "start_time": 1}
    records = [run, {"op": "params", "run": "spool-planted", "params": {"a": "1"}},
               {"op": "artifact", "run": "spool-planted", "path": "/etc/passwd", "artifact_path": None},
               {"op": "artifact", "run": "spool-planted", "path": str(results / "innocent.txt"), "artifact_path": None},
               {"op": "model", "run": "spool-planted", "model": {"path": "/etc", "name": "discriminator"}},
               {"op": "artifact", "run": "spool-planted", "path": str(results / "ok.json"), "artifact_path": None},
               {"op": "terminated", "run": "spool-planted", "status": "FINISHED", "end_time": 2}]
    spool = results / "mlflow-spool" / "pretrain-1-abcd1234.jsonl"
    spool.write_text("".join(json.dumps({"v": 1, "time": 1, **r}) + "\n" for r in records))
    return results, theirs, spool


def test_replay_without_a_named_store_does_not_go_where_the_spool_says(tmp_path, monkeypatch, capsys):
    from electra_ds.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results, theirs, spool = _planted_spool(tmp_path)
    assert main(["tracking-replay", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(theirs / "store.db") in err[0] and "--tracking-uri" in err[0], err
    assert not theirs.exists() and spool.is_file()  # nothing sent anywhere, the file still pending
    assert not (results / "mlflow.db").exists()


def test_replay_sends_only_to_the_named_store_and_only_artifacts_under_the_results_dir(tmp_path, monkeypatch,
                                                                                        caplog, capsys):
    from mlflow.tracking import MlflowClient

    from electra_ds.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results, theirs, spool = _planted_spool(tmp_path)
    store = f"sqlite:///{tmp_path / 'mine.db'}"
    with caplog.at_level("WARNING", logger="electra_ds.tracking"):
        assert main(["tracking-replay", str(results), "--tracking-uri", store]) == 1  # refused records: not clean
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 3, refused
    assert "/etc/passwd is outside" in refused[0]
    assert "innocent.txt is outside the results directory (it resolves to /etc/passwd)" in refused[1]
    assert "/etc is outside" in refused[2]
    assert "3 refused" in capsys.readouterr().out
    assert not theirs.exists()  # neither its store nor its artifact location
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("planted").experiment_id])
    assert run.data.params == {"a": "1"} and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["ok.json"]
    assert run.info.artifact_uri.startswith((results / "mlartifacts").resolve().as_uri())
    assert not [p for p in tmp_path.rglob("*passwd*")] and not [p for p in tmp_path.rglob("innocent.txt")
                                                                if not p.is_symlink()]
    assert main(["tracking-replay", str(results), "--tracking-uri", store]) == 0  # done: nothing pending


@pytest.mark.parametrize("planted", ["logs/corpus.log", "benchmarks/corpus.tsv", "mlflow.db", "mlflow.db-journal",
                                     "mlartifacts/1/run/artifacts/stats.json", "mlflow-spool/x.json"])
def test_workflow_refuses_a_planted_job_log_link_before_any_job(tmp_path, planted):
    """Job logs are written by the shell's ``> {log}``, the local MLflow store by SQLite and MLflow, all of which
    follow a link: the workflow refuses a link under logs/, benchmarks/, mlartifacts/ or mlflow-spool/, and at
    mlflow.db and SQLite's files beside it, at its start, in one line naming it, and the target is untouched."""
    from helpers import micro_config
    from test_faults_workflow import small_source, snakemake

    results = tmp_path / "results"
    target = _outside(tmp_path)
    link = results / planted
    _plant(link, target)
    config = micro_config(tmp_path, results, **{"corpus.sources": [{"type": "local", "paths": [
        str(small_source(tmp_path / "src" / "docs.txt"))]}], "corpus.min_chars": 10})
    res = snakemake(config, f"{results}/corpus/stats.json")
    assert res.returncode != 0
    assert target.read_text() == PRECIOUS
    assert not (results / "corpus").exists()
    errors = [line for line in (res.stdout + res.stderr).splitlines() if "is a symbolic link" in line]
    assert len(errors) == 1 and f"{link}:" in errors[0] and "Traceback" not in res.stdout + res.stderr, \
        res.stdout[-3000:] + res.stderr[-3000:]
