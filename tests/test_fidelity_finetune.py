"""Fine-tuning as the official code does it: reversed pairs for MRPC/STS-B, STS-B targets / 5, the head option."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from helpers import cli
from helpers_models import build_tiny_model_dir, write_tsv

from electra_ds.cli import build_parser
from electra_ds.finetuning import finetune
from electra_ds.finetuning.classifier import OfficialHead
from electra_ds.finetuning.glue import get_task

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


# -- the official optimizer, schedule, loss reduction and head initialisation (issue 25) ---------------------------

def _tiny_classifier(n_layers: int = 1):
    """A module with ELECTRA's parameter names (embeddings, one encoder layer with a LayerNorm, a head)."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    layer = torch.nn.ModuleDict({"dense": torch.nn.Linear(3, 3), "LayerNorm": torch.nn.LayerNorm(3)})
    electra = torch.nn.ModuleDict({"embeddings": torch.nn.ModuleDict({"word_embeddings": torch.nn.Embedding(5, 3)}),
                                   "encoder": torch.nn.ModuleDict({"layer": torch.nn.ModuleList([layer])})})
    model = torch.nn.ModuleDict({"electra": electra, "classifier": torch.nn.Linear(3, 2)})
    model.config = SimpleNamespace(num_hidden_layers=n_layers)
    model.base_model_prefix = "electra"
    return model


def _ft_args(**kw):
    from argparse import Namespace

    return Namespace(**{"learning_rate": 1e-2, "layer_decay": 0.8, "weight_decay": 0.01, "warmup_fraction": 0.1,
                        "optimizer": "adam_no_bias_correction", "schedule": "official", **kw})


def test_official_finetuning_update_matches_a_hand_computed_step():
    """Two steps of the official AdamWeightDecayOptimizer with the official schedule and layer-wise rates, by hand:
    step 0 has rate 0 (but fills m and v), step 1 has peak x (1 - 1/T) x 1/W; no bias correction; decay on weights,
    not on LayerNorm or biases."""
    model = _tiny_classifier()
    optimizer, scheduler = finetune.build_optimizer(model, _ft_args(), total_steps=100)  # W = 10
    params = dict(model.named_parameters())
    start = {k: p.detach().clone() for k, p in params.items()}
    grads = [{k: torch.randn_like(p) for k, p in params.items()} for _ in range(2)]
    for g in grads:
        for k, p in params.items():
            p.grad = g[k].clone()
        optimizer.step()
        scheduler.step()
    rate = (1 - 1 / 100) * (1 / 10)
    # head depth n+2 -> lr; encoder layer 0 depth 1 -> lr x 0.8^2; embeddings depth 0 -> lr x 0.8^3
    for name, lr, decays in (("classifier.weight", 1e-2, True), ("classifier.bias", 1e-2, False),
                             ("electra.encoder.layer.0.dense.weight", 1e-2 * 0.8 ** 2, True),
                             ("electra.encoder.layer.0.LayerNorm.weight", 1e-2 * 0.8 ** 2, False),
                             ("electra.embeddings.word_embeddings.weight", 1e-2 * 0.8 ** 3, True)):
        g1, g2, p0 = grads[0][name], grads[1][name], start[name]
        m = 0.9 * 0.1 * g1 + 0.1 * g2
        v = 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
        update = m / (v.sqrt() + 1e-6) + (0.01 * p0 if decays else 0)
        assert torch.allclose(params[name].detach(), p0 - lr * rate * update, atol=1e-7), name


def test_default_finetuning_optimizer_is_bias_corrected_adamw():
    model = _tiny_classifier()
    optimizer, _ = finetune.build_optimizer(model, _ft_args(optimizer="adamw", schedule="warmup_then_decay"), 100)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["eps"] == 1e-6


