"""Pretraining through DeepSpeed on CPU: 2 processes, ZeRO-2 and ZeRO-3, resume, export, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, electra_ds

TINY = json.dumps({"embedding_size": 32, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                   "intermediate_size": 64, "generator_fraction": 0.5})


NO_DROPOUT = json.dumps({**json.loads(TINY), "dropout": 0.0})


def pretrain_args(prepared, out, stage=2, steps=6, extra=()):
    return ["pretrain", "--shards", str(prepared["shards"]), "--output-dir", str(out), "--model", TINY,
            "--ds-config", str(REPO / f"ds_configs/zero{stage}.json"), "--global-batch-size", "16",
            "--micro-batch-size", "4", "--learning-rate", "3e-3", "--warmup-steps", "2", "--max-steps", str(steps),
            "--log-every", "1", "--checkpoint-every", "3", "--keep-checkpoints", "2", "--eval-every", "3",
            "--eval-examples", "16", "--precision", "fp32", "--device", "cpu", *extra]


def pretrain_and_export(prepared, tmp_path, launch, **pretrain_kw):
    """Pretrain through ``electra-ds launch`` (``launch``: its options) and export; the summary and the export
    folder (``tmp_path/pretrain``, ``tmp_path/export``)."""
    out, export = tmp_path / "pretrain", tmp_path / "export"
    res = electra_ds(["launch", *launch, "--", *pretrain_args(prepared, out, **pretrain_kw)])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    res = electra_ds(["export", "--pretrain-summary", str(out / "summary.json"), "--tokenizer-dir",
                      str(prepared["vocab"]), "--output-dir", str(export)])
    assert res.returncode == 0, res.stderr[-3000:]
    return summary, export


def losses(out):
    """Training loss per logged step, from the run's train_log.jsonl (never from log text)."""
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
            if r["split"] == "train"}


