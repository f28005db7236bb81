"""ALiBi attention biases (model.attention_bias: alibi): the bias itself, and that every stage that builds or loads
a model applies it."""

import json
import math

import pytest
import torch
from helpers_models import build_tiny_model_dir, tiny_batch

from electra_ds.common import alibi
from electra_ds.pretraining.model import ElectraPretrainer, ModelShape

SHAPE = ModelShape(vocab_size=300, embedding_size=32, hidden_size=64, num_layers=2, num_heads=4,
                   intermediate_size=128, max_position_embeddings=64, dropout=0.0, attention_bias="alibi")
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the film was good", "the film was bad"] * 20


def test_slopes_are_the_papers_from_8_heads_and_span_the_same_range_below():
    assert alibi.slopes(8) == pytest.approx([2.0 ** -i for i in range(1, 9)])
    assert alibi.slopes(16) == pytest.approx([2.0 ** (-i / 2) for i in range(1, 17)])
    # not a power of two: the 8-head slopes, then every other slope of the 16-head sequence (Press et al.)
    assert alibi.slopes(12) == alibi.slopes(8) + alibi.slopes(16)[0::2][:4]
    # fewer heads (an ELECTRA generator has one per 64 dimensions): 1/2 ... 1/256, geometric
    assert alibi.slopes(1) == [0.5]
    assert alibi.slopes(2) == pytest.approx([0.5, 2.0 ** -8])
    four = alibi.slopes(4)
    assert four[0] == 0.5 and math.isclose(four[-1], 2.0 ** -8) and math.isclose(four[1] / four[0], four[2] / four[1])
    with pytest.raises(ValueError):
        alibi.slopes(0)