@pytest.mark.parametrize("total, fraction", [(100, 0.1), (233, 0.1)])
def test_finetuning_schedules_values(total, fraction):
    """The rate multiplier at each step: official = (1 - t/T) x min(1, t/W) with W = T x fraction kept fractional
    (23.3 for 233 steps, as create_optimizer); the default is transformers' t/int(W), then (T - t)/(T - int(W))."""
    peak = 1e-2
    seen = {}
    for schedule in ("official", "warmup_then_decay"):
        model = _tiny_classifier()
        optimizer, scheduler = finetune.build_optimizer(model, _ft_args(schedule=schedule, warmup_fraction=fraction),
                                                        total)
        head = next(g for g in optimizer.param_groups if g["depth"] == 3)  # the head: the full rate
        rates = []
        for _ in range(total + 1):
            rates.append(head["lr"] / peak)
            optimizer.step()
            scheduler.step()
        seen[schedule] = rates
    w = total * fraction
    official = [(1 - t / total) * min(1.0, t / w) for t in range(total + 1)]
    default = [t / int(w) if t < int(w) else (total - t) / (total - int(w)) for t in range(total + 1)]
    assert seen["official"] == pytest.approx(official, abs=1e-12)
    assert seen["warmup_then_decay"] == pytest.approx(default, abs=1e-12)
    t = int(w)  # at the end of warmup the official rate is already lower by t/T
    assert seen["official"][t] == pytest.approx((1 - t / total) * min(1, t / w))
    assert seen["official"][0] == 0 and seen["warmup_then_decay"][0] == 0


def test_loss_reduction_sum_scales_the_gradient_before_clipping(model_dir, tmp_path, monkeypatch):
    """One step of the real fine-tuning loop: with ``sum`` the pre-clip gradient norm is batch_size x the mean's
    (the same seed, batch and dropout; 6 RTE examples in batches of 3), and clipping still caps it at 1.0."""
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *a, **kw):
        params = list(params)
        total = clip(params, max_norm, *a, **kw)
        norms.append((float(total), float(torch.norm(torch.stack([p.grad.norm() for p in params])))))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    data = glue_dir(tmp_path / "glue")
    for reduction in ("mean", "sum"):
        assert cli("finetune", "--model-dir", model_dir, "--task", "rte", "--seed", "1", "--data-dir", data,
                   "--output-dir", tmp_path / reduction, "--max-steps", "1", "--batch-size", "3", "--max-length", "32",
                   "--precision", "fp32", "--loss-reduction", reduction, "--results-dir", tmp_path) == 0
    (mean_pre, mean_post), (sum_pre, sum_post) = norms
    assert sum_pre == pytest.approx(3 * mean_pre, rel=1e-4)
    assert sum_post <= 1.0 + 1e-5 and mean_post <= 1.0 + 1e-5
    hparams = json.loads((tmp_path / "sum" / "metrics.json").read_text())["hparams"]
    assert hparams["loss_reduction"] == "sum" and hparams["optimizer"] == "adamw"


def test_official_head_initialisation_is_glorot_uniform_with_zero_bias():
    """google-research/electra's head is tf.layers.dense without an initializer: Glorot-uniform, bounded by
    sqrt(6 / (fan_in + fan_out)) with std bound / sqrt(3); HF's normal(0, 0.02) would fail both checks. The
    dropout is the official fixed 0.1 even for a model trained without dropout."""
    from transformers import ElectraConfig

    config = ElectraConfig(hidden_size=256, num_labels=3, hidden_dropout_prob=0.0)
    torch.manual_seed(0)
    head = OfficialHead(config)
    w = head.out_proj.weight.detach()
    bound = (6 / (256 + 3)) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.08)
    assert abs(w.mean().item()) < 0.1 * bound
    assert torch.count_nonzero(head.out_proj.bias) == 0
    assert head.dropout.p == 0.1