@pytest.mark.slow
def test_two_process_zero2_trains_checkpoints_and_resumes(prepared, tmp_path):
    out = tmp_path / "pretrain"
    # A dead tracking server must not stop training (it only warns).
    dead_mlflow = {"ELECTRA_DS_MLFLOW": "1", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
                   "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    # --results-dir: where the records the dead server misses are spooled (the default, ".", is the checkout).
    # output_bias_init prior: rank 0 counts the training tokens once and both ranks start from that prior; the
    # resumed run below takes the checkpoint's biases and counts nothing
    prior = ("--output-bias-init", "prior")
    first = electra_ds(["launch", "--nproc-per-node", "2", "--",
                        *pretrain_args(prepared, out, steps=6, extra=("--results-dir", tmp_path, *prior))], dead_mlflow)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count("output biases from the training tokens' unigram prior") == 1
    assert "world size 2, micro-batch 4 x accumulation 2 = global 16; ZeRO stage 2" in first.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["world_size"] == 2 and summary["zero_stage"] == 2
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step00000003", "step00000006"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step00000006"
    first_losses = losses(out)
    assert first_losses[6] < first_losses[1]  # it learns

    # Asking for more steps resumes from the latest checkpoint instead of starting over.
    again = electra_ds(["launch", "--nproc-per-node", "2", "--", *pretrain_args(prepared, out, steps=8, extra=prior)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "unigram prior" not in again.stderr
    assert "resumed from" in again.stderr and "at step 6" in again.stderr
    resumed = losses(out)  # the log continues the first run's: its lines up to the checkpoint, then 7 and 8
    assert sorted(resumed) == list(range(1, 9)) and {k: resumed[k] for k in range(1, 7)} == first_losses
    assert json.loads((out / "summary.json").read_text())["steps"] == 8
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step00000006", "step00000008"]


@pytest.mark.slow
def test_zero3_export_matches_training_weights(prepared, tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer

    from electra_ds.pretraining.export import checkpoint_dir_of, consolidated_state_dict

    summary, _ = pretrain_and_export(prepared, tmp_path, ["--nproc-per-node", "2"], stage=3, steps=3)
    assert summary["checkpoint_dir"] == "checkpoints"  # relative to the summary's folder: no absolute paths
    assert summary["zero_stage"] == 3
    for sub in ("discriminator", "generator"):
        assert (tmp_path / "export" / sub / "model.safetensors").is_file()
    disc = AutoModelForPreTraining.from_pretrained(tmp_path / "export" / "discriminator").eval()
    gen = AutoModelForMaskedLM.from_pretrained(tmp_path / "export" / "generator").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "export" / "discriminator")
    assert tok.is_fast and len(tok) == disc.config.vocab_size
    state = consolidated_state_dict(checkpoint_dir_of(summary, tmp_path / "pretrain" / "summary.json"),
                                    summary["tag"], 3)
    # Weights trained under ZeRO-3 (partitioned) come back whole and equal in the exported models.
    assert torch.equal(disc.electra.embeddings.word_embeddings.weight,
                       state["discriminator.electra.embeddings.word_embeddings.weight"])
    assert torch.equal(gen.generator_predictions.dense.weight, state["generator.generator_predictions.dense.weight"])
    # The exported generator's output layer is tied to the shared embeddings.
    assert torch.equal(gen.generator_lm_head.weight, disc.electra.embeddings.word_embeddings.weight)
    ids = torch.tensor([tok("Return the value of the attribute.")["input_ids"]])
    with torch.no_grad():
        assert disc(ids).logits.shape == ids.shape
        assert gen(ids).logits.shape == (*ids.shape, disc.config.vocab_size)


def test_inconsistent_deepspeed_config_fails_before_training(prepared, tmp_path):
    bad = tmp_path / "ds_bad.json"
    bad.write_text(json.dumps({"train_batch_size": 999, "zero_optimization": {"stage": 2}}))
    args = pretrain_args(prepared, tmp_path / "out")
    args[args.index("--ds-config") + 1] = str(bad)
    res = electra_ds(args)
    assert res.returncode == 2
    assert "ds_bad.json" in res.stderr and "train_batch_size=999" in res.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_failing_rank_ends_the_launch_with_its_own_error(prepared, tmp_path):
    """Through `electra-ds launch` (torchrun), a rank's clear error is the launch's last word: the rank's one line
    and exit status, no ChildFailedError traceback from torchrun after it."""
    bad = tmp_path / "ds_bad.json"
    bad.write_text(json.dumps({"train_batch_size": 999, "zero_optimization": {"stage": 2}}))
    args = pretrain_args(prepared, tmp_path / "out")
    args[args.index("--ds-config") + 1] = str(bad)
    res = electra_ds(["launch", "--nproc-per-node", "1", "--", *args])
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("electra-ds launch: ") and "torch.distributed.run" in lines[0]
    errors = [line for line in lines[1:] if "error" in line.lower()]
    assert errors == [lines[-1]], res.stderr[-3000:]
    assert lines[-1].startswith("electra-ds pretrain: error: ") and "train_batch_size=999" in lines[-1]
    assert "ChildFailedError" not in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize("extra,message", [
    (["--device", "cuda"], "GPUs requested but no usable GPU"),
    (["--precision", "fp16"], "fp16 is not supported on CPU"),
    (["--global-batch-size", "15"], "pretrain.global_batch_size"),
])
def test_bad_environment_is_a_clear_error(prepared, tmp_path, extra, message):
    import torch

    if "--device" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = electra_ds(pretrain_args(prepared, tmp_path / "out", extra=extra))
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_token_ids_beyond_the_vocabulary_are_refused(prepared, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(prepared["shards"], shards)
    index = json.loads((shards / "index.json").read_text())
    index["vocab_size"] = 100  # claims a smaller vocabulary than the ids in the shards
    (shards / "index.json").write_text(json.dumps(index))
    args = pretrain_args({**prepared, "shards": shards}, tmp_path / "out")
    res = electra_ds(args)
    assert res.returncode == 2 and "beyond the vocabulary size 100" in res.stderr, res.stderr[-2000:]


# The stage's config options in their order before PretrainConfig declared them: the same `--` options, and the same
# shell line for the pretrain rule (stage_args renders them in this order; another order would rerun finished jobs).
SETTINGS_BEFORE = {"pretrain": ("model", "objective", "mask_prob", "disc_weight", "temperature", "disallow_correct",
                                "adversarial_mle_weight", "masking", "mask_count", "uniform_generator",
                                "embedding_sharing", "output_bias_init", "optimizer", "schedule", "ds_config",
                                "global_batch_size", "micro_batch_size", "learning_rate", "weight_decay",
                                "warmup_steps", "max_steps", "precision", "device", "compile", "dropout_masks",
                                "checkpoint_every",
                                "checkpoint_minutes", "keep_checkpoints", "log_every", "eval_every", "eval_examples",
                                "plateau_steps", "peak_tflops", "max_skipped_steps", "skip_window", "spike_factor",
                                "allow_resume_change", "collective_timeout_minutes"),
                   "": ("seed",)}


def test_the_options_are_the_config_fields_in_the_same_order():
    from electra_ds.pretraining import pretrain
    from electra_ds.pretraining.config import PretrainConfig

    assert list(pretrain.SETTINGS.items()) == list(SETTINGS_BEFORE.items())
    # every option of the stage but the shared tracking ones is a field of the config, and nothing else is
    from electra_ds.cli import build_parser

    args = build_parser().parse_args(["pretrain", "--shards", "s", "--output-dir", "o"])
    shared = {"stage", "_module", "results_dir", "tracking_uri", "rule", "wildcards", "log_level"}
    assert set(vars(args)) - shared == set(PretrainConfig.__dataclass_fields__)


def test_the_config_is_built_once_from_the_options_and_frozen():
    import dataclasses

    from electra_ds.cli import build_parser
    from electra_ds.common.settings import default, node
    from electra_ds.pretraining.config import PretrainConfig

    args = build_parser().parse_args(["pretrain", "--shards", "s", "--output-dir", "o", "--mask-prob", "0.3",
                                      "--disallow-correct", "--seed", "9", "--model", '{"num_layers": 2}'])
    config = PretrainConfig.from_args(args)
    assert (config.shards, config.mask_prob, config.disallow_correct, config.seed) == ("s", 0.3, True, 9)
    assert config.model["num_layers"] == 2 and config.model["hidden_size"] == 256  # merged over the schema's
    assert config.warmup_steps == default(node("pretrain", "warmup_steps"))  # the schema is the one source
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1
    # where the settings go: the checkpoint's run config (with the resolved shape and max_seq_len added by the
    # Trainer), the model's arguments, summary.json and MLflow's params
    assert set(config.select("recorded")) == {
        "objective", "mask_prob", "disc_weight", "temperature", "disallow_correct", "masking", "mask_count",
        "uniform_generator", "embedding_sharing", "optimizer", "schedule", "global_batch_size", "seed",
        "learning_rate", "warmup_steps", "weight_decay", "dropout_masks"}
    assert config.select("summary") == {"objective": "electra", "mask_prob": 0.3, "temperature": 1.0,
                                        "output_bias_init": "zero", "global_batch_size": 128}
    assert set(config.select("param")) == {"global_batch_size", "learning_rate", "warmup_steps", "compile",
                                           "max_steps", "mask_prob", "objective", "disc_weight", "seed",
                                           "dropout_masks"}
    with pytest.raises(ValueError, match="not a use"):
        config.select("summmary")


def test_the_model_takes_every_setting_marked_for_it():
    import inspect

    from electra_ds.pretraining.config import PretrainConfig
    from electra_ds.pretraining.model import ElectraPretrainer

    marked = {name for name, f in PretrainConfig.__dataclass_fields__.items() if f.metadata["pretrainer"]}
    assert marked and marked <= set(inspect.signature(ElectraPretrainer).parameters)


def test_data_position_is_a_function_of_the_step():
    from electra_ds.pretraining.trainer import global_batch_indices, rank_micro_batches

    a = global_batch_indices(1000, 64, 5, seed=1)
    assert np.array_equal(a, global_batch_indices(1000, 64, 5, seed=1))
    parts = [np.concatenate(rank_micro_batches(a, r, 2, 8)) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])  # ranks read disjoint examples
    assert np.array_equal(np.concatenate(parts), a)  # and together the whole global batch
    epoch = np.concatenate([global_batch_indices(1000, 64, s, seed=1) for s in range(1000 // 64)])
    assert len(set(epoch)) == len(epoch)  # no example repeats within an epoch


def train_log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def final_weights(out):
    from electra_ds.pretraining.export import checkpoint_dir_of, consolidated_state_dict

    summary = json.loads((out / "summary.json").read_text())
    return consolidated_state_dict(checkpoint_dir_of(summary, out / "summary.json"), summary["tag"],
                                   summary["zero_stage"])


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_with_micro_b_match_one_rank_with_2b(prepared, tmp_path, stage):
    """Every draw is seeded per example and losses are normalised by global-batch counts, so the split of a
    global batch over ranks does not change the run (dropout off: it is drawn per process)."""
    assert_two_ranks_match_one(lambda out: pretrain_args(prepared, out, stage=stage, steps=4), tmp_path)


def assert_two_ranks_match_one(make_args, tmp_path):
    """The run of ``make_args(out)`` (a pretrain command line) with dropout off and a global batch of 8: on one
    rank with micro-batches of 8 and on two with 4 it logs the same losses and ends with the same weights."""
    import torch

    runs = {}
    for procs, micro in ((1, "8"), (2, "4")):
        out = tmp_path / f"p{procs}"
        args = make_args(out)
        args[args.index("--model") + 1] = NO_DROPOUT
        args[args.index("--global-batch-size") + 1] = "8"
        args[args.index("--micro-batch-size") + 1] = micro
        res = electra_ds(["launch", "--nproc-per-node", str(procs), "--", *args])
        assert res.returncode == 0, res.stderr[-3000:]
        runs[procs] = out
    one, two = (train_log(runs[p]) for p in (1, 2))
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("loss", "gen_loss", "disc_loss", "gen_acc", "disc_acc"):
            # fp32 sums in another order (threads, all-reduce) drift by ~1e-5 relative; a wrong loss
            # normalisation or a different draw would differ by percents.
            assert a[key] == pytest.approx(b[key], rel=2e-4, abs=1e-5), (a["step"], key)
    w1, w2 = final_weights(runs[1]), final_weights(runs[2])
    assert w1.keys() == w2.keys()
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=2e-4), name


@pytest.mark.slow
def test_optimizer_offload_trains_like_zero3_and_resumes(prepared, tmp_path):
    """ds_configs/zero3_offload.json keeps the optimizer state on the CPU and steps it with
    DeepSpeedCPUAdam (a C++ op JIT-built on first use, ~50 s here): the same AdamW maths as torch's, so
    the run matches plain ZeRO-3; and it resumes from its own checkpoint."""
    import torch

    runs = {}
    for config in ("3_offload", "3"):
        out = tmp_path / config
        args = pretrain_args(prepared, out, stage=config, steps=4)
        args[args.index("--model") + 1] = NO_DROPOUT
        args[args.index("--checkpoint-every") + 1] = "2"
        res = electra_ds(["launch", "--nproc-per-node", "2", "--", *args], timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[config] = out
    summary = json.loads((runs["3_offload"] / "summary.json").read_text())
    assert summary["optimizer"] == "DeepSpeedCPUAdam" and summary["offload_optimizer"] is True
    assert json.loads((runs["3"] / "summary.json").read_text())["optimizer"] == "AdamW"
    offload, plain = train_log(runs["3_offload"]), train_log(runs["3"])
    assert [(r["split"], r["step"]) for r in offload] == [(r["split"], r["step"]) for r in plain]
    assert [r["step"] for r in offload if r["split"] == "train"] == [1, 2, 3, 4]
    for a, b in zip(offload, plain):  # train steps and the valid evaluations
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a["split"], a["step"])
    w_off, w_plain = final_weights(runs["3_offload"]), final_weights(runs["3"])
    assert all(torch.allclose(w_off[name], w_plain[name], atol=1e-4) for name in w_plain)

    # resume: two more steps from the offloaded optimizer's checkpoint
    args = pretrain_args(prepared, runs["3_offload"], stage="3_offload", steps=6)
    args[args.index("--model") + 1] = NO_DROPOUT
    res = electra_ds(["launch", "--nproc-per-node", "2", "--", *args], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "at step 4" in res.stderr and "DeepSpeedCPUAdam with its state offloaded to the CPU" in res.stderr
    assert [r["step"] for r in train_log(runs["3_offload"]) if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


def assert_sigkill_and_restart_is_exact(args, tmp_path, kill_after: str):
    """Run ``args(out)`` uninterrupted; run it again, SIGKILL the launcher and every worker once checkpoint
    ``kill_after`` exists, start it once more the same way: the log and the weights equal the uninterrupted run's."""
    import psutil
    import torch

    reference = tmp_path / "reference"
    res = electra_ds(args(reference))
    assert res.returncode == 0, res.stderr[-3000:]

    killed = tmp_path / "killed"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "electra_ds", *args(killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() >= kill_after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    # The launcher and every worker, mid-run, no clean-up (torchrun starts workers in their own sessions,
    # so the process group alone would miss them; a SLURM job's cgroup kills all of them the same way).
    tree = psutil.Process(proc.pid)
    victims = [tree, *tree.children(recursive=True)]
    for p in victims:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=60)
    proc.wait(timeout=60)
    assert not (killed / "summary.json").exists()

    res = electra_ds(args(killed))  # started again the same way
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr
    ref_log, resumed_log = train_log(reference), train_log(killed)
    assert [(r["split"], r["step"]) for r in ref_log] == [(r["split"], r["step"]) for r in resumed_log]
    timing = {"tokens_per_s", "samples_per_s", "model_tflops", "time"}  # wall-clock, not the computation
    assert [{k: v for k, v in r.items() if k not in timing} for r in ref_log] == \
        [{k: v for k, v in r.items() if k not in timing} for r in resumed_log]
    w_ref, w_resumed = final_weights(reference), final_weights(killed)
    assert all(torch.equal(w_ref[k], w_resumed[k]) for k in w_ref)
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: DeepSpeed's bf16 weights, fp32 master and Adam state
def test_sigkill_and_restart_gives_exactly_the_uninterrupted_run(prepared, tmp_path, precision):
    def args(out):
        a = pretrain_args(prepared, out, stage=2, steps=14)
        a[a.index("--checkpoint-every") + 1] = "2"
        a[a.index("--keep-checkpoints") + 1] = "3"
        a[a.index("--precision") + 1] = precision
        return ["launch", "--nproc-per-node", "1", "--", *a]

    assert_sigkill_and_restart_is_exact(args, tmp_path, kill_after="step00000006")


@pytest.mark.slow
def test_dropout_masks_switch_between_the_cheaper_masks_and_pytorchs(prepared, tmp_path):
    """pretrain.dropout_masks on CPU: fast (the default) and torch draw other masks from the same seed, so at dropout
    0.1 the runs part from the first step and train alike; each run records its choice (a resume must match it)."""
    runs = {}
    for masks in ("fast", "torch"):
        out = tmp_path / masks
        res = electra_ds(pretrain_args(prepared, out, steps=4, extra=("--dropout-masks", masks)))
        assert res.returncode == 0, res.stderr[-3000:]
        runs[masks] = losses(out)
        manifest = json.loads((out / "checkpoints" / "step00000003" / "electra_ds_manifest.json").read_text())
        assert manifest["run_config"]["dropout_masks"] == masks
    assert runs["fast"][1] != runs["torch"][1]
    assert runs["fast"][4] == pytest.approx(runs["torch"][4], rel=0.05)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(prepared, tmp_path):
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / name
        args = pretrain_args(prepared, out, stage=2, steps=2, extra=extra)
        args[args.index("--model") + 1] = NO_DROPOUT
        res = electra_ds(["launch", "--nproc-per-node", "1", "--", *args])
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = [r["loss"] for r in train_log(out) if r["split"] == "train"]
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mlm", "adversarial"])
def test_other_objectives_train_under_deepspeed_and_export(prepared, tmp_path, objective):
    """ZeRO-0 on one process (stage 0 has its own export path), then the exported models load."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    # output_bias_init prior rides along: the biases start from the shards' unigram prior, the run trains
    summary, _ = pretrain_and_export(prepared, tmp_path, ["--nproc-per-node", "1"], stage=0, steps=4,
                                     extra=["--objective", objective, "--output-bias-init", "prior"])
    assert all(r["loss"] == r["loss"] for r in train_log(tmp_path / "pretrain"))  # finite, no NaN
    assert summary["objective"] == objective and summary["zero_stage"] == 0
    assert summary["output_bias_init"] == "prior"
    gen = AutoModelForMaskedLM.from_pretrained(tmp_path / "export" / "generator")
    # mlm: the MLM is discriminator-sized; electra/adversarial: generator_fraction 0.5 of 32
    assert gen.config.hidden_size == (32 if objective == "mlm" else 16)
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export" / "discriminator", num_labels=2)
    assert clf.config.hidden_size == 32


@pytest.mark.slow
def test_resume_on_another_world_size_through_a_universal_checkpoint(prepared, tmp_path):
    """2 ranks train 4 steps; DeepSpeed's ds_to_universal converts the ZeRO-2 checkpoint; 1 rank resumes
    to step 6 and matches 2 ranks resuming the same checkpoint normally (dropout off)."""

    def args(out, steps, ds_config):
        a = pretrain_args(prepared, out, stage=2, steps=steps)
        a[a.index("--model") + 1] = NO_DROPOUT
        a[a.index("--ds-config") + 1] = str(ds_config)
        a[a.index("--global-batch-size") + 1] = "8"
        a[a.index("--checkpoint-every") + 1] = "4"
        return a

    zero2 = REPO / "ds_configs/zero2.json"
    reference, moved = tmp_path / "reference", tmp_path / "moved"
    for out, steps in ((reference, 4), (reference, 6), (moved, 4)):
        res = electra_ds(["launch", "--nproc-per-node", "2", "--", *args(out, steps, zero2)])
        assert res.returncode == 0, res.stderr[-3000:]
    ckpt = moved / "checkpoints"
    conv = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                           str(ckpt / "step00000004"), "--output_folder", str(ckpt / "step00000004_universal")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert conv.returncode == 0, conv.stderr[-3000:]
    (ckpt / "latest").write_text("step00000004_universal")
    universal = tmp_path / "zero2_universal.json"
    universal.write_text(json.dumps({**json.loads(zero2.read_text()), "checkpoint": {"load_universal": True}}))
    res = electra_ds(["launch", "--nproc-per-node", "1", "--", *args(moved, 6, universal)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr and "world size 1" in res.stderr
    ref = {r["step"]: r for r in train_log(reference) if r["split"] == "train"}
    resumed = {r["step"]: r for r in train_log(moved) if r["split"] == "train"}
    for step in (5, 6):
        assert resumed[step]["loss"] == pytest.approx(ref[step]["loss"], rel=2e-4)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_for_a_resume(prepared, tmp_path):
    """What SLURM sends before a time limit or on preemption: the run saves where it is and stops."""
    out = tmp_path / "pretrain"
    a = pretrain_args(prepared, out, stage=2, steps=400)
    a[a.index("--checkpoint-every") + 1] = "1000"  # no periodic checkpoint: only the signal makes one
    a[a.index("--log-every") + 1] = "1"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "electra_ds", "launch", "--nproc-per-node", "1", "--", *a],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "train_log.jsonl").exists():
        time.sleep(0.1)
    while time.time() < deadline and len(train_log(out)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to the launcher (torchrun), which forwards it to the workers
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stopped by signal" in stderr, stderr[-3000:]
    tag = (out / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(tag.removeprefix("step"))
    assert 3 <= stopped_at < 400 and not (out / "summary.json").exists()
    a[a.index("--max-steps") + 1] = str(stopped_at + 2)
    res = electra_ds(["launch", "--nproc-per-node", "1", "--", *a])
    assert res.returncode == 0 and f"at step {stopped_at}" in res.stderr, res.stderr[-3000:]


@pytest.mark.slow
def test_bf16_trains_like_fp32(prepared, tmp_path):
    """Over 8 steps of a tiny model (dropout off, the same data and draws) bf16's losses follow fp32's: within 2%
    at every step, and the gap is smaller than half of what the loss itself falls over those steps (measured: 6%)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        a = pretrain_args(prepared, out, stage=2, steps=8)
        a[a.index("--precision") + 1] = precision
        a[a.index("--model") + 1] = NO_DROPOUT
        res = electra_ds(["launch", "--nproc-per-node", "1", "--", *a])
        assert res.returncode == 0, res.stderr[-3000:]
        assert json.loads((out / "summary.json").read_text())["precision"] == precision
        runs[precision] = losses(out)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert fp32.keys() == bf16.keys()
    worst = max(abs(bf16[s] - fp32[s]) / fp32[s] for s in fp32)
    assert worst < 0.02, (worst, fp32, bf16)
    fall = 1 - fp32[max(fp32)] / fp32[min(fp32)]  # it trains: the agreement is not that of two flat lines
    assert fall > 2 * worst and fall > 0.03, (fall, worst)
    assert bf16 != fp32  # bf16 really ran in bf16
