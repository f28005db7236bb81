"""``electra-ds status``: where a run stands, read from a synthetic results directory (no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from electra_ds.common.layout import Layout
from electra_ds.pipeline import status


def write(path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


@pytest.fixture()
def results(tmp_path):
    """Data stages done; `electra` pretraining at step 300 of 1000 (a checkpoint at 200), `mlm` not started;
    `scratch` exported; 3 of the 2 models x 2 tasks x 2 seeds fine-tuning jobs done; no evaluation."""
    r = tmp_path / "results"
    layout = Layout(r)
    write(layout.corpus_stats, {"sources": {"demo": {}}, "total": {"documents_out": 2107, "bytes_out": 1598212}})
    write(layout.dedup_stats, {"documents_in": 2107, "documents_out": 2069, "exact_duplicates_removed": 20,
                               "near_duplicates_removed": 18})
    write(layout.vocab_stats, {"vocab_size": 8000, "coverage": 0.9999, "pieces_per_word": 1.49})
    write(layout.shards_index, {"splits": {"train": {"examples": 2708, "tokens": 246374},
                                           "valid": {"examples": 79, "tokens": 7100}}})
    log = [{"split": "train", "step": s, "loss": 30 - s / 100, "gen_loss": 7.0, "gen_acc": 0.1, "disc_loss": 0.35,
            "base_entropy": 0.417, "rtd_gain": 0.16, "disc_auc": 0.8, "tokens_per_s": 8192.0, "samples_per_s": 64.0}
           for s in (100, 200, 300)]
    log.insert(2, {"split": "valid", "step": 200, "loss": 28.0, "gen_loss": 6.9, "disc_loss": 0.34,
                   "base_entropy": 0.417, "rtd_gain": 0.18, "disc_auc": 0.81})
    write(layout.train_log("electra"), "".join(json.dumps(x) + "\n" for x in log))
    ckpt = Path(layout.checkpoints("electra"))
    (ckpt / "step00000200").mkdir(parents=True)
    write(ckpt / "latest", "step00000200")
    write(layout.log("pretrain", "electra"), "12:00:00 pretrain INFO step 300/1000 [ 30%] loss 27\n")
    write(layout.export_scratch_record("scratch"), {"source": "scratch"})
    write(Path(layout.export_discriminator("scratch")) / "config.json", {})
    for model, task, seed in (("scratch", "rte", 1), ("scratch", "rte", 2), ("scratch", "cola", 1)):
        write(layout.finetune_metrics(model, task, seed), {"task": task, "seed": seed})
    return r


CONFIG = """
results_dir: {results}
models:
  electra: {{}}
  mlm: {{objective: mlm, max_steps: 500}}
  scratch: {{source: scratch}}
pretrain:
  max_steps: 1000
  global_batch_size: 32
finetune:
  tasks: [rte, cola]
  seeds: [1, 2]
"""


def test_status_of_a_run_in_progress(results, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(results=results))
    plan = status.load_plan(config)
    assert plan["models"]["mlm"]["max_steps"] == 500 and plan["models"]["scratch"]["source"] == "scratch"
    st = status.collect(results, plan, now=time.time())
    pre = st["pretrain"]["electra"]
    assert pre["state"] == "started" and pre["step"] == 300 and pre["max_steps"] == 1000
    assert pre["checkpoint"] == "step00000200" and pre["steps_per_s"] == pytest.approx(2.0)  # 64 samples/s / 32
    assert pre["eta_s"] == pytest.approx(350.0)
    assert pre["valid_step"] == 200 and pre["valid"]["rtd_gain"] == 0.18
    assert st["pretrain"]["mlm"]["state"] == "not started" and "scratch" not in st["pretrain"]
    assert st["finetune"]["done"] == 3 and st["finetune"]["planned"] == 12
    assert st["finetune"]["per_model"]["scratch"] == {"done": 3, "planned": 4}
    assert "electra/rte/seed1" in st["finetune"]["missing"]
    text = status.render(st)
    for expected in ("corpus   done", "2.1k documents", "probes   -", "step 300/1000 (30%)", "2 steps/s", "ETA 5m50s",
                     "checkpoint step00000200", "base_rate", "train @300", "valid @200",
                     "fine-tuning: 3 of 12 jobs done", "scratch  3/4", "evaluate: -",
                     "random weights (no pretraining)"):
        assert expected in text, (expected, text)


def test_status_without_config_counts_what_exists(results):
    st = status.collect(results)
    pre = st["pretrain"]["electra"]
    assert pre["max_steps"] == 1000  # from the pretraining log's "step N/M" lines
    assert "steps_per_s" not in pre  # no batch size known: tokens/s only
    assert st["finetune"] == {"done": 3, "planned": 3, "per_model": {"scratch": {"done": 3, "planned": 3}},
                              "missing": [], "known_plan": False}
    assert "counting what exists" in status.render(st)


def test_status_command_is_fast_and_never_imports_torch(results, tmp_path):
    layout = Layout(results)
    write(layout.pretrain_summary("electra"), {"steps": 1000, "seconds": 600, "global_batch_size": 32})
    write(layout.evaluate_json, {"probe_score": {"value": 0.244}, "glue_score": {"value": None}})
    code = ("import sys, runpy; sys.argv = ['electra-ds', 'status', sys.argv[1]]\n"
            "from electra_ds.cli import main\nrc = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, str(results)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 20
    assert "electra  done" in proc.stdout and "step 1000/1000 (100%)" in proc.stdout
    assert "evaluate: done (probe score 24.4)" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "electra_ds.cli", "status", str(tmp_path / "absent")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such results directory" in proc.stderr


def test_status_reads_checkpoints_as_a_resume_does(results):
    """Through electra_ds.pretraining.checkpoint: the tag directories a resume would consider; a `latest` that names
    no checkpoint directory is passed over for the newest tag; the batch size from the manifest `latest` names."""
    from electra_ds.pretraining import checkpoint

    ckpt = Path(Layout(results).checkpoints("electra"))
    (ckpt / "step00000250").mkdir()
    (ckpt / "not-a-tag").mkdir()
    write(ckpt / "step00000200" / checkpoint.MANIFEST, {"run_config": {"global_batch_size": 32}})
    pre = status.collect(results)["pretrain"]["electra"]
    assert pre["checkpoint"] == "step00000200" and pre["checkpoints"] == 2
    assert pre["steps_per_s"] == pytest.approx(2.0)  # 64 samples/s over the manifest's batch of 32
    write(ckpt / "latest", "step00000999")
    pre = status.collect(results)["pretrain"]["electra"]
    assert pre["checkpoint"] == "step00000250" and "steps_per_s" not in pre


def test_status_of_a_results_dir_whose_name_holds_glob_characters(results):
    moved = results.rename(results.parent / "run [1]*?")
    st = status.collect(moved)
    assert st["finetune"]["done"] == 3 and st["export"]["scratch"] == {"done": True, "scratch": True}
    assert st["pretrain"]["electra"]["step"] == 300
