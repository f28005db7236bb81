"""The ELECTRA objective: masking, sampling, shared embeddings and the combined loss."""

import math

import pytest
import torch
from helpers_models import tiny_batch as batch

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from electra_ds.pretraining.masking import SAMPLE_BLOCK, RowRandom, inverse_cdf_sample, mask_positions
from electra_ds.pretraining.model import ElectraPretrainer, ModelShape, electra_configs, token_type_ids_for
from electra_ds.pretraining.step_metrics import summarise

SHAPE = ModelShape(vocab_size=300, embedding_size=32, hidden_size=64, num_layers=2, num_heads=4,
                   intermediate_size=128, max_position_embeddings=64, dropout=0.0)


def test_mask_positions_count_and_never_specials():
    ids = batch()
    masked = mask_positions(ids, 0.15, torch.rand(ids.shape))
    real = (ids != PAD_ID) & (ids != CLS_ID) & (ids != SEP_ID)
    assert not (masked & ~real).any()
    expected = torch.clamp(torch.round(real.sum(1).float() * 0.15), min=1).long()
    assert torch.equal(masked.sum(1), expected)


def test_generator_is_a_fraction_of_the_discriminator():
    disc, gen = electra_configs(SHAPE)
    # official rule (google-research/electra): 1/4 of the hidden size, 64 dims per head, intermediate 4 x hidden
    assert gen.hidden_size == 16 and gen.num_attention_heads == 1 and gen.intermediate_size == 64
    assert gen.embedding_size == disc.embedding_size == 32
    assert disc.hidden_size == 64


def test_embeddings_are_shared_and_lm_head_tied():
    model = ElectraPretrainer(SHAPE)
    assert model.generator.electra.embeddings is model.discriminator.electra.embeddings
    emb = model.discriminator.electra.embeddings.word_embeddings.weight
    assert model.generator.generator_lm_head.weight.data_ptr() == emb.data_ptr()


def test_loss_is_mlm_plus_weighted_detection_and_mask_token_share():
    torch.manual_seed(0)
    model = ElectraPretrainer(SHAPE, disc_weight=50.0).eval()
    out = model(batch(rows=64), seeds=range(64))
    assert math.isclose(out["loss"].item(), out["gen_loss"].item() + 50 * out["disc_loss"].item(), rel_tol=1e-5)
    stats = summarise(out["stats"])
    assert 0 <= stats["disc_acc"] <= 1 and 0 <= stats["gen_acc"] <= 1
    # untrained generator on a 300-token vocabulary: the loss is near log(300)
    assert abs(out["gen_loss"].item() - math.log(300)) < 1.0


def test_85_percent_of_masked_positions_become_mask_token(monkeypatch):
    model = ElectraPretrainer(SHAPE).eval()
    seen = {}
    real_forward = model.generator.electra.forward

    def spy(input_ids, **kw):
        seen["ids"] = input_ids
        return real_forward(input_ids, **kw)

    monkeypatch.setattr(model.generator.electra, "forward", spy)
    ids = batch(rows=256, length=60, pad_from=59)
    model(ids, seeds=range(256))
    is_mask = seen["ids"] == MASK_ID
    changed = seen["ids"] != ids
    assert torch.equal(is_mask, changed)  # only [MASK] replacements, nothing random
    masked_total = mask_positions(ids, 0.15, RowRandom(range(256), 256, "cpu").rows(2, 60)[:, 0]).sum().item()
    frac = is_mask.sum().item() / masked_total
    assert 0.80 < frac < 0.90


def test_sample_equal_to_original_is_not_replaced():
    """A generator that always predicts the original token leaves nothing 'replaced'."""
    ids = batch()
    masked = mask_positions(ids, 0.15, RowRandom(range(8), 8, "cpu").rows(2, ids.shape[1])[:, 0])
    originals = ids[masked]

    class OracleHead(torch.nn.Module):
        def forward(self, h):
            logits = torch.full((h.shape[0], SHAPE.vocab_size), -1e4)
            logits[torch.arange(h.shape[0]), originals] = 1e4
            return logits

    model = ElectraPretrainer(SHAPE).eval()
    model.generator.generator_predictions = torch.nn.Identity()
    model.generator.generator_lm_head = OracleHead()
    out = model(ids, seeds=range(8))
    s = {k: v.item() for k, v in out["stats"].items() if v.numel() == 1}
    assert s["masked"] == masked.sum().item()
    assert s["replaced"] == 0 and s["gen_correct"] == s["masked"]


