"""Faults a long run meets (issue 24): a full disk, a loss that goes NaN, a changed config on resume, a stalled
rank, two runs on one output directory. Each fault is provoked for real: a small tmpfs mounted for the test (as
root; skipped where mounting is not allowed), a planted batch of padding only (its losses are 0/0), a learning rate
of 1e4, SIGSTOP of a rank, a second process holding the output directory.

One short pretraining run with a planted bad batch (1 process, a checkpoint every step) is made once per module;
the NaN, resume and export checks read it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, cli, electra_ds
from test_faults_pretrain import args_for
from test_pretrain import final_weights, train_log

CKPT = "checkpoints"
TIMING = {"tokens_per_s", "samples_per_s", "model_tflops", "time"}  # wall clock, not the computation


def comparable(out) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in train_log(out)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


# ---- a small file system, mounted for the test -----------------------------------------------------------------

class Tmpfs:
    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}): needs root")

    def resize(self, size: str) -> None:  # "free space": the files stay
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(path, size):
        fs = Tmpfs(path, size)
        mounted.append(fs)
        return fs
    yield mount
    for fs in mounted:
        fs.unmount()


# ---- a planted bad batch ---------------------------------------------------------------------------------------

PLANTED_STEP = 3  # the update of step 3 (its global batch, 0-based batch index 2) gets a batch of padding only


def plant_padding_batch(shards: Path, at_step: int, global_batch: int = 8) -> list[int]:
    """Overwrite, in a copy of the shards, the examples of step ``at_step``'s global batch with [PAD] only (a batch
    with no real token: every loss is 0/0); the index's checksums are updated, as if the data had been made so."""
    from electra_ds.common.fileio import read_json, sha256_file
    from electra_ds.common.settings import default, node
    from electra_ds.pretraining.trainer import global_batch_indices

    seed = default(node("", "seed"))  # the run's (args_for gives none)

    index = read_json(shards / "index.json")
    split = index["splits"]["train"]
    n = sum(s["examples"] for s in split["shards"])
    rows = sorted(int(i) for i in global_batch_indices(n, global_batch, at_step - 1, seed))
    width, dtype = index["max_seq_len"], np.dtype(index["dtype"])
    start = 0
    for shard in split["shards"]:
        path = shards / shard["file"]
        data = np.fromfile(path, dtype=dtype).reshape(-1, width)
        mine = [r - start for r in rows if start <= r < start + shard["examples"]]
        if mine:
            data[mine] = 0
            data.tofile(path)
            shard["sha256"] = sha256_file(path)
        start += shard["examples"]
    (shards / "index.json").write_text(json.dumps(index, indent=2))
    return rows


@pytest.fixture(scope="module")
def planted(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    shards = root / "shards"
    shutil.copytree(prepared["shards"], shards)
    rows = plant_padding_batch(shards, PLANTED_STEP)
    data = {**prepared, "shards": shards}
    out = root / "run"
    res = electra_ds(planted_args(data, out, steps=5))
    assert res.returncode == 0, res.stderr[-3000:]
    return {"data": data, "out": out, "stderr": res.stderr, "rows": rows}


def planted_args(data, out, steps, extra=()):
    a = args_for(data, out, steps=steps, extra=extra)
    a[a.index("--checkpoint-every") + 1] = "1"
    a[a.index("--keep-checkpoints") + 1] = "10"
    return a


def states(out, tag):
    import torch

    from electra_ds.pretraining.checkpoint import weights_only_loading

    with weights_only_loading():
        model = torch.load(next((out / CKPT / tag).glob("*model_states.pt")), map_location="cpu")
        optim = torch.load(next((out / CKPT / tag).glob("*optim_states.pt")), map_location="cpu")
    return model, optim


def tensors(obj, prefix=""):
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}[{i}]")


# ---- 2. a loss that goes NaN -----------------------------------------------------------------------------------

