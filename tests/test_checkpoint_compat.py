"""A checkpoint written by the code before the package move (electra-ds d4b8aa1) still resumes, and the resumed
run ends where that code's own uninterrupted run ended.

``tests/data/pretrain_d4b8aa1.tar.gz`` holds tiny shards and the step-3 checkpoint of a 6-step run (one process,
ZeRO-2, fp32, a few non-default pretrain settings); ``tests/data/pretrain_d4b8aa1.json`` says how it was made and
holds what the old code's uninterrupted run wrote: its train_log.jsonl, summary.json and MLflow params. Same
checkpoint keys, run config, summary keys and params: what the issue's "old checkpoints still resume" and "the
export stage still reads summaries" ask."""

from __future__ import annotations

import json
import tarfile

import pytest
from helpers import REPO, electra_ds

DATA = REPO / "tests" / "data"
# Per-run measurements: they differ between any two runs, old or new.
TIMING = {"time", "seconds", "tokens_per_s", "samples_per_s", "model_tflops", "mfu"}


# Fields added since d4b8aa1, at the value that does what the old code did: new runs record them.
ADDED_SINCE = {"model.attention_bias": "none", "dropout_masks": "torch"}


def without_added(record: dict, where: str) -> dict:
    """``record`` without the fields of ADDED_SINCE that hold their old behaviour (``where``: the record's path)."""
    out = {}
    for key, value in record.items():
        path = f"{where}.{key}"
        if any(path.endswith("." + name) and value == default for name, default in ADDED_SINCE.items()):
            continue
        out[key] = without_added(value, f"{where}.{key}") if isinstance(value, dict) else value
    return out


def same_values(got, want, where: str) -> None:
    """Equal structure and keys; numbers equal to float round-off (another CPU may sum in another order)."""
    if isinstance(want, dict):
        got = without_added(got, where) if isinstance(got, dict) else got
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            if key not in TIMING:
                same_values(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-8), where
    else:
        assert got == want, where


def test_a_checkpoint_from_before_the_package_move_resumes_and_finishes_as_the_old_run_did(tmp_path):
    old = json.loads((DATA / "pretrain_d4b8aa1.json").read_text())
    with tarfile.open(DATA / "pretrain_d4b8aa1.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    out = tmp_path / "pretrain"
    saved_config = json.loads((out / "checkpoints" / "step00000003" / "electra_ds_manifest.json").read_text())
    # A dead tracking server: the params are spooled under --results-dir, where this test reads them.
    dead_mlflow = {"ELECTRA_DS_MLFLOW": "1", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
                   "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    res = electra_ds(["pretrain", "--shards", tmp_path / "shards", "--output-dir", out,
                      "--ds-config", REPO / "ds_configs" / "zero2.json", *old["args"], "--dropout-masks", "torch",
                      "--results-dir", tmp_path],
                     dead_mlflow)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "at step 3" in res.stderr and "resumed from" in res.stderr, res.stderr[-3000:]
    assert "unigram prior" not in res.stderr  # output_bias_init prior: the biases come from the checkpoint

    # Steps 1-3 are the old run's own lines (from the checkpoint's copy); 4-6 what the old code went on to log.
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in log] == [(r["split"], r["step"]) for r in old["train_log"]]
    for got, want in zip(log, old["train_log"]):
        same_values(got, want, f"train_log step {want['step']} {want['split']}")
    same_values(json.loads((out / "summary.json").read_text()), old["summary"], "summary.json")

    # The run config the new code records is the old one, key for key (what the next resume compares with).
    manifest = json.loads((out / "checkpoints" / "step00000006" / "electra_ds_manifest.json").read_text())
    assert without_added(manifest["run_config"], "run_config") == saved_config["run_config"]

    spooled = [json.loads(line) for path in (tmp_path / "mlflow-spool").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    params = [r["params"] for r in spooled if r["op"] == "params"]
    added = {f"{name}": str(default) for name, default in ADDED_SINCE.items()}  # MLflow params: flat, strings
    assert params == [{**old["mlflow_params"], **added, "start_step": "3"}]


def test_the_resume_rules_are_the_ones_older_checkpoints_were_written_under():
    """Derived from PretrainConfig now: the same fields, defaults-before and changeable fields as the tables that
    checkpoint.py and trainer.py spelt out before."""
    from electra_ds.pretraining.checkpoint import BEFORE_FIELD, UNRECORDED_BEFORE, config_differences, continue_hint
    from electra_ds.pretraining.config import RESUME_CHANGEABLE

    assert BEFORE_FIELD == {"masking": "token", "mask_count": "exact", "uniform_generator": False,
                            "embedding_sharing": "es", "optimizer": "adamw", "schedule": "warmup_then_decay",
                            "model.generator_layers": 1.0, "model.attention_bias": "none", "dropout_masks": "torch"}
    assert sorted(UNRECORDED_BEFORE) == ["learning_rate", "warmup_steps", "weight_decay"]
    assert RESUME_CHANGEABLE == ("learning_rate", "warmup_steps", "weight_decay")
    # a checkpoint without masking resumes with token masking (what it did), not with whole_word
    old = {"objective": "electra", "model": {"num_layers": 1}}
    assert config_differences(old, {**old, "masking": "token", "learning_rate": 1e-3}) == []
    assert config_differences(old, {**old, "masking": "whole_word"}) == [
        "masking: checkpoint 'token' (written before the field was recorded), this run 'whole_word'"]
    # the refusal says how to continue: the values the checkpoint ran with, including the ones it predates
    assert continue_hint(old, {**old, "masking": "whole_word", "model": {"num_layers": 2}}) == (
        "to continue this run, give it the checkpoint's values (masking = \"token\", model.num_layers = 1: in the "
        "pipeline's config, or the pretrain command's options); ")
    assert continue_hint(old, {**old, "learning_rate": 1e-3}, allow_changes=()) == ""  # unrecorded before: any
    assert continue_hint({**old, "seed": 1}, {**old, "seed": 2}, allow_changes=("seed",)) == ""