def test_inverse_cdf_sampling_matches_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(40000, 1)
    samples = inverse_cdf_sample(logits, torch.rand(40000, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(samples, minlength=4).float() / len(samples)
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.01)


@pytest.mark.parametrize("vocab", [SAMPLE_BLOCK * 3, 1000])  # whole blocks, and a last block padded with zeros
def test_inverse_cdf_sampling_over_blocks_never_draws_an_impossible_id(vocab):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, vocab, generator=g).mul(2).repeat(20000, 1)
    impossible = torch.tensor([0, SAMPLE_BLOCK - 1, SAMPLE_BLOCK, vocab - 1])
    logits[:, impossible] = float("-inf")
    uniform = torch.rand(20000, generator=g)
    uniform[:3] = torch.tensor([0.0, 1.0 - 1e-7, 0.5])  # the ends of the range
    samples = inverse_cdf_sample(logits, uniform)
    assert not torch.isin(samples, impossible).any() and samples.max() < vocab
    freq = torch.bincount(samples, minlength=vocab).float() / len(samples)
    top = torch.softmax(logits[0], -1).topk(5)
    assert torch.allclose(freq[top.indices], top.values, atol=0.015)
    # one search over the whole cumulative sum draws the same ids (up to float rounding at boundaries)
    cdf = torch.softmax(logits, -1).cumsum(-1)
    flat = torch.searchsorted(cdf, ((1 - uniform) * cdf[:, -1]).unsqueeze(1)).squeeze(1).clamp(max=vocab - 1)
    assert (flat == samples).float().mean() > 0.999


def test_token_type_ids_follow_first_sep():
    ids = torch.tensor([[CLS_ID, 7, 8, SEP_ID, 9, 10, SEP_ID, PAD_ID]])
    assert token_type_ids_for(ids).tolist() == [[0, 0, 0, 0, 1, 1, 1, 0]]
    from electra_ds.data.shard_format import token_type_ids

    assert token_type_ids(ids.numpy()).tolist() == token_type_ids_for(ids).tolist()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_implementations_agree(attn):
    torch.manual_seed(0)
    ref = ElectraPretrainer(ModelShape(**{**SHAPE.to_dict(), "attn_implementation": "eager"})).eval()
    other = ElectraPretrainer(ModelShape(**{**SHAPE.to_dict(), "attn_implementation": attn})).eval()
    other.load_state_dict(ref.state_dict())
    ids = batch()
    a = ref(ids, seeds=range(8))
    b = other(ids, seeds=range(8))
    assert torch.allclose(a["loss"], b["loss"], atol=1e-4)


def test_auto_attention_is_eager_on_cpu_and_sdpa_elsewhere_and_in_the_export():
    from electra_ds.common.hardware import resolve_attention

    assert resolve_attention("auto", "cpu") == "eager"
    assert resolve_attention("auto", "cuda") == "sdpa" and resolve_attention("auto", None) == "sdpa"
    assert resolve_attention("sdpa", "cpu") == "sdpa"  # a named choice is kept
    with pytest.raises(ValueError, match="attn_implementation"):
        resolve_attention("flash", "cpu")
    shape = ModelShape(**{**SHAPE.to_dict(), "attn_implementation": "auto"})
    on_cpu = ElectraPretrainer(shape, device_type="cpu")
    assert {on_cpu.discriminator.config._attn_implementation, on_cpu.generator.config._attn_implementation} == {"eager"}
    exported = ElectraPretrainer(shape).exported()["discriminator"]
    assert exported.config._attn_implementation == "sdpa"


def test_eager_attention_in_bf16_follows_fp32():
    """The CPU default runs attention's matmuls in bf16 (softmax accumulated in fp32, stored in bf16): the loss of
    a bf16 model stays within 2% of the same model in fp32."""
    torch.manual_seed(0)
    shape = ModelShape(**{**SHAPE.to_dict(), "attn_implementation": "auto"})
    ref = ElectraPretrainer(shape, device_type="cpu").eval()
    low = ElectraPretrainer(shape, device_type="cpu").eval()
    low.load_state_dict(ref.state_dict())
    low.to(torch.bfloat16)
    ids = batch()
    a, b = ref(ids, seeds=range(8))["loss"], low(ids, seeds=range(8))["loss"]
    assert abs(b.float().item() - a.item()) / a.item() < 0.02, (a.item(), b.item())