def test_a_non_finite_loss_skips_the_update_and_names_the_batch(planted):
    """The planted batch of step 3 has losses 0/0: that update is skipped (weights and optimizer state after step 3
    are those after step 2), logged with its examples' shard and row, counted in the summary; the run goes on."""
    import torch

    out, stderr = planted["out"], planted["stderr"]
    warning = [line for line in stderr.splitlines() if "update skipped" in line]
    assert len(warning) == 1 and "step 3:" in warning[0] and "non-finite loss in examples" in warning[0], stderr[-3000:]
    first = planted["rows"][0]
    assert f"{first} (train-00000.bin row {first})" in warning[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["steps"] == 5
    log = {r["step"]: r for r in train_log(out) if r["split"] == "train"}
    assert all(np.isfinite(log[s]["loss"]) for s in (1, 2, 4, 5)) and not np.isfinite(log[3]["loss"])
    assert log[3]["lr"] == log[2]["lr"] and log[4]["lr"] != log[3]["lr"]  # the schedule waits for a real update
    model2, optim2 = states(out, "step00000002")
    model3, optim3 = states(out, "step00000003")
    w2, w3 = dict(tensors(model2["module"])), dict(tensors(model3["module"]))
    assert w2.keys() == w3.keys() and all(torch.equal(w2[k], w3[k]) for k in w2)
    o2, o3 = dict(tensors(optim2["optimizer_state_dict"])), dict(tensors(optim3["optimizer_state_dict"]))
    assert o2.keys() == o3.keys() and all(torch.equal(o2[k], o3[k]) for k in o2)
    model4, _ = states(out, "step00000004")
    assert not all(torch.equal(w3[k], v) for k, v in tensors(model4["module"]))  # step 4 trained again


def test_exact_resume_with_a_skipped_step(planted, tmp_path):
    """Resumed from step 2 (before the skipped step), the run ends identical to the uninterrupted one."""
    import torch

    out = tmp_path / "resumed"
    shutil.copytree(planted["out"], out)
    for tag in ("step00000003", "step00000004", "step00000005"):
        shutil.rmtree(out / CKPT / tag)
    (out / CKPT / "latest").write_text("step00000002")
    (out / "summary.json").unlink()
    res = electra_ds(planted_args(planted["data"], out, steps=5))
    assert res.returncode == 0 and "at step 2" in res.stderr, res.stderr[-3000:]
    assert comparable(out) == comparable(planted["out"])
    w_ref, w_resumed = final_weights(planted["out"]), final_weights(out)
    assert all(torch.equal(w_ref[k], w_resumed[k]) for k in w_ref)


@pytest.mark.parametrize("precision,ds_config", [("fp32", "zero2"), ("bf16", "zero2"), ("bf16", "zero3")])
def test_a_learning_rate_of_1e4_stops_the_run_with_the_last_good_checkpoint(prepared, tmp_path, precision, ds_config):
    """Learning rate 1e4: once the loss is NaN every update is skipped; at 2 skipped steps in 10 the run stops with
    one error naming the field and the steps; no summary (so nothing downstream exports it); `latest` names an
    intact checkpoint with finite weights. In fp32 and bf16 (DeepSpeed's optimizer paths differ), ZeRO-2 and -3."""
    import torch

    from electra_ds.pretraining.checkpoint import choose_checkpoint

    out = tmp_path / "run"
    a = args_for(prepared, out, steps=30, extra=["--max-skipped-steps", "2", "--skip-window", "10"])
    a[a.index("--learning-rate") + 1] = "1e4"
    a[a.index("--precision") + 1] = precision
    a[a.index("--ds-config") + 1] = str(REPO / f"ds_configs/{ds_config}.json")
    res = electra_ds(a)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert error_lines(res.stderr) == [res.stderr.strip().splitlines()[-1]], res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "field 'pretrain.max_skipped_steps'" in line and "2 of the last 10 steps" in line, line
    assert "is kept" in line and "--allow-resume-change learning_rate" in line
    assert not (out / "summary.json").exists()
    latest = (out / CKPT / "latest").read_text()
    assert f"the last checkpoint, {latest}, is kept" in line
    run_config = json.loads((out / CKPT / latest / "electra_ds_manifest.json").read_text())["run_config"]
    assert choose_checkpoint(out / CKPT, run_config) == (latest, "intact")
    model, _ = states(out, latest)
    assert all(torch.isfinite(t).all() for _, t in tensors(model["module"]))


def test_a_plain_optimizer_skips_a_non_finite_step():
    """Stage 0 in fp32: DeepSpeed calls the torch optimizer itself, which would apply NaN; the guard skips it."""
    import torch

    from electra_ds.pretraining.trainer import skip_nonfinite_updates

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    skip_nonfinite_updates(opt)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    assert not opt.overflow
    before, state = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = torch.tensor([1.0, float("nan"), 3.0])
    opt.step()
    assert opt.overflow and torch.equal(p.detach(), before)
    assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())


def test_a_loss_spike_is_a_warning(caplog):
    from electra_ds.pretraining.pretrain import SpikeWatch

    watch = SpikeWatch(4.0)
    assert [watch.check(s, loss) for s, loss in enumerate([5.0, 4.8, 4.9, 4.7, 30.0, 4.6, float("nan")])] == \
        [None, None, None, None, pytest.approx(30 / 4.85), None, None]
    assert "step 4: loss spike" in caplog.text
    assert SpikeWatch(0).check(9, 1e9) is None


