"""The CPU dropout (electra_ds.common.dropout): PyTorch's distribution with a cheaper mask, and where it enters a
model (its dropout modules and its eager attention, ALiBi's included)."""

import pytest
import torch
from transformers import ElectraConfig, ElectraForSequenceClassification

from electra_ds.common import alibi
from electra_ds.common.dropout import ATTENTION_NAME, fast_dropout, scaled_keep_mask, use_cpu_dropout


def test_mask_keeps_each_element_with_probability_1_minus_p_and_scales_it():
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of the 4 uniforms a draw gives
    for p in (0.1, 0.5, 0.9):
        mask = scaled_keep_mask((n,), p, torch.float32)
        assert mask.shape == (n,) and mask.dtype == torch.float32
        assert mask.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
        dropped = (mask == 0).double()
        se = (p * (1 - p) / n) ** 0.5
        assert abs(dropped.mean().item() - p) < 5 * se
        # each of the four 16-bit lanes of a draw is unbiased, and neighbouring elements are uncorrelated
        lanes = dropped[: n - n % 4].view(-1, 4).mean(0)
        assert (lanes - p).abs().max().item() < 5 * se * 2
        corr = torch.corrcoef(torch.stack([dropped[:-1], dropped[1:]]))[0, 1].item()
        assert abs(corr) < 5 / n ** 0.5


def test_mask_in_bf16_and_shaped_like_its_input():
    mask = scaled_keep_mask((3, 5, 7), 0.1, torch.bfloat16)
    assert mask.shape == (3, 5, 7) and mask.dtype == torch.bfloat16
    assert set(mask.unique().float().tolist()) <= {0.0, torch.tensor(1 / 0.9, dtype=torch.bfloat16).item()}


def test_fast_dropout_forward_and_backward_apply_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 50, requires_grad=True)
    y = fast_dropout(x, 0.3, training=True)
    kept = y != 0
    assert 0.6 < kept.float().mean().item() < 0.8
    assert torch.allclose(y[kept], x[kept] / 0.7)
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7))


def test_fast_dropout_is_seeded_and_off_in_evaluation():
    x = torch.randn(1000)
    torch.manual_seed(5)
    a = fast_dropout(x, 0.1)
    torch.manual_seed(5)
    b = fast_dropout(x, 0.1)
    assert torch.equal(a, b)
    assert not torch.equal(a, fast_dropout(x, 0.1))  # the generator moved on
    assert fast_dropout(x, 0.1, training=False) is x
    assert torch.equal(fast_dropout(x, 0.0), x)


def _classifier(alibi_bias: bool, hidden_dropout: float, attention_dropout: float):
    config = ElectraConfig(vocab_size=100, embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, num_labels=2,
                           hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=attention_dropout)
    if alibi_bias:
        setattr(config, alibi.CONFIG_KEY, True)
    torch.manual_seed(0)
    return ElectraForSequenceClassification._from_config(config, attn_implementation=alibi.implementation(config, "eager"))


@pytest.mark.parametrize("alibi_bias", [False, True])
def test_use_cpu_dropout_changes_no_result_in_evaluation(alibi_bias):
    model = _classifier(alibi_bias, 0.1, 0.1).eval()
    ids = torch.randint(5, 100, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, 15:] = 0
    before = model(input_ids=ids, attention_mask=mask).logits
    use_cpu_dropout(model)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) > 0  # replaced, same p
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    expected = "alibi_eager" if alibi_bias else ATTENTION_NAME
    assert model.config._attn_implementation == expected
    assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, before, atol=1e-6)


@pytest.mark.parametrize("alibi_bias", [False, True])
def test_use_cpu_dropout_drops_attention_probabilities_in_training(alibi_bias):
    """Hidden dropout off, attention dropout on: training-mode outputs differ from evaluation's only through the
    attention function, and are reproducible from the seed."""
    model = use_cpu_dropout(_classifier(alibi_bias, 0.0, 0.5))
    ids = torch.randint(5, 100, (2, 16))
    evaluated = model.eval()(input_ids=ids).logits
    model.train()
    torch.manual_seed(3)
    a = model(input_ids=ids).logits
    torch.manual_seed(3)
    b = model(input_ids=ids).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, evaluated, atol=1e-4)


def test_use_cpu_dropout_leaves_sdpa_alone():
    config = ElectraConfig(vocab_size=100, embedding_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, num_labels=2)
    model = use_cpu_dropout(ElectraForSequenceClassification._from_config(config, attn_implementation="sdpa"))
    assert model.config._attn_implementation == "sdpa"
