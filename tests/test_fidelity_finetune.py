"""Fine-tuning as the official code does it: reversed pairs for MRPC/STS-B, STS-B targets / 5, the head option."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from electra_ds import finetune
from electra_ds.classifier import OfficialHead
from electra_ds.cli import build_parser
from electra_ds.glue import get_task
from helpers import cli
from helpers_models import build_tiny_model_dir, write_tsv

TEXT = ["The cat sat on the mat.", "A dog barked at the moon.", "Prices rose sharply in the third quarter."] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "discriminator", TEXT)


def glue_dir(tmp_path):
    mrpc = [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]] + \
        [[i % 2, i, i + 100, f"first {i}.", f"second {i}."] for i in range(6)]
    write_tsv(tmp_path / "MRPC" / "train.tsv", mrpc)
    stsb = [["index", "sentence1", "sentence2", "score"]] + [[i, f"left {i}.", f"right {i}.", i % 6] for i in range(6)]
    write_tsv(tmp_path / "STS-B" / "train.tsv", stsb)
    rte = [["index", "sentence1", "sentence2", "label"]] + \
        [[i, f"premise {i}.", f"hypothesis {i}.", "entailment"] for i in range(6)]
    write_tsv(tmp_path / "RTE" / "train.tsv", rte)
    for task in ("MRPC", "STS-B", "RTE"):
        src = tmp_path / task / "train.tsv"
        (tmp_path / task / "dev.tsv").write_text(src.read_text())
    return tmp_path


def load(task, data, *extra):
    args = build_parser().parse_args(["finetune", "--model-dir", "m", "--task", task, "--seed", "1",
                                      "--output-dir", "o", "--data-dir", str(data), *extra])
    return finetune._load_data(get_task(task), args)[0]


@pytest.mark.parametrize("task", ["mrpc", "stsb"])
def test_unordered_pair_tasks_train_on_both_orders(tmp_path, task):
    data = glue_dir(tmp_path)
    train = load(task, data)
    assert len(train) == 12 and train[6:] == [{**ex, "text_a": ex["text_b"], "text_b": ex["text_a"]}
                                              for ex in train[:6]]
    assert len(load(task, data, "--no-double-unordered")) == 6
    assert len(load(task, data, "--max-train-examples", "4")) == 8  # the cap counts source pairs


def test_ordered_pair_tasks_are_not_doubled(tmp_path):
    data = glue_dir(tmp_path)
    assert len(load("rte", data)) == 6
    assert not get_task("probe-adjacency").unordered_pair  # "is B the next sentence": the order is the task


def test_stsb_targets_are_scaled_to_0_1_and_predictions_back():
    items = [{"input_ids": torch.tensor([2, 7, 3]).numpy(), "token_type_ids": torch.zeros(3, dtype=torch.long).numpy(),
              "label": 4.0}]
    batch = finetune._collate(items, 0, True, "cpu")
    assert batch["labels"].tolist() == [pytest.approx(0.8)]

    class Half(torch.nn.Module):
        def forward(self, **batch):
            return type("Out", (), {"logits": torch.full((batch["input_ids"].shape[0], 1), 0.5)})()

    preds = finetune._predict(Half(), [{**items[0], "label": None}], 4, 0, True, "cpu", contextlib.nullcontext)
    assert preds == [pytest.approx(2.5)]


def test_official_head_is_dropout_and_one_dense_layer_on_cls(model_dir, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, num_labels=3)
    head = OfficialHead(config)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(3, config.hidden_size)]
    seq = torch.randn(2, 5, config.hidden_size)
    head.eval()
    assert torch.allclose(head(seq), linears[0](seq[:, 0]))

    data = glue_dir(tmp_path / "glue")
    out = tmp_path / "out"
    assert cli("finetune", "--model-dir", model_dir, "--task", "mrpc", "--seed", "1", "--output-dir", out,
               "--data-dir", data, "--epochs", "1", "--head", "official", "--max-length", "32",
               "--results-dir", tmp_path) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0
