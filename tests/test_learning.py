"""Pretraining learns: the learning-signal metrics, the sampling options, and a tiny run that must leave the
base rate (and must not when the discriminator's labels or inputs are broken)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from electra_ds.common.optim import lr_lambda
from electra_ds.pretraining.masking import inverse_cdf_sample
from electra_ds.pretraining.model import ElectraPretrainer, ModelShape
from electra_ds.pretraining.pretrain import PlateauWatch
from electra_ds.pretraining.step_metrics import (
    MetricSums,
    auc_from_histograms,
    binary_entropy,
    logit_histogram,
    summarise,
)
from electra_ds.pretraining.trainer import global_batch_indices, step_seed

# -- the metrics -------------------------------------------------------------------------------------

def test_binned_auc_matches_the_exact_auc():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    labels = torch.rand(5000, generator=g) < 0.15
    logits = torch.randn(5000, generator=g) + 1.3 * labels.float() - 2.0
    binned = auc_from_histograms(logit_histogram(logits[labels]), logit_histogram(logits[~labels]))
    exact = roc_auc_score(labels.numpy(), logits.numpy())
    assert abs(binned - exact) < 2e-3 and exact > 0.7
    same = logit_histogram(torch.zeros(10))
    assert auc_from_histograms(same, same) == 0.5  # one bin: all ties


def test_rtd_gain_is_zero_at_the_base_rate_and_one_when_perfect():
    p = 0.13
    base = binary_entropy(p)
    assert math.isclose(base, -(p * math.log(p) + (1 - p) * math.log(1 - p)))
    n = 1000.0

    def sums(disc_loss):
        return {"masked": torch.tensor(150.0), "gen_loss_sum": torch.tensor(150.0), "gen_correct": torch.tensor(15.0),
                "tokens": torch.tensor(n), "replaced": torch.tensor(p * n), "disc_loss_sum": torch.tensor(disc_loss * n),
                "disc_correct": torch.tensor(870.0), "disc_tp": torch.tensor(0.0), "disc_pred_pos": torch.tensor(0.0),
                "hist_replaced": logit_histogram(torch.zeros(130)), "hist_original": logit_histogram(torch.zeros(870))}

    assert abs(summarise(sums(base))["rtd_gain"]) < 1e-6  # float32 tensors
    assert summarise(sums(0.0))["rtd_gain"] == 1.0
    assert summarise(sums(base / 2))["disc_auc"] == 0.5


def test_metric_sums_add_micro_batches_exactly():
    model = ElectraPretrainer(SHAPE).eval()
    ids = _rows(16)
    whole = MetricSums()
    whole.add(model(ids, seeds=range(16))["stats"])
    parts = MetricSums()
    parts.add(model(ids[:8], seeds=range(8))["stats"])
    parts.add(model(ids[8:], seeds=range(8, 16))["stats"])
    a, b = whole.summary(), parts.summary()
    for key in ("gen_loss", "disc_loss", "rtd_gain", "disc_auc", "replaced_frac", "disc_recall"):
        assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7), key


# -- sampling options --------------------------------------------------------------------------------

SHAPE = ModelShape(vocab_size=300, embedding_size=32, hidden_size=64, num_layers=2, num_heads=4,
                   intermediate_size=128, max_position_embeddings=64, dropout=0.0)


def _rows(n=8, length=40):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (n, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    return ids


def test_temperature_changes_only_the_sampling_distribution():
    logits = torch.randn(4000, 50, generator=torch.Generator().manual_seed(1)) * 3
    uniform = torch.rand(4000, generator=torch.Generator().manual_seed(2))
    originals = torch.zeros(4000, dtype=torch.long)
    samples = {t: ElectraPretrainer(SHAPE, temperature=t).sample_replacements(logits, originals, uniform)
               for t in (1.0, 2.0, 1e6)}
    assert torch.equal(samples[1.0], inverse_cdf_sample(logits, uniform))  # temperature 1 = the plain sampler
    # flatter distributions: the most likely token is drawn less often, and at T -> inf all tokens alike
    top = logits.argmax(-1)
    hits = {t: (s == top).float().mean().item() for t, s in samples.items()}
    assert hits[1.0] > hits[2.0] > hits[1e6]
    assert abs(hits[1e6] - 1 / 50) < 0.01
    # the rest of the step is untouched: same masks, same generator loss, only the samples differ
    ids = _rows(32)
    torch.manual_seed(0)
    out1 = ElectraPretrainer(SHAPE, temperature=1.0).eval()(ids, seeds=range(32))
    torch.manual_seed(0)
    out2 = ElectraPretrainer(SHAPE, temperature=3.0).eval()(ids, seeds=range(32))
    assert out1["gen_loss"].item() == out2["gen_loss"].item()
    assert out1["stats"]["masked"].item() == out2["stats"]["masked"].item()


def test_disallow_correct_never_samples_the_original():
    logits = torch.zeros(500, 20)
    logits[:, 7] = 20.0  # the generator is sure of token 7, which is the original
    originals = torch.full((500,), 7)
    uniform = torch.rand(500, generator=torch.Generator().manual_seed(0))
    assert (ElectraPretrainer(SHAPE).sample_replacements(logits, originals, uniform) == 7).all()
    assert not (ElectraPretrainer(SHAPE, disallow_correct=True).sample_replacements(logits, originals, uniform) == 7).any()


def test_plateau_warning_fires_once_after_warmup(caplog):
    watch = PlateauWatch(warmup=100, patience=200, objective="electra")
    with caplog.at_level(logging.WARNING, logger="electra_ds.pretrain"):
        fired = [watch.check(step, {"rtd_gain": 0.005, "disc_auc": 0.52, "replaced_frac": 0.13})
                 for step in range(50, 700, 50)]
    assert fired.count(True) == 1 and fired.index(True) == list(range(50, 700, 50)).index(350)
    assert "not learning" in caplog.text and "temperature" in caplog.text
    healthy = PlateauWatch(warmup=100, patience=200, objective="electra")
    assert not any(healthy.check(s, {"rtd_gain": 0.2}) for s in range(50, 2000, 50))
    assert not PlateauWatch(100, 200, "mlm").check(1000, {"rtd_gain": 0.0})


# -- a tiny run learns ---------------------------------------------------------------------------------

LEARN_STEPS = 150
LEARN_THRESHOLD = 0.08  # measured: ~0.15-0.2 at 150 steps; broken labels or inputs stay <= 0.01


def _tiny_run(shards, monkeypatch=None, breakage=None) -> dict:
    """150 steps of a 64-wide, 2-layer ELECTRA (temperature 2) on the demo corpus; validation metrics."""
    from electra_ds.data.shard_format import open_split

    train, valid = open_split(shards, "train"), open_split(shards, "valid")
    if breakage == "labels":  # labels no longer say which tokens were replaced
        real = ElectraPretrainer.corrupt

        def shuffled_labels(input_ids, masked, sampled):  # permuted among the batch's real tokens
            disc_input, replaced = real(input_ids, masked, sampled)
            positions = (input_ids != 0).flatten().nonzero().squeeze(1)
            perm = torch.randperm(len(positions), generator=torch.Generator().manual_seed(int(replaced.sum())))
            labels = replaced.flatten().clone()
            labels[positions] = labels[positions][perm]
            return disc_input, labels.view_as(replaced)

        monkeypatch.setattr(ElectraPretrainer, "corrupt", staticmethod(shuffled_labels))
    elif breakage == "inputs":  # the discriminator sees the original text, not the corrupted one
        real = ElectraPretrainer.corrupt
        monkeypatch.setattr(ElectraPretrainer, "corrupt", staticmethod(
            lambda input_ids, masked, sampled: (input_ids.clone(), real(input_ids, masked, sampled)[1])))
    torch.manual_seed(0)
    shape = ModelShape(vocab_size=train.vocab_size, embedding_size=64, hidden_size=64, num_layers=2, num_heads=2,
                       intermediate_size=256, max_position_embeddings=train.max_seq_len, generator_fraction=0.25)
    model = ElectraPretrainer(shape, temperature=2.0)
    optimizer = torch.optim.AdamW(model.param_groups(0.01), lr=2e-3, eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(20, LEARN_STEPS))
    for step in range(LEARN_STEPS):
        rows = global_batch_indices(len(train), 32, step, 0)
        torch.manual_seed(step)
        out = model(torch.from_numpy(train.batch(rows)), seeds=[step_seed(0, step, 0, i) for i in range(32)])
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    sums = MetricSums()
    with torch.no_grad():
        rows = np.arange(min(len(valid), 128))
        for part in np.array_split(rows, max(1, len(rows) // 32)):
            sums.add(model(torch.from_numpy(valid.batch(part)), seeds=[int(r) for r in part])["stats"])
    return sums.summary()


def test_a_tiny_model_leaves_the_base_rate(prepared):
    metrics = _tiny_run(prepared["shards"])
    assert metrics["rtd_gain"] > LEARN_THRESHOLD, metrics
    assert metrics["disc_auc"] > 0.7, metrics


@pytest.mark.parametrize("breakage", ["labels", "inputs"])
def test_the_learning_test_catches_a_broken_discriminator(prepared, monkeypatch, breakage):
    metrics = _tiny_run(prepared["shards"], monkeypatch, breakage)
    assert metrics["rtd_gain"] < LEARN_THRESHOLD / 2, metrics


def test_token_prior_auc_is_the_auc_of_a_context_free_score():
    from sklearn.metrics import roc_auc_score

    from electra_ds.pretraining.step_metrics import TokenPrior

    g = torch.Generator().manual_seed(0)
    vocab = 50
    rate = torch.rand(vocab, generator=g) * 0.5  # each id is a replacement at its own rate

    def draw(n):
        ids = torch.randint(0, vocab, (n,), generator=g)
        replaced = torch.rand(n, generator=g) < rate[ids]
        return {"ids_replaced": torch.bincount(ids[replaced], minlength=vocab).double(),
                "ids_total": torch.bincount(ids, minlength=vocab).double()}, ids, replaced

    prior = TokenPrior(vocab)
    train, _, _ = draw(20000)
    prior.add(train)
    valid, ids, replaced = draw(5000)
    got = summarise({**valid, **prior.auc_stats(valid), "disc_loss_sum": torch.tensor(1.0),
                     "tokens": torch.tensor(5000.0), "replaced": replaced.sum().double(),
                     "hist_replaced": logit_histogram(torch.ones(3)), "hist_original": logit_histogram(torch.zeros(3))})
    base = float(prior.replaced.sum() / prior.total.sum())
    score = ((prior.replaced + base) / (prior.total + 1))[ids]
    assert abs(got["token_prior_auc"] - roc_auc_score(replaced.numpy(), score.numpy())) < 1e-9
    assert got["context_auc"] == pytest.approx(1.0 - got["token_prior_auc"])  # disc_auc is 1 here