@pytest.mark.parametrize("base", ["eager", "sdpa"])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_the_attention_function_adds_minus_slope_times_distance(base, mask_kind):
    """The registered function computes softmax(q k^T / sqrt(d) - m_h |i - j| + mask) v, padding masked out."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    torch.manual_seed(0)
    batch, heads, length, dim = 2, 4, 7, 8
    q, k, v = (torch.randn(batch, heads, length, dim) for _ in range(3))
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[1, 5:] = False  # the second row is padded after 5 tokens
    bool_mask = keep[:, None, None, :].expand(batch, 1, length, length)
    masks = {"none": None, "bool": bool_mask,
             "float": torch.zeros(bool_mask.shape).masked_fill(~bool_mask, torch.finfo(torch.float32).min)}
    alibi.register()
    module = torch.nn.Module()
    module.training, module.is_causal = False, False
    out, _ = ALL_ATTENTION_FUNCTIONS[f"alibi_{base}"](module, q, k, v, masks[mask_kind], scaling=dim ** -0.5,
                                                      dropout=0.0)
    m = torch.tensor(alibi.slopes(heads))[None, :, None, None]
    i = torch.arange(length)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim) - m * (i[:, None] - i[None, :]).abs()
    if mask_kind != "none":
        scores = scores.masked_fill(~bool_mask, float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-5)


def test_a_model_built_with_the_bias_uses_it_and_its_kernels_agree():
    torch.manual_seed(0)
    with_bias = ElectraPretrainer(SHAPE, device_type="cpu").eval()
    assert {with_bias.discriminator.config._attn_implementation,
            with_bias.generator.config._attn_implementation} == {"alibi_eager"}
    on_sdpa = ElectraPretrainer(ModelShape(**{**SHAPE.to_dict(), "attn_implementation": "sdpa"})).eval()
    without = ElectraPretrainer(ModelShape(**{**SHAPE.to_dict(), "attention_bias": "none"})).eval()
    assert on_sdpa.discriminator.config._attn_implementation == "alibi_sdpa"
    assert without.discriminator.config._attn_implementation == "sdpa"
    assert not alibi.uses_alibi(without.discriminator.config)
    state = with_bias.state_dict()
    with torch.no_grad():  # attention that reads content would hide the bias in an untrained model: make it matter
        for layer in with_bias.discriminator.electra.encoder.layer:
            layer.attention.self.value.weight.mul_(50)
        state = with_bias.state_dict()
        on_sdpa.load_state_dict(state)
        without.load_state_dict(state)  # the bias has no weights: the same state dict fits both
    ids = tiny_batch()
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = {name: net.discriminator.electra(ids, attention_mask=mask).last_hidden_state
                  for name, net in (("eager", with_bias), ("sdpa", on_sdpa), ("none", without))}
    assert torch.allclose(hidden["eager"], hidden["sdpa"], atol=1e-4)
    assert (hidden["eager"] - hidden["none"]).abs().max() > 0.1  # layer-normed states: differences of order 1


def test_an_export_records_the_bias_and_loads_with_it(tmp_path):
    from transformers import AutoModelForPreTraining

    torch.manual_seed(0)
    net = ElectraPretrainer(SHAPE, device_type="cpu").eval().exported()["discriminator"]
    with torch.no_grad():
        for layer in net.electra.encoder.layer:
            layer.attention.self.value.weight.mul_(50)
    net.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["alibi"] is True and "alibi_eager" not in json.dumps(config)  # the kernel is the loader's choice
    assert alibi.uses_alibi(tmp_path) and alibi.implementation(tmp_path, "eager") == "alibi_eager"
    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path, attn_implementation=alibi.implementation(tmp_path))
    stock = AutoModelForPreTraining.from_pretrained(tmp_path)  # what a plain from_pretrained gives: no bias
    ids = tiny_batch()
    with torch.no_grad():
        ref, again, plain = (m.eval().electra(ids, attention_mask=(ids != 0).long()).last_hidden_state
                             for m in (net, reloaded, stock))
    assert torch.allclose(ref, again, atol=1e-5)
    assert (ref - plain).abs().max() > 0.1


def test_fine_tuning_and_the_probe_load_an_alibi_model_with_its_bias(tmp_path):
    from electra_ds.finetuning.classifier import load_classifier
    from electra_ds.finetuning.glue import TASKS
    from electra_ds.finetuning.linear_probe import load_encoder

    model_dir = build_tiny_model_dir(tmp_path / "alibi" / "discriminator", TEXTS, vocab_size=100, alibi=True)
    plain_dir = build_tiny_model_dir(tmp_path / "plain" / "discriminator", TEXTS, vocab_size=100)
    task = TASKS["sst2"]
    for scratch in (False, True):
        _, model = load_classifier(model_dir, task, None, scratch=scratch, device_type="cpu")
        assert model.config._attn_implementation == "alibi_eager"
    _, model = load_classifier(plain_dir, task, init_from=model_dir, device_type="cpu")
    assert model.config._attn_implementation == "alibi_eager"  # the model it starts from decides
    _, model = load_classifier(plain_dir, task, None, device_type="cpu")
    assert model.config._attn_implementation == "eager"
    _, encoder = load_encoder(model_dir)
    assert encoder.config._attn_implementation == "alibi_sdpa"


def test_a_checkpoint_from_before_the_field_resumes_only_without_the_bias():
    from electra_ds.pretraining.checkpoint import config_differences

    saved = {"model": {"hidden_size": 64}}
    assert config_differences(saved, {"model": {"hidden_size": 64, "attention_bias": "none"}}) == []
    assert config_differences(saved, {"model": {"hidden_size": 64, "attention_bias": "alibi"}})


def test_the_model_card_says_how_to_load_the_bias():
    from electra_ds.pretraining.model_card import render

    summary = {"model": SHAPE.to_dict(), "objective": "electra", "steps": 10}
    text = render("discriminator", summary=summary)
    assert "attn_implementation=alibi.implementation(path)" in text and "ALiBi" in text
    plain = render("discriminator", summary={**summary, "model": {**SHAPE.to_dict(), "attention_bias": "none"}})
    assert "alibi" not in plain


@pytest.mark.parametrize("bias, implementation", [("alibi", "alibi_eager"), ("alibi", "alibi_sdpa"),
                                                  ("none", "electra_ds_eager"), ("none", "eager")])
def test_padding_changes_no_real_position(bias, implementation):
    """Hugging Face builds a padding mask only for attention names it has a mask function for; each name electra-ds
    registers gets its base's, so a padded example's real positions read what the unpadded example's do."""
    from transformers import ElectraConfig, ElectraModel

    from electra_ds.common import dropout

    config = ElectraConfig(vocab_size=100, embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64)
    if bias == "alibi":
        setattr(config, alibi.CONFIG_KEY, True)
        alibi.register()
    else:
        dropout.register()
    torch.manual_seed(0)
    model = ElectraModel._from_config(config, attn_implementation=implementation).eval()
    ids = torch.randint(5, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).last_hidden_state[0, :7]
        alone = model(ids[:1, :7]).last_hidden_state[0]
    assert model.config._attn_implementation == implementation
    assert torch.allclose(padded, alone, atol=1e-5)