# ---- 4. a changed config on resume -----------------------------------------------------------------------------

def test_another_learning_rate_on_resume_is_refused_unless_named(planted, tmp_path, caplog):
    """learning_rate, warmup_steps and weight_decay are part of the checked run config; --allow-resume-change names
    the ones a rerun may change on purpose (anything else stays refused)."""
    from electra_ds.common.errors import UserError
    from electra_ds.pretraining.checkpoint import choose_checkpoint

    ckpt = planted["out"] / CKPT
    saved = json.loads((ckpt / "step00000005" / "electra_ds_manifest.json").read_text())["run_config"]
    for field, value in (("learning_rate", 1e-4), ("warmup_steps", 7), ("weight_decay", 0.5)):
        with pytest.raises(UserError, match=f"{field}: checkpoint {saved[field]!r}, this run {value!r}"):
            choose_checkpoint(ckpt, {**saved, field: value})
        assert choose_checkpoint(ckpt, {**saved, field: value}, allow_changes={field}) == ("step00000005", "intact")
    with pytest.raises(UserError, match="mask_prob"):
        choose_checkpoint(ckpt, {**saved, "learning_rate": 1e-4, "mask_prob": 0.3}, allow_changes={"learning_rate"})
    # a checkpoint written before these fields were recorded resumes with any value
    old = {k: v for k, v in saved.items() if k not in ("learning_rate", "warmup_steps", "weight_decay")}
    from electra_ds.pretraining.checkpoint import config_differences

    assert config_differences(old, {**saved, "learning_rate": 1.0}) == []
    # the attention kernel is how, not what: a checkpoint of the old default (sdpa) resumes under auto
    for before, now in (("sdpa", "auto"), ("eager", "sdpa")):
        a, b = {**saved, "model": {**saved["model"], "attn_implementation": before}}, {**saved, "model": {
            **saved["model"], "attn_implementation": now}}
        assert config_differences(a, b) == []
    assert config_differences(saved, {**saved, "model": {**saved["model"], "hidden_size": 7}}) != []


def test_resuming_with_a_named_change_uses_and_records_it(planted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(planted["out"], out)
    a = planted_args(planted["data"], out, steps=6)
    a[a.index("--learning-rate") + 1] = "1e-3"
    refused = electra_ds(a)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "learning_rate: checkpoint 0.003, this run 0.001" in refused.stderr.splitlines()[-1]
    assert "--allow-resume-change" in refused.stderr.splitlines()[-1]
    from electra_ds.common.errors import UserError
    from electra_ds.pretraining.trainer import resume_changes_allowed

    with pytest.raises(UserError, match=r"field 'pretrain.allow_resume_change': cannot continue a run with another "
                                        r"model"):
        resume_changes_allowed("learning_rate,model")

    res = electra_ds([*a, "--allow-resume-change", "learning_rate"])
    assert res.returncode == 0 and "at step 5" in res.stderr, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resume_changes"] == ["learning_rate: checkpoint 0.003, this run 0.001"]
    lr = {r["step"]: r["lr"] for r in train_log(out) if r["split"] == "train"}
    ref = {r["step"]: r["lr"] for r in train_log(planted["out"]) if r["split"] == "train"}
    assert lr[5] == ref[5]  # the steps before the resume are the checkpoint's
    # after step 6 the schedule has made 5 updates (step 3 was skipped): warmup_then_decay to 6 steps with warmup 2
    # gives the peak rate x (6 - 5) / (6 - 2), at the new peak rate
    assert lr[6] == pytest.approx(1e-3 * 0.25, rel=1e-6)
    manifest = json.loads((out / CKPT / "step00000006" / "electra_ds_manifest.json").read_text())
    assert manifest["run_config"]["learning_rate"] == 1e-3  # the next resume checks against the new value


# ---- 1. a full disk --------------------------------------------------------------------------------------------

def test_full_disk_under_the_shards_writer_then_a_rerun(prepared, tmp_path, tmpfs, capsys):
    fs = tmpfs(tmp_path / "small", "200k")
    out = fs.path / "shards"
    argv = ["shards", "--input", prepared["docs"], "--tokenizer-dir", prepared["vocab"], "--output-dir", out,
            "--max-seq-len", "64", "--valid-fraction", "0.05", "--heldout-fraction", "0.15", "--threads", "2"]
    capsys.readouterr()
    assert cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines("\n".join(err))) == 1 and "Traceback" not in "\n".join(err)
    line = err[-1]
    assert line.startswith(f"electra-ds shards: error: {out}: no space left on the device"), line
    assert "it needs more than the" in line and f"free on {fs.path}" in line and "nothing of it was kept" in line
    assert not out.exists() and list(fs.path.iterdir()) == []  # no partial output, no temporary left
    fs.resize("20m")
    assert cli(*argv) == 0
    ref = json.loads((prepared["shards"] / "index.json").read_text())
    assert json.loads((out / "index.json").read_text())["splits"] == ref["splits"]  # same files, same checksums


