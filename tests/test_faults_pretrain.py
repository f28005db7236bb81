"""Faults around pretraining: a killed launcher leaves no rank behind; a damaged, interrupted or foreign
checkpoint is reported and skipped (or refused) instead of ending in a traceback.

One short base run (1 process, checkpoints at steps 2 and 4) is made once per module; each damage case
works on its own copy of it. The resume decision itself (electra_ds.pretraining.checkpoint.choose_checkpoint) is also
tested in-process, without DeepSpeed, for the cases that need no training to show."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, electra_ds
from test_pretrain import TINY

CKPT = "checkpoints"


def args_for(prepared, out, steps, model=TINY, extra=()):
    return ["pretrain", "--shards", str(prepared["shards"]), "--output-dir", str(out), "--model", model,
            "--ds-config", str(REPO / "ds_configs/zero2.json"), "--global-batch-size", "8",
            "--micro-batch-size", "8", "--learning-rate", "3e-3", "--warmup-steps", "2", "--max-steps", str(steps),
            "--log-every", "1", "--checkpoint-every", "2", "--keep-checkpoints", "3", "--eval-every", "0",
            "--eval-examples", "8", "--precision", "fp32", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def base(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "base"
    res = electra_ds(args_for(prepared, out, steps=4))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture
def copy(base, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out


def tags(out):
    return sorted(p.name for p in (out / CKPT).glob("step*"))


def assert_clean_resume(res, out, at_step, final_steps=5):
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"at step {at_step}" in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == final_steps and summary["tag"] == f"step{final_steps:08d}"
    assert (out / CKPT / "latest").read_text() == summary["tag"]
    steps = [r["step"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps == list(range(1, final_steps + 1))  # cut back to the checkpoint, then continued


# ---- the manifest --------------------------------------------------------------------------------

def test_every_checkpoint_has_a_manifest_and_latest_names_the_newest(base):
    from electra_ds.common.fileio import sha256_file
    from electra_ds.pretraining.checkpoint import MANIFEST, checkpoint_files

    assert tags(base) == ["step00000002", "step00000004"]
    assert (base / CKPT / "latest").read_text() == "step00000004"
    for tag in tags(base):
        manifest = json.loads((base / CKPT / tag / MANIFEST).read_text())
        assert manifest["step"] == int(tag[4:]) and manifest["run_config"]["model"]["hidden_size"] == 32
        assert sorted(manifest["files"]) == checkpoint_files(base / CKPT / tag)
        assert any(name.endswith("model_states.pt") for name in manifest["files"])
        for name, meta in manifest["files"].items():
            path = base / CKPT / tag / name
            assert meta == {"size": path.stat().st_size, "sha256": sha256_file(path)}


# ---- damage, end to end (each resumes one or more steps with DeepSpeed) ---------------------------

@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\x80", b""], ids=["garbage", "empty"])
def test_garbage_or_empty_latest_is_ignored(prepared, copy, content):
    (copy / CKPT / "latest").write_bytes(content)
    res = electra_ds(args_for(prepared, copy, steps=5))
    assert "ignoring" in res.stderr and "latest" in res.stderr
    assert_clean_resume(res, copy, at_step=4)


def test_missing_file_falls_back_to_the_previous_intact_checkpoint(prepared, copy):
    victim = next((copy / CKPT / "step00000004").glob("*optim_states.pt"))
    victim.unlink()
    res = electra_ds(args_for(prepared, copy, steps=5))
    assert "skipping checkpoint" in res.stderr and f"{victim.name} is missing" in res.stderr, res.stderr[-3000:]
    assert_clean_resume(res, copy, at_step=2)
    # step 4 was rewritten whole, with its manifest; nothing intact was pruned
    assert tags(copy) == ["step00000002", "step00000004", "step00000005"]
    assert (copy / CKPT / "step00000004" / victim.name).is_file()


def test_all_checkpoints_damaged_is_a_clear_error(prepared, copy):
    for tag in tags(copy):
        model = next((copy / CKPT / tag).glob("*model_states.pt"))
        with open(model, "r+b") as f:
            f.truncate(100)
    res = electra_ds(args_for(prepared, copy, steps=5))
    assert res.returncode == 2, res.stderr[-3000:]
    assert "no intact checkpoint" in res.stderr and "Traceback" not in res.stderr
    line = [ln for ln in res.stderr.splitlines() if "error:" in ln][-1]
    assert f"rm -r {copy / CKPT / 'step00000004'} {copy / CKPT / 'step00000002'}" in line, line
    assert json.loads((copy / "summary.json").read_text())["steps"] == 4  # the base run's, untouched


def test_rerun_with_another_model_shape_is_refused_before_loading(prepared, copy):
    wider = json.dumps({**json.loads(TINY), "hidden_size": 64, "intermediate_size": 128})
    before = {p: p.stat().st_mtime_ns for p in (copy / CKPT).rglob("*")}
    res = electra_ds(args_for(prepared, copy, steps=5, model=wider))
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "size mismatch" not in res.stderr
    line = [ln for ln in res.stderr.splitlines() if "error:" in ln][-1]
    assert "model.hidden_size: checkpoint 32, this run 64" in line and "nothing was loaded" in line
    assert "new output/results directory" in line and f"delete {copy / CKPT}" in line
    assert "to continue this run, give it the checkpoint's values (model.hidden_size = 32" in line
    # refused before the model was even built: DeepSpeed never started, nothing changed on disk
    assert "world size 1" not in res.stderr and "resumed from" not in res.stderr
    assert {p: p.stat().st_mtime_ns for p in (copy / CKPT).rglob("*")} == before


# ---- the resume decision in-process (no DeepSpeed) -----------------------------------------------

def run_config_of(out):
    from electra_ds.pretraining.checkpoint import MANIFEST

    return json.loads((out / CKPT / "step00000004" / MANIFEST).read_text())["run_config"]


def choose(out, caplog):
    from electra_ds.pretraining.checkpoint import choose_checkpoint

    caplog.clear()
    return choose_checkpoint(out / CKPT, run_config_of(out))


def test_truncated_file_is_a_size_mismatch_and_skipped(copy, caplog):
    victim = next((copy / CKPT / "step00000004").glob("*optim_states.pt"))
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.truncate(size // 2)
    assert choose(copy, caplog) == ("step00000002", "intact")
    assert f"has {size // 2} bytes, the manifest says {size}" in caplog.text


def test_same_size_corruption_is_a_checksum_mismatch_and_skipped(copy, caplog):
    victim = next((copy / CKPT / "step00000004").glob("*model_states.pt"))
    with open(victim, "r+b") as f:
        f.seek(victim.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert choose(copy, caplog) == ("step00000002", "intact")
    assert f"checksum mismatch in {victim.name}" in caplog.text


def test_interrupted_save_without_manifest_is_skipped(copy, caplog):
    """A tag directory DeepSpeed wrote but whose manifest never came (killed mid-save): not `latest`."""
    from electra_ds.pretraining.checkpoint import MANIFEST

    shutil.copytree(copy / CKPT / "step00000004", copy / CKPT / "step00000006")
    (copy / CKPT / "step00000006" / MANIFEST).unlink()
    assert choose(copy, caplog) == ("step00000004", "intact")
    assert "step00000006: no manifest: the save did not finish" in caplog.text


def test_legacy_checkpoint_named_by_latest_is_accepted_with_a_warning(copy, caplog):
    """Checkpoints from before manifests: the one DeepSpeed's `latest` names is used (its run config is read
    from the client state, memory-mapped); a different config is still refused."""
    from electra_ds.common.errors import UserError
    from electra_ds.pretraining.checkpoint import MANIFEST, choose_checkpoint

    for tag in tags(copy):
        (copy / CKPT / tag / MANIFEST).unlink()
    run_config = json.loads(json.dumps(run_config_of_base(copy)))
    assert choose_checkpoint(copy / CKPT, run_config) == ("step00000004", "legacy")
    assert "cannot be verified" in caplog.text
    with pytest.raises(UserError, match=r"model\.num_layers: checkpoint 1, this run 2"):
        choose_checkpoint(copy / CKPT, {**run_config, "model": {**run_config["model"], "num_layers": 2}})


def run_config_of_base(out):
    import torch

    from electra_ds.pretraining.checkpoint import weights_only_loading

    with weights_only_loading():
        states = torch.load(next((out / CKPT / "step00000004").glob("*model_states.pt")), mmap=True)
    return states["run_config"]


def test_pruning_never_deletes_the_last_intact_checkpoint(copy):
    from electra_ds.pretraining.checkpoint import prune

    ckpt = copy / CKPT
    shutil.copytree(ckpt / "step00000004", ckpt / "step00000006")
    next((ckpt / "step00000004").glob("*optim_states.pt")).unlink()  # damaged
    # keep 2: step 6 (just saved) and the newest *intact* older one, step 2 -- not the damaged step 4
    assert prune(ckpt, "step00000006", keep=2) == ["step00000004"]
    assert tags(copy) == ["step00000002", "step00000006"]


def test_a_folder_that_only_starts_like_a_tag_is_not_a_checkpoint(copy):
    """A user's copy beside the checkpoints (``step00000002.bak``, ``step2-before-lr-change``) is neither resumed
    from nor pruned: only ``step<digits>`` is a tag."""
    from electra_ds.pretraining.checkpoint import candidates, prune

    ckpt = copy / CKPT
    for name in ("step00000002.bak", "step2-before-lr-change"):
        shutil.copytree(ckpt / "step00000002", ckpt / name)
    shutil.copytree(ckpt / "step00000004", ckpt / "step00000006")
    assert candidates(ckpt, None) == ["step00000006", "step00000004", "step00000002"]
    (ckpt / "step00000004_universal").mkdir()  # what ds_to_universal writes is a tag (another world size)
    assert "step00000004_universal" in candidates(ckpt, "step00000004_universal")
    shutil.rmtree(ckpt / "step00000004_universal")
    assert prune(ckpt, "step00000006", keep=1) == ["step00000004", "step00000002"]
    assert (ckpt / "step00000002.bak").is_dir() and (ckpt / "step2-before-lr-change").is_dir()


# ---- a killed launcher leaves no rank behind -----------------------------------------------------

def _alive_with(marker: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                found.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_sigkill_of_the_launcher_group_stops_every_rank(prepared, tmp_path):
    import psutil

    out = tmp_path / "orphans"
    a = args_for(prepared, out, steps=100000)
    a[a.index("--global-batch-size") + 1] = "16"
    a[a.index("--checkpoint-every") + 1] = "3"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "electra_ds", "launch", "--nproc-per-node", "2", "--", *a],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        log = out / "train_log.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and log.read_text().count("\n") >= 2 and (out / CKPT / "latest").exists():
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the launcher ended before it could be killed"
        ranks = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)
                 if str(out) in " ".join(p.cmdline())]
        assert len(ranks) == 2
        assert all(os.getsid(pid) != os.getsid(proc.pid) for pid in ranks)  # torchrun's own sessions
        os.killpg(proc.pid, signal.SIGKILL)
        killed = time.time()
        proc.wait(timeout=30)
        while time.time() - killed < 10 and _alive_with(str(out)):
            time.sleep(0.05)
        gone_after = time.time() - killed
        assert not _alive_with(str(out)), f"ranks still alive {gone_after:.1f} s after the launcher was killed"
        print(f"every rank gone {gone_after:.2f} s after SIGKILL of the launcher's process group")
        snapshot = {p: p.stat().st_mtime_ns for p in (out / CKPT).rglob("*")}
        time.sleep(3)
        assert {p: p.stat().st_mtime_ns for p in (out / CKPT).rglob("*")} == snapshot  # no new checkpoint
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _alive_with(str(out)):
            os.kill(pid, signal.SIGKILL)


def test_exit_with_launcher_only_under_a_launcher():
    from electra_ds.pretraining.distributed import started_by_launcher

    assert not started_by_launcher({})
    assert started_by_launcher({"TORCHELASTIC_RUN_ID": "none"})
    assert started_by_launcher({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0"})
    assert not started_by_launcher({"SLURM_JOB_ID": "7"})  # a batch script itself: no launcher to outlive