def test_paper_presets_choose_the_official_finetuning_recipe():
    import yaml
    from helpers import REPO

    for name in ("electra-small", "electra-base"):
        ft = yaml.safe_load((REPO / "config" / "presets" / f"{name}.yaml").read_text())["finetune"]
        assert (ft["optimizer"], ft["schedule"], ft["loss_reduction"], ft["head"]) == (
            "adam_no_bias_correction", "official", "sum", "official"), name


def test_paper_mnli_start_rte_and_stsb_with_rte_at_2e_5(tmp_path):
    """The electra-small plan with init_from_mnli: RTE and STS-B start from MNLI (the paper's appendix), MRPC does
    not (RoBERTa's recipe); RTE runs at 2e-5, its --learning-rate after the settings' (argparse keeps the last);
    every job gets the preset's official optimizer, schedule, reduction and head."""
    import shlex

    from helpers import REPO
    from helpers_slurm import slurm_jobs

    override = tmp_path / "override.yaml"
    override.write_text("finetune: {tasks: [rte, mrpc, stsb], seeds: [1], init_from_mnli: true}\n")
    jobs = {j["wildcards"].get("task"): shlex.split(j["shell"]) for j in
            slurm_jobs(tmp_path, REPO / "config/presets/electra-small.yaml", override) if j["rule"] == "finetune"}
    assert set(jobs) == {"rte", "mrpc", "stsb", "mnli"}

    def last(words, flag):
        return [w for f, w in zip(words, words[1:]) if f == flag][-1]

    assert "--init-from" in jobs["rte"] and "--init-from" in jobs["stsb"] and "--init-from" not in jobs["mrpc"]
    assert float(last(jobs["rte"], "--learning-rate")) == 2e-5
    assert float(last(jobs["stsb"], "--learning-rate")) == float(last(jobs["mrpc"], "--learning-rate")) == 3e-4
    assert "--keep-model" in jobs["mnli"]
    for words in jobs.values():
        assert (last(words, "--optimizer"), last(words, "--schedule"), last(words, "--loss-reduction"),
                last(words, "--head")) == ("adam_no_bias_correction", "official", "sum", "official")


@pytest.mark.parametrize("exported, recipe", [(0.0, 0.1), (0.1, 0.0), (0.0, 0.3)])
def test_fine_tuning_runs_at_the_recipes_dropout_whatever_the_export_says(tmp_path, exported, recipe):
    """The official code fine-tunes at BertConfig's dropout 0.1 whatever the pretraining used (the CPU presets
    pretrain at 0): finetune.dropout sets the encoder's hidden and attention dropout and the head's, and a kept
    model records it."""
    import transformers

    from electra_ds.finetuning.classifier import load_classifier

    src = build_tiny_model_dir(tmp_path / "m", TEXT)
    config = json.loads((src / "config.json").read_text())
    config.update(hidden_dropout_prob=exported, attention_probs_dropout_prob=exported)
    (src / "config.json").write_text(json.dumps(config))
    for scratch in (False, True):
        _, model = load_classifier(src, get_task("rte"), scratch=scratch, device_type="cpu", dropout=recipe)
        rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        assert rates == {recipe}, (scratch, rates)
        assert model.config.attention_probs_dropout_prob == recipe
    assert build_parser().parse_args(["finetune", "--model-dir", "m", "--task", "rte", "--seed", "1",
                                      "--output-dir", "o"]).dropout == 0.1  # the schema's default

    out = tmp_path / "out"
    assert cli("finetune", "--model-dir", src, "--task", "rte", "--seed", "1", "--output-dir", out,
               "--data-dir", glue_dir(tmp_path / "glue"), "--epochs", "1", "--max-length", "32", "--keep-model",
               "--dropout", str(recipe), "--results-dir", tmp_path) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hparams"]["dropout"] == recipe
    kept = transformers.AutoConfig.from_pretrained(out / "model")
    assert (kept.hidden_dropout_prob, kept.attention_probs_dropout_prob) == (recipe, recipe)