def test_full_disk_under_export_then_a_rerun(planted, tmp_path, tmpfs, capsys):
    fs = tmpfs(tmp_path / "small", "100k")
    out = fs.path / "export"
    argv = ["export", "--pretrain-summary", planted["out"] / "summary.json", "--tokenizer-dir",
            planted["data"]["vocab"], "--output-dir", out]
    capsys.readouterr()
    assert cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith(f"electra-ds export: error: {out}: no space left on the device"), line
    assert "it needs about" in line and not out.exists() and list(fs.path.iterdir()) == []
    fs.resize("50m")
    assert cli(*argv) == 0 and (out / "discriminator" / "model.safetensors").is_file()


def test_an_earlier_checkpoint_is_exported_and_logged_with_its_own_step(planted, tmp_path, caplog):
    out = tmp_path / "export"
    caplog.set_level("INFO")
    assert cli("export", "--pretrain-summary", planted["out"] / "summary.json", "--tag", "step00000002",
               "--tokenizer-dir", planted["data"]["vocab"], "--output-dir", out, "--no-mlflow-model") == 0
    assert "exported step00000002 (step 2) to" in caplog.text, caplog.text[-2000:]  # not the summary's final 5
    assert (out / "discriminator" / "model.safetensors").is_file()


def test_full_disk_under_a_finetuning_job_then_a_rerun(tmp_path, tmpfs, capsys, monkeypatch):
    from helpers_models import build_tiny_model_dir
    from test_finetune import FALLBACK_TEXT, _write_probes

    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")
    model_dir = build_tiny_model_dir(tmp_path / "model", FALLBACK_TEXT)
    _write_probes(tmp_path / "probes")
    fs = tmpfs(tmp_path / "small", "100k")
    out = fs.path / "job"
    argv = ["finetune", "--model-dir", model_dir, "--task", "probe-acceptability", "--seed", "1", "--output-dir", out,
            "--data-dir", tmp_path / "probes", "--epochs", "1", "--threads", "1", "--max-length", "64",
            "--keep-model", "--results-dir", tmp_path]
    capsys.readouterr()
    assert cli(*argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"electra-ds finetune: error: {out}: no space left on the device"), line
    assert "it needs about" in line and not out.exists() and list(fs.path.iterdir()) == []
    fs.resize("20m")
    assert cli(*argv) == 0
    reference = tmp_path / "reference"
    assert cli(*[reference if a == out else a for a in argv]) == 0
    assert json.loads((out / "metrics.json").read_text())["dev"] == \
        json.loads((reference / "metrics.json").read_text())["dev"]


def checkpoint_bytes(out, tag) -> int:
    manifest = json.loads((out / CKPT / tag / "electra_ds_manifest.json").read_text())
    return sum(m["size"] for m in manifest["files"].values())


@pytest.mark.slow
def test_full_disk_under_a_checkpoint_save_on_two_ranks(prepared, tmp_path, tmpfs):
    """Two ranks; the checkpoints on a tmpfs that holds one checkpoint but not two: the save of step 4 fails (on
    rank 0 or 1 or both). One error line naming the directory and the space, no traceback from any rank or from
    torchrun; the partial step 4 removed, `latest` still step 2. With space freed, the rerun resumes from step 2
    and ends identical to an uninterrupted run."""
    import torch

    def args(out):
        a = args_for(prepared, out, steps=6)
        a[a.index("--keep-checkpoints") + 1] = "1"
        a[a.index("--micro-batch-size") + 1] = "4"  # 2 ranks x 4 = the global 8
        return ["launch", "--nproc-per-node", "2", "--", *a]

    reference = tmp_path / "reference"
    res = electra_ds(args(reference))
    assert res.returncode == 0, res.stderr[-3000:]
    size = checkpoint_bytes(reference, "step00000006")

    out = tmp_path / "full"
    fs = tmpfs(out / CKPT, f"{int(size * 1.5) // 1024}k")
    res = electra_ds(args(out))
    assert res.returncode == 2, res.stderr[-3000:]
    for pile in ("Traceback", "ChildFailedError", "Connection closed", "iostream error", "unexpected pos"):
        assert pile not in res.stderr, res.stderr[-3000:]
    assert error_lines(res.stderr) == [res.stderr.strip().splitlines()[-1]], res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    print(line)
    assert line.startswith(f"electra-ds pretrain: error: {out / CKPT}: no space left on the device while writing "
                           "checkpoint step00000004: it needs about"), line
    assert f"free on {fs.path}" in line and "`latest` still names step00000002, which a rerun resumes from" in line
    assert (out / CKPT / "latest").read_text() == "step00000002"
    assert sorted(p.name for p in (out / CKPT).iterdir() if p.name.startswith("step")) == ["step00000002"]
    assert not (out / "summary.json").exists()

    fs.resize("50m")
    res = electra_ds(args(out))
    assert res.returncode == 0 and "at step 2" in res.stderr, res.stderr[-3000:]
    assert comparable(out) == comparable(reference)
    w_ref, w_resumed = final_weights(reference), final_weights(out)
    assert all(torch.equal(w_ref[k], w_resumed[k]) for k in w_ref)