def test_rows_get_the_same_draws_in_any_micro_batch_split():
    """Per-row seeds and global denominators: two half batches give the full batch's loss and gradient."""
    torch.manual_seed(0)
    model = ElectraPretrainer(SHAPE).eval()  # no dropout
    ids = batch(rows=8)
    from electra_ds.pretraining.trainer import global_token_counts

    n_masked, n_real = global_token_counts(ids.numpy(), 0.15)
    full = model(ids, seeds=range(8), gen_denominator=n_masked, disc_denominator=n_real)
    full["loss"].backward()
    grad_full = model.discriminator.electra.embeddings.word_embeddings.weight.grad.clone()
    model.zero_grad()
    halves = [model(ids[i:i + 4], seeds=range(i, i + 4), gen_denominator=n_masked / 2, disc_denominator=n_real / 2)
              for i in (0, 4)]
    loss = sum(h["loss"] for h in halves) / 2  # DeepSpeed averages the parts' gradients over ranks/accumulation
    loss.backward()
    assert torch.allclose(loss, full["loss"], atol=1e-5)
    for key, value in full["stats"].items():  # every statistic is a sum: the halves add up to the whole
        assert torch.allclose(halves[0]["stats"][key] + halves[1]["stats"][key], value, rtol=1e-5), key
    grad_halves = model.discriminator.electra.embeddings.word_embeddings.weight.grad
    assert torch.allclose(grad_halves, grad_full, atol=1e-6)


@pytest.mark.parametrize("objective", ["electra", "mlm", "adversarial"])
def test_each_objective_trains(objective):
    """A few optimizer steps on one batch lower the objective's loss (it is wired to learn)."""
    torch.manual_seed(0)
    model = ElectraPretrainer(SHAPE, objective=objective)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = batch(rows=16)
    losses = []
    for step in range(25):
        out = model(ids, seeds=range(16))  # the same masks every step: the batch can be fitted
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]
    if objective == "mlm":
        assert model.discriminator is None and model.generator.config.hidden_size == SHAPE.hidden_size
        assert "disc_loss" not in out and "disc_loss_sum" not in out["stats"]  # no detection to report
    else:
        assert model.generator.config.hidden_size == SHAPE.hidden_size // 4


@pytest.mark.parametrize("objective", ["electra", "mlm"])
def test_prior_output_biases_start_the_model_at_the_unigram_and_replacement_base_rates(objective):
    """output_bias_init prior: at step 0 the generator's predictions are the data's unigram distribution (over the
    ids that can be a target) and the discriminator's the base rate of a replacement."""
    torch.manual_seed(0)
    counts = torch.zeros(SHAPE.vocab_size, dtype=torch.long)
    counts[5:] = torch.randint(1, 1000, (SHAPE.vocab_size - 5,))
    counts[PAD_ID] = counts[CLS_ID] = counts[SEP_ID] = 10**6  # specials: never a target, whatever their count
    model = ElectraPretrainer(SHAPE, objective=objective, mask_prob=0.15)
    set_to = model.init_output_biases(counts.numpy())
    prior = counts.double().clone()
    prior[[PAD_ID, CLS_ID, SEP_ID, MASK_ID]] = 0
    prior = prior.clamp_min(1) / prior.clamp_min(1).sum()
    bias = model.generator.generator_lm_head.bias.double()
    assert torch.allclose(bias, prior.log(), atol=1e-6)
    assert bias[PAD_ID] <= bias[5:].min()  # the special's million counts were dropped
    if objective == "electra":
        expected = 0.15 * (1 - float((prior ** 2).sum()))
        assert torch.sigmoid(torch.tensor(set_to["discriminator_bias"])) == pytest.approx(expected, rel=1e-6)
        assert model.discriminator.discriminator_predictions.dense_prediction.bias.item() == pytest.approx(
            set_to["discriminator_bias"], rel=1e-6)
    else:
        assert set_to["discriminator_bias"] is None
    # only the two biases moved: every other tensor is the seed's init
    torch.manual_seed(0)
    torch.randint(1, 1000, (SHAPE.vocab_size - 5,))
    fresh = ElectraPretrainer(SHAPE, objective=objective, mask_prob=0.15).state_dict()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, fresh[k])}
    assert moved == {"generator.generator_lm_head.bias"} | (
        {"discriminator.discriminator_predictions.dense_prediction.bias"} if objective == "electra" else set())
