"""Fine-tuning a tiny random ELECTRA (built offline) through the command line: real GLUE subsets,
probe- and MNLI-layout files in tmp_path, determinism, layer-wise learning rates and bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, cli, shared_data_dir
from helpers_models import build_tiny_model_dir, glue_texts, write_tsv

from electra_ds.finetuning.glue import get_task, load_split

GLUE_DIR = (shared_data_dir() or REPO.parent / "shared-data-absent") / "glue"  # skipped below when absent
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"real GLUE data absent ({GLUE_DIR}); "
                                "set ELECTRA_DS_SHARED_DATA to the shared data folder")
FALLBACK_TEXT = ["The cat sat on the mat.", "A dog barked at the moon.", "She said \"go home\" to him.",
                 "Prices rose sharply in the third quarter.", "He did not answer the door."] * 40


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("ELECTRA_DS_MLFLOW", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = glue_texts(GLUE_DIR) if GLUE_DIR.is_dir() else FALLBACK_TEXT
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "discriminator", texts)


def finetune(model_dir, task, out, data_dir, *extra, monkeypatch):
    argv = ["finetune", "--model-dir", str(model_dir), "--task", task, "--seed", "1", "--output-dir", str(out),
            "--data-dir", str(data_dir), "--max-train-examples", "64", "--epochs", "1", "--threads", "1",
            "--max-length", "64",
            "--results-dir", str(out.parent), *extra]
    return cli(*argv)


def read_predictions(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_stage_modules_import_light():
    code = ("import sys, electra_ds.finetuning.finetune, electra_ds.finetuning.evaluate, electra_ds.finetuning.glue, electra_ds.finetuning.metrics; "
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'sklearn', 'scipy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_glue
@pytest.mark.parametrize("name", ["rte", "mrpc", "cola", "stsb"])
def test_finetune_real_task_subset(model_dir, tmp_path, monkeypatch, name):
    task, out = get_task(name), tmp_path / "out"
    assert finetune(model_dir, name, out, GLUE_DIR, monkeypatch=monkeypatch) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == name and metrics["seed"] == 1 and metrics["epochs"] == 1
    doubled = 2 if task.unordered_pair else 1  # MRPC, STS-B: each pair in both orders (double_unordered)
    assert metrics["train_examples"] == 64 * doubled and metrics["steps"] == 2 * doubled and not metrics["is_probe"]
    assert set(metrics["dev"]) == set(task.metrics)
    assert metrics["main_metric"] == task.main_metric and metrics["main"] == metrics["dev"][task.main_metric]
    for metric, value in metrics["dev"].items():
        assert (0.0 <= value <= 1.0) if metric in ("accuracy", "f1") else (-1.0 <= value <= 1.0)
    assert metrics["seconds"] > 0 and metrics["model_dir"] == str(model_dir.resolve())
    assert len(metrics["history"]) == 1 and metrics["history"][0]["train_loss"] > 0
    # the constant answer's score, from the dev labels themselves
    dev = load_split(task, "dev", GLUE_DIR)
    baseline = metrics["majority_baseline"]
    if task.is_regression:
        assert metrics["majority_baseline"]["main"] == 0.0  # a constant has no correlation
    else:
        share = sum(ex["label"] == baseline["prediction"] for ex in dev) / len(dev)
        assert baseline["dev"].get("accuracy", share) == pytest.approx(share)
        if name == "cola":
            assert baseline["main"] == 0.0  # MCC of a constant
    rows = read_predictions(out / "test_predictions.tsv")
    test = load_split(task, "test", GLUE_DIR)
    assert rows[0] == ["index", "prediction"] and len(rows) - 1 == len(test)
    assert [int(r[0]) for r in rows[1:]] == [ex["idx"] for ex in test]
    if task.labels is None:
        assert all(0.0 <= float(r[1]) <= 5.0 for r in rows[1:])
    else:
        assert {r[1] for r in rows[1:]} <= set(task.labels)
    assert metrics["test_predictions"] == {"test": {"file": "test_predictions.tsv", "rows": len(test)}}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "test_predictions.tsv"]


def _write_probes(root):
    sentences = [f"The {w} walked to the {v} near the river." for w in ("man", "dog", "girl", "cat")
                 for v in ("store", "house", "bank", "park")]
    acc, adj = root / "probe-acceptability", root / "probe-adjacency"
    for split in ("train", "dev"):
        write_tsv(acc / f"{split}.tsv", [["probe", i % 2, "" if i % 2 else "*", s] for i, s in enumerate(sentences)])
        write_tsv(adj / f"{split}.tsv", [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]]
                  + [[i % 2, 2 * i, 2 * i + 1, s, f'He said "{s}"'] for i, s in enumerate(sentences)])
    write_tsv(acc / "test.tsv", [["index", "sentence"]] + [[i, s] for i, s in enumerate(sentences[:5])])
    write_tsv(adj / "test.tsv", [["index", "#1 ID", "#2 ID", "#1 String", "#2 String"]]
              + [[i, 0, 1, s, s] for i, s in enumerate(sentences[:7])])


@pytest.mark.parametrize("name, n_test", [("probe-acceptability", 5), ("probe-adjacency", 7)])
def test_finetune_probe_task(model_dir, tmp_path, monkeypatch, name, n_test):
    _write_probes(tmp_path / "probes")
    out = tmp_path / "out"
    assert finetune(model_dir, name, out, tmp_path / "probes", monkeypatch=monkeypatch) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["is_probe"] and metrics["epochs"] == 1 and set(metrics["dev"]) == set(get_task(name).metrics)
    rows = read_predictions(out / "test_predictions.tsv")
    assert len(rows) == n_test + 1 and {r[1] for r in rows[1:]} <= {"0", "1"}


def test_mnli_layout_two_dev_and_two_test_splits(model_dir, tmp_path, monkeypatch):
    head = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2"]
    labels = ["entailment", "neutral", "contradiction"]
    rows = [[i, i, i, "fiction", "b", "b", "p", "p", f"The cat {i} sat.", "A cat sat.", labels[i % 3]]
            for i in range(12)]
    d = tmp_path / "glue" / "MNLI"
    write_tsv(d / "train.tsv", [head + ["gold_label"]] + rows)
    write_tsv(d / "dev_matched.tsv", [head + ["gold_label"]] + rows[:6])
    write_tsv(d / "dev_mismatched.tsv", [head + ["gold_label"]] + rows[6:])
    write_tsv(d / "test_matched.tsv", [head] + [r[:10] for r in rows[:4]])
    write_tsv(d / "test_mismatched.tsv", [head] + [r[:10] for r in rows[:3]])
    write_tsv(tmp_path / "glue" / "diagnostic" / "diagnostic.tsv",
              [["index", "sentence1", "sentence2"], [0, "The cat sat.", "The cat did not sit."],
               [1, "Dogs bark.", "Some animals bark."]])
    out = tmp_path / "out"
    assert finetune(model_dir, "mnli", out, tmp_path / "glue", "--batch-size", "4", "--keep-model",
                    monkeypatch=monkeypatch) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dev"]) == {"dev_matched", "dev_mismatched"}
    assert metrics["main_metric"] == "dev_matched.accuracy"
    assert metrics["main"] == metrics["dev"]["dev_matched"]["accuracy"] and metrics["steps"] == 3
    assert len(read_predictions(out / "test_predictions.tsv")) == 5
    mismatched = read_predictions(out / "test_mismatched_predictions.tsv")
    assert len(mismatched) == 4 and {r[1] for r in mismatched[1:]} <= set(labels)
    # AX, predicted with the MNLI model, in the submission's label strings
    ax = read_predictions(out / "ax_predictions.tsv")
    assert ax[0] == ["index", "prediction"] and [r[0] for r in ax[1:]] == ["0", "1"] and {r[1] for r in ax[1:]} <= set(labels)
    assert metrics["test_predictions"]["ax"] == {"file": "ax_predictions.tsv", "rows": 2}

    # RTE started from this MNLI model: encoder weights from MNLI, a fresh 2-label head
    rte = tmp_path / "glue" / "RTE"
    pairs = [[i, f"The cat {i} sat.", "A cat sat.", ("entailment", "not_entailment")[i % 2]] for i in range(8)]
    write_tsv(rte / "train.tsv", [["index", "sentence1", "sentence2", "label"]] + pairs)
    write_tsv(rte / "dev.tsv", [["index", "sentence1", "sentence2", "label"]] + pairs[:4])
    out_rte = tmp_path / "rte"
    assert finetune(model_dir, "rte", out_rte, tmp_path / "glue", "--batch-size", "4", "--max-steps", "1",
                    "--init-from", str(out / "model"), "--keep-model", "--learning-rate", "1e-9", monkeypatch=monkeypatch) == 0
    rte_metrics = json.loads((out_rte / "metrics.json").read_text())
    assert rte_metrics["init_from"] == str((out / "model").resolve())
    import torch
    from transformers import AutoModelForSequenceClassification

    mnli_model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    rte_model = AutoModelForSequenceClassification.from_pretrained(out_rte / "model")
    assert rte_model.config.num_labels == 2 and rte_model.config.id2label[1] == "not_entailment"
    # learning rate 1e-9 (one Adam step moves a weight by about that): the encoder is still MNLI's; the head is new
    emb = "electra.embeddings.word_embeddings.weight"
    assert torch.allclose(dict(mnli_model.named_parameters())[emb], dict(rte_model.named_parameters())[emb], atol=1e-6)
    assert not torch.equal(mnli_model.classifier.dense.weight, rte_model.classifier.dense.weight)


@needs_glue
def test_missing_test_file_gives_header_only_predictions(model_dir, tmp_path, monkeypatch):
    data = tmp_path / "glue"
    (data / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(GLUE_DIR / "RTE" / name, data / "RTE" / name)
    out = tmp_path / "out"
    assert finetune(model_dir, "rte", out, data, "--max-steps", "1", "--keep-model", monkeypatch=monkeypatch) == 0
    assert (out / "test_predictions.tsv").read_text() == "index\tprediction\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_predictions"]["test"]["rows"] == 0 and "no " in metrics["test_predictions"]["test"]["note"]
    assert metrics["steps"] == 1
    from transformers import AutoModelForSequenceClassification

    kept = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert kept.config.num_labels == 2 and (out / "model" / "tokenizer.json").is_file()


@needs_glue
def test_same_seed_same_results(model_dir, tmp_path, monkeypatch):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert finetune(model_dir, "rte", out, GLUE_DIR, "--max-steps", "2", monkeypatch=monkeypatch) == 0
    a, b = (json.loads((o / "metrics.json").read_text()) for o in outs)
    assert a["dev"] == b["dev"] and a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert (outs[0] / "test_predictions.tsv").read_bytes() == (outs[1] / "test_predictions.tsv").read_bytes()


def test_layer_wise_learning_rates():
    from transformers import ElectraConfig, ElectraForSequenceClassification

    from electra_ds.finetuning.classifier import layer_lr_groups

    config = ElectraConfig(vocab_size=50, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    model = ElectraForSequenceClassification(config)
    groups = layer_lr_groups(model, 1e-4, 0.8, 0.01)
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    decay_of = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert sorted(lr_of) == sorted(n for n, _ in model.named_parameters())  # each parameter exactly once
    # google-research/electra: lr * decay ** (n_layers + 2 - depth); embeddings 0, layer k k+1, head n+2
    assert lr_of["electra.embeddings.word_embeddings.weight"] == pytest.approx(1e-4 * 0.8 ** 5)
    assert lr_of["electra.embeddings_project.weight"] == pytest.approx(1e-4 * 0.8 ** 5)
    for k in range(3):
        assert lr_of[f"electra.encoder.layer.{k}.attention.self.query.weight"] == pytest.approx(1e-4 * 0.8 ** (4 - k))
    assert lr_of["classifier.out_proj.weight"] == pytest.approx(1e-4)
    assert min(lr_of.values()) == lr_of["electra.embeddings.position_embeddings.weight"]
    assert max(lr_of.values()) == lr_of["classifier.dense.weight"]
    assert decay_of["electra.encoder.layer.0.output.LayerNorm.weight"] == 0.0
    assert decay_of["classifier.dense.bias"] == 0.0 and decay_of["classifier.dense.weight"] == 0.01
    assert layer_lr_groups(model, 1e-4, 1.0, 0.0)[0]["lr"] == pytest.approx(1e-4)  # decay 1 = uniform


# -- bad input: exit status 2, one message naming the file or field, no output ------------------

def _rte_copy(tmp_path, dev_lines=None):
    data = tmp_path / "glue"
    write_tsv(data / "RTE" / "train.tsv", [["index", "sentence1", "sentence2", "label"],
                                           [0, "A man sleeps.", "Someone sleeps.", "entailment"]])
    if dev_lines is not None:
        write_tsv(data / "RTE" / "dev.tsv", dev_lines)
    return data


@pytest.mark.parametrize("case, expected", [
    ("unknown_task", "unknown task 'rtee'; valid tasks: cola, sst2"),
    ("missing_split", "has no dev.tsv; expected the original GLUE layout"),
    ("missing_column", "dev.tsv: field 'label': missing column 'label'"),
    ("empty_file", "dev.tsv: is empty"),
    ("bad_label", "dev.tsv: field 'label': line 3: label 'maybe' is not one of entailment, not_entailment"),
    ("no_model", "is not an exported model folder (no config.json)"),
    ("hub_offline", "HF_HUB_OFFLINE is set"),
    ("test_only", "task ax has no train/dev data"),
    ("no_source", "no data source given"),
    ("init_without_model", "has no fine-tuned model to start from (no config.json)"),
])
def test_bad_input_exits_2_without_output(model_dir, tmp_path, monkeypatch, capsys, case, expected):
    head = ["index", "sentence1", "sentence2", "label"]
    dev = {"missing_split": None, "missing_column": [head[:3], [0, "a", "b"]], "empty_file": [],
           "bad_label": [head, [0, "a", "b", "entailment"], [1, "c", "d", "maybe"]]}.get(
        case, [head, [0, "a", "b", "entailment"]])
    data = _rte_copy(tmp_path, dev)
    out = tmp_path / "out"
    argv = ["finetune", "--model-dir", str(model_dir if case != "no_model" else tmp_path / "nothing"),
            "--task", {"unknown_task": "rtee", "test_only": "ax"}.get(case, "rte"), "--seed", "1",
            "--output-dir", str(out), "--max-steps", "1", "--results-dir", str(tmp_path)]
    argv += {"hub_offline": ["--hub-id", "nyu-mll/glue"], "no_source": []}.get(case, ["--data-dir", str(data)])
    if case == "init_without_model":
        argv += ["--init-from", str(tmp_path / "mnli" / "model")]
    assert cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("electra-ds finetune: error: ") and expected in err[-1]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_refuses_to_replace_a_foreign_output_dir(model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    argv = ["finetune", "--model-dir", str(model_dir), "--task", "rte", "--seed", "1", "--output-dir", str(out),
            "--data-dir", str(_rte_copy(tmp_path, [])), "--results-dir", str(tmp_path)]
    assert cli(*argv) == 2
    assert "refusing to replace it" in capsys.readouterr().err and (out / "precious.txt").exists()


def test_out_of_range_option(model_dir, tmp_path, monkeypatch, capsys):
    argv = ["finetune", "--model-dir", str(model_dir), "--task", "rte", "--seed", "1", "--output-dir",
            str(tmp_path / "out"), "--data-dir", str(tmp_path), "--layer-decay", "1.5", "--results-dir", str(tmp_path)]
    assert cli(*argv) == 2
    assert "field 'finetune.layer_decay': --layer-decay: 1.5 is greater than the maximum of 1" in capsys.readouterr().err


def test_device_selection(monkeypatch, model_dir, tmp_path, capsys):
    import torch

    from electra_ds.finetuning.finetune import _torch_runtime

    def picked(requested):
        with _torch_runtime(1, None, requested) as (device, _, _):
            return device

    assert picked("cpu").type == "cpu"
    if torch.cuda.is_available():  # the first GPU the job sees (CUDA_VISIBLE_DEVICES renumbers from 0)
        assert picked("auto") == torch.device("cuda", 0)
        return
    assert picked("auto").type == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    argv = ["finetune", "--model-dir", str(model_dir), "--task", "rte", "--seed", "1", "--output-dir",
            str(tmp_path / "out"), "--data-dir", str(_rte_copy(tmp_path, [["index", "sentence1", "sentence2", "label"],
                                                                        [0, "a", "b", "entailment"]])),
            "--device", "cuda", "--results-dir", str(tmp_path)]
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert "field '--device': GPUs requested but no usable GPU (CUDA_VISIBLE_DEVICES=''" in err and not (tmp_path / "out").exists()


@needs_glue
def test_real_tasks_to_leaderboard_zip(model_dir, tmp_path, monkeypatch):
    """RTE, MRPC, CoLA and STS-B from the real files, two seeds each, then evaluate with the submission."""
    import zipfile

    from electra_ds.finetuning.submission import OFFICIAL_TEST_ROWS

    paths = []
    for name in ("rte", "mrpc", "cola", "stsb"):
        for seed in ("1", "2"):
            out = tmp_path / "ft" / name / f"seed{seed}"
            argv = ["finetune", "--model-dir", str(model_dir), "--task", name, "--seed", seed, "--output-dir",
                    str(out), "--data-dir", str(GLUE_DIR), "--max-train-examples", "32", "--max-steps", "1",
                    "--threads", "1", "--max-length", "48", "--batch-size", "16", "--results-dir", str(tmp_path)]
            assert cli(*argv) == 0
            paths.append(str(out / "metrics.json"))
    ev = tmp_path / "evaluate"
    argv = ["evaluate", "--metrics", *paths, "--output-json", str(ev / "results.json"), "--output-md",
            str(ev / "results.md"), "--submission-zip", str(ev / "glue_submission.zip"), "--results-dir", str(tmp_path)]
    assert cli(*argv) == 0
    summary = json.loads((ev / "results.json").read_text())
    assert summary["glue_score"]["tasks"] == ["cola", "mrpc", "stsb", "rte"]
    assert set(summary["glue_score_common"]["entries"]) == {"CoLA", "MRPC", "STS-B", "RTE"}
    assert all(summary["tasks"][t]["n_seeds"] == 2 for t in ("rte", "mrpc", "cola", "stsb"))
    with zipfile.ZipFile(ev / "glue_submission.zip") as zf:
        assert zf.namelist() == ["CoLA.tsv", "MRPC.tsv", "STS-B.tsv", "RTE.tsv"]
        for fname, task in [("CoLA.tsv", "cola"), ("MRPC.tsv", "mrpc"), ("STS-B.tsv", "stsb"), ("RTE.tsv", "rte")]:
            lines = zf.read(fname).decode().splitlines()
            assert lines[0] == "index\tprediction" and len(lines) - 1 == OFFICIAL_TEST_ROWS[fname]
            assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(OFFICIAL_TEST_ROWS[fname]))
            values = {line.split("\t")[1] for line in lines[1:]}
            if task == "stsb":
                assert all(0.0 <= float(v) <= 5.0 for v in values)
            else:
                assert values <= set(get_task(task).labels)
    assert summary["submission"]["missing"] == ["SST-2.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv",
                                                "WNLI.tsv", "AX.tsv"]


def test_length_grouped_batches_cover_every_example_once_in_random_order_of_similar_lengths():
    import torch

    from electra_ds.finetuning.finetune import length_grouped_batches

    lengths = [int(x) for x in torch.randint(5, 128, (1000,), generator=torch.Generator().manual_seed(0))]
    epochs = [length_grouped_batches(lengths, 32, torch.Generator().manual_seed(s)) for s in (1, 2)]
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert len(batches) == -(-1000 // 32)  # as many steps as plain batches
        padded = sum(32 * max(lengths[i] for i in b) for b in batches)
        plain = sum(32 * max(lengths[i] for i in range(s, min(s + 32, 1000))) for s in range(0, 1000, 32))
        assert padded < 0.7 * plain  # far less padding than random batches
    assert epochs[0] != epochs[1]  # the order changes with the generator


def test_length_grouped_padding_gives_the_predictions_of_fixed_padding(model_dir):
    """A batch padded to its own longest example predicts what the same examples padded to max_length do."""
    import torch

    from electra_ds.finetuning.classifier import load_classifier
    from electra_ds.finetuning.finetune import _collate, _encode, _predict

    task = get_task("sst2")
    tokenizer, model = load_classifier(model_dir, task, None, scratch=False)
    texts = FALLBACK_TEXT[:5] + ["A much longer sentence, with many more words in it than the others have."]
    encoded = _encode(tokenizer, [{"text_a": t, "text_b": None, "label": 0} for t in texts], 64)
    grouped = _predict(model, encoded, 4, tokenizer.pad_token_id, False, torch.device("cpu"),
                       lambda: torch.autocast("cpu", enabled=False))  # batches sorted by length, own padding
    width = 64
    batch = _collate([{**x, "label": None} for x in encoded], tokenizer.pad_token_id, False, torch.device("cpu"))
    pad = width - batch["input_ids"].shape[1]
    batch = {k: torch.nn.functional.pad(v, (0, pad), value=tokenizer.pad_token_id if k == "input_ids" else 0)
             for k, v in batch.items()}
    with torch.no_grad():
        logits_fixed = model.eval()(**batch).logits
    assert batch["input_ids"].shape[1] == width
    assert grouped == logits_fixed.argmax(-1).tolist()
    with torch.no_grad():  # and the logits themselves agree, example by example
        for i, x in enumerate(encoded):
            one = _collate([{**x, "label": None}], tokenizer.pad_token_id, False, torch.device("cpu"))
            assert torch.allclose(model(**one).logits[0], logits_fixed[i], atol=1e-5)


def test_batches_are_padded_to_a_multiple_of_8_within_the_models_positions(model_dir):
    """Rounding the padded length up to a multiple of 8 (oneDNN keeps its kernels for a few shapes) never cuts an
    example, never goes past the model's positions, and changes no prediction."""
    import numpy as np
    import torch

    from electra_ds.finetuning.classifier import load_classifier
    from electra_ds.finetuning.finetune import PAD_MULTIPLE, _collate, _encode

    def item(n):
        return {"input_ids": np.arange(5, 5 + n), "token_type_ids": np.zeros(n, dtype=np.int64), "label": None}

    assert PAD_MULTIPLE == 8
    widths = {n: _collate([item(3), item(n)], 0, False, "cpu")["input_ids"].shape[1] for n in (1, 8, 9, 17, 126, 128)}
    assert widths == {1: 8, 8: 8, 9: 16, 17: 24, 126: 128, 128: 128}
    assert _collate([item(126)], 0, False, "cpu", limit=127)["input_ids"].shape[1] == 127  # not past the model
    assert _collate([item(126)], 0, False, "cpu", limit=100)["input_ids"].shape[1] == 126  # never cuts an example
    batch = _collate([item(3), item(11)], 0, False, "cpu")
    assert batch["attention_mask"].sum(1).tolist() == [3, 11] and batch["input_ids"][0, 3:].eq(0).all()

    task = get_task("sst2")
    tokenizer, model = load_classifier(model_dir, task, None, scratch=False)
    texts = FALLBACK_TEXT[:7] + ["A much longer sentence, with many more words in it than the others have."]
    encoded = _encode(tokenizer, [{"text_a": t, "text_b": None, "label": 0} for t in texts], 64)
    assert any(len(x["input_ids"]) % 8 for x in encoded)  # some examples do get rounded
    items = [{**x, "label": None} for x in encoded]
    batches = [_collate(items, tokenizer.pad_token_id, False, "cpu", multiple=m) for m in (PAD_MULTIPLE, 1)]
    assert batches[0]["input_ids"].shape[1] > batches[1]["input_ids"].shape[1]  # the longest example is rounded too
    with torch.no_grad():
        model.eval()
        rounded, exact = (model(**b).logits for b in batches)
    assert torch.allclose(rounded, exact, atol=1e-5)


def test_cpu_fine_tuning_uses_eager_attention_with_the_same_outputs(model_dir, tmp_path):
    """On CPU the classifier runs eager attention (bf16 matmuls under autocast), elsewhere sdpa; both paths (scratch,
    from the export) load it, and its logits equal sdpa's."""
    import torch

    from electra_ds.finetuning.classifier import load_classifier

    task = get_task("sst2")
    torch.manual_seed(0)
    _, eager = load_classifier(model_dir, task, None, scratch=False, device_type="cpu")
    torch.manual_seed(0)
    _, sdpa = load_classifier(model_dir, task, None, scratch=False, device_type="cuda")
    torch.manual_seed(0)
    _, scratch = load_classifier(model_dir, task, None, scratch=True, device_type="cpu")
    assert eager.config._attn_implementation == "eager" == scratch.config._attn_implementation
    assert sdpa.config._attn_implementation == "sdpa"
    sdpa.load_state_dict(eager.state_dict())
    ids = torch.tensor([[2, 17, 42, 99, 3, 0, 0], [2, 5, 6, 7, 8, 9, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        a = eager.eval()(input_ids=ids, attention_mask=mask).logits
        b = sdpa.eval()(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a, b, atol=1e-5), (a, b)