# ---- 7 and 8. two runs on one output directory; a stalled rank -------------------------------------------------

def test_a_second_finetuning_job_on_one_output_dir_is_refused(tmp_path, capsys):
    """Another process holds the job's output directory: the second stops at once, naming it."""
    out = tmp_path / "job"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from electra_ds.common.lock import OutputLock\n"
        f"lock = OutputLock({str(out)!r}, 'finetune'); lock.acquire(); print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert cli("finetune", "--model-dir", tmp_path, "--task", "sst2", "--seed", "1", "--output-dir", out,
                   "--data-dir", tmp_path, "--results-dir", tmp_path) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{out}: another finetune run is writing this output directory (host " in line, line
        assert f"pid {holder.pid}, started 20" in line
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()


def _ranks(proc_pid, marker):
    import psutil

    return sorted((p for p in psutil.Process(proc_pid).children(recursive=True)
                   if marker in " ".join(p.cmdline()) and "torch.distributed.run" not in " ".join(p.cmdline())),
                  key=lambda p: p.environ().get("RANK", "?"))


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_stalled_rank_ends_the_run(prepared, tmp_path):
    """Two ranks with a 6 s collective timeout. A second `pretrain` on the same output directory stops at once naming
    the holder (rank 0's pid, host, start time). Then rank 1 is stopped (SIGSTOP): within the timeout and a few
    seconds rank 0 ends the run with one line naming the step and rank 1; `latest` still names an intact checkpoint."""
    import psutil

    from electra_ds.pretraining.checkpoint import choose_checkpoint

    out = tmp_path / "run"
    a = args_for(prepared, out, steps=100000, extra=["--collective-timeout-minutes", "0.1"])
    a[a.index("--micro-batch-size") + 1] = "4"  # 2 ranks x 4 = the global 8
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "electra_ds", "launch", "--nproc-per-node", "2", "--", *a],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (out / "train_log.jsonl").exists() and len(train_log(out)) >= 3 and (out / CKPT / "latest").exists():
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        ranks = _ranks(proc.pid, str(out))
        assert len(ranks) == 2

        second = electra_ds(a)
        assert second.returncode == 2, second.stderr[-3000:]
        line = second.stderr.strip().splitlines()[-1]
        assert "another pretrain run is writing this output directory" in line, line
        assert f"pid {ranks[0].pid}, started 20" in line and "host " in line

        ranks[1].send_signal(signal.SIGSTOP)
        stopped = time.time()
        _, stderr = proc.communicate(timeout=120)
        took = time.time() - stopped
        print(f"the run ended {took:.1f} s after rank 1 was stopped (collective timeout 6 s)")
        assert proc.returncode == 3, stderr[-3000:]
        assert took < 6 + 20, stderr[-3000:]
        assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr[-3000:]
        assert error_lines(stderr) == [stderr.strip().splitlines()[-1]], stderr[-3000:]
        line = stderr.strip().splitlines()[-1]
        print(line)
        assert line.startswith("electra-ds pretrain: error: no progress for") and "after step " in line, line
        assert "rank 1 did not answer" in line and "rank 0 waits in a collective" in line
        latest = (out / CKPT / "latest").read_text()
        assert f"the last checkpoint, {latest}, is kept" in line
        run_config = json.loads((out / CKPT / latest / "electra_ds_manifest.json").read_text())["run_config"]
        assert choose_checkpoint(out / CKPT, run_config) == (latest, "intact")
        assert not psutil.pid_exists(ranks[1].pid) or ranks[1].status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in psutil.process_iter(["pid", "cmdline"]):
            if str(out) in " ".join(p.info["cmdline"] or []):
                p.send_signal(signal.SIGCONT)
                p.kill()
