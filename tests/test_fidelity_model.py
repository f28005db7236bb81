"""Fidelity options of the model (issue 13): the official generator size rule, generator_layers, the uniform
generator and embedding sharing (es / gdes / none). Each option must change what it should and nothing else."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_models import tiny_batch as batch

from electra_ds import PAD_ID
from electra_ds.pretraining.masking import RowRandom
from electra_ds.pretraining.model import ElectraPretrainer, GradientDisentangledEmbedding, electra_configs
from electra_ds.pretraining.shape import ModelShape, encoder_flops, flops_per_token, generator_dims

SHAPE = ModelShape(vocab_size=300, embedding_size=32, hidden_size=64, num_layers=4, num_heads=4,
                   intermediate_size=256, max_position_embeddings=64, dropout=0.0)


def shape(**kw) -> ModelShape:
    return ModelShape(**{**SHAPE.to_dict(), **kw})


def model(seed=0, **kw) -> ElectraPretrainer:
    torch.manual_seed(seed)
    return ElectraPretrainer(kw.pop("shape", SHAPE), **kw).eval()


def trained(m, steps):
    """``m`` after ``steps`` AdamW steps on tiny batches (fresh row seeds each step), in eval mode."""
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for step in range(steps):
        opt.zero_grad()
        m(batch(seed=step), seeds=range(step * 8, step * 8 + 8))["loss"].backward()
        opt.step()
    return m.eval()


def disc_input_spy(m):
    """Record what the discriminator sees (its input ids) on every forward."""
    seen = []
    m.discriminator.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    return seen


# -- generator size (fidelity row 7) -------------------------------------------------------------------------------

def official_generator(hidden_size: int, fraction: float):
    """google-research/electra run_pretraining.get_generator_config."""
    hidden = int(round(hidden_size * fraction))
    return hidden, max(1, hidden // 64), 4 * hidden


def previous_rule(s: ModelShape):
    """electra-ds's rule before the official one: heads and intermediate size scaled by the fraction."""
    f = s.generator_fraction
    heads = max(1, round(s.num_heads * f))
    return max(heads, round(s.hidden_size * f / heads) * heads), heads, max(1, round(s.intermediate_size * f))


@pytest.mark.parametrize("dims, fraction, expected", [
    ((256, 4, 1024), 1 / 4, (64, 1, 256)),     # ELECTRA-Small (paper: 1/4)
    ((768, 12, 3072), 1 / 4, (192, 3, 768)),   # ELECTRA-Base
    ((768, 12, 3072), 1 / 3, (256, 4, 1024)),  # ELECTRA-Base (paper: 1/3)
    ((128, 2, 512), 1 / 4, (32, 1, 128)),      # the demo / cpu-study shape
])
def test_official_generator_rule_equals_the_previous_one_on_the_paper_shapes(dims, fraction, expected):
    s = shape(hidden_size=dims[0], num_heads=dims[1], intermediate_size=dims[2], generator_fraction=fraction)
    assert generator_dims(s) == official_generator(dims[0], fraction) == expected
    assert previous_rule(s) == expected


@pytest.mark.parametrize("dims, fraction, official, previous", [
    ((256, 4, 1024), 1 / 3, (85, 1, 340), (85, 1, 341)),        # Small at 1/3: round-off of the intermediate
    ((768, 12, 3072), 0.333, (256, 4, 1024), (256, 4, 1023)),   # the electra-base preset's 0.333
    ((64, 4, 128), 1 / 4, (16, 1, 64), (16, 1, 32)),            # intermediate != 4 x hidden (test shapes)
    ((32, 2, 64), 1 / 2, (16, 1, 64), (16, 1, 32)),             # tests/test_pretrain.py's TINY
])
def test_shapes_where_the_official_rule_differs(dims, fraction, official, previous):
    s = shape(hidden_size=dims[0], num_heads=dims[1], intermediate_size=dims[2], generator_fraction=fraction)
    assert generator_dims(s) == official == official_generator(dims[0], fraction)
    assert previous_rule(s) == previous


def test_heads_that_do_not_divide_the_hidden_size_round_it_to_a_multiple():
    # Large at 1/3: official 341 wide with 341 // 64 = 5 heads, which the official code rejects
    hidden, heads, inter = generator_dims(shape(hidden_size=1024, num_heads=16, intermediate_size=4096,
                                                generator_fraction=1 / 3))
    assert (hidden, heads, inter) == (340, 5, 1360) and hidden % heads == 0


# -- generator_layers ----------------------------------------------------------------------------------------------

def test_generator_layers_changes_only_the_generators_depth():
    full, half = model(), model(shape=shape(generator_layers=0.5))
    assert len(full.generator.electra.encoder.layer) == 4 and len(half.generator.electra.encoder.layer) == 2
    assert len(half.discriminator.electra.encoder.layer) == 4
    full_state, half_state = full.state_dict(), half.state_dict()
    dropped = {k for k in full_state if k.startswith(("generator.electra.encoder.layer.2.",
                                                      "generator.electra.encoder.layer.3."))}
    assert dropped and set(half_state) == set(full_state) - dropped
    assert all(half_state[k].shape == full_state[k].shape for k in half_state)
    _, gen_config = electra_configs(shape(generator_layers=0.5))
    assert (gen_config.hidden_size, gen_config.num_attention_heads) == generator_dims(SHAPE)[:2]
    # round(layers x fraction), at least one
    assert len(model(shape=shape(num_layers=12, generator_layers=0.75)).generator.electra.encoder.layer) == 9
    assert len(model(shape=shape(num_layers=1, generator_layers=0.25)).generator.electra.encoder.layer) == 1


def test_generator_layers_flops_drop_by_the_missing_generator_layers_only():
    seq = 128
    g_hidden, _, g_inter = generator_dims(SHAPE)
    missing = encoder_flops(g_hidden, g_inter, 4, 32, seq) - encoder_flops(g_hidden, g_inter, 2, 32, seq)
    full, half = flops_per_token(SHAPE, seq), flops_per_token(shape(generator_layers=0.5), seq)
    assert math.isclose(full - half, 3.0 * missing, rel_tol=1e-12)
    assert flops_per_token(SHAPE, seq, "mlm") == flops_per_token(shape(generator_layers=0.5), seq, "mlm")


# -- uniform generator (the official ablation: no generator is built) --------------------------------------------

def test_uniform_generator_builds_no_generator_and_its_loss_is_the_constant_log_vocab():
    ids = batch(rows=16)
    uni = model(uniform_generator=True).train()
    assert uni.generator is None
    assert sum(p.numel() for p in uni.parameters()) == sum(p.numel() for p in uni.discriminator.parameters())
    out = uni(ids, seeds=range(16))
    assert math.isclose(out["gen_loss"].item(), math.log(SHAPE.vocab_size), rel_tol=1e-6)
    assert out["stats"]["gen_correct"] == 0  # argmax of zero logits is id 0, [PAD], never an original
    out["loss"].backward()  # the discriminator's loss alone trains it, embeddings included
    assert all(p.grad is not None for p in uni.parameters())
    assert uni.discriminator.electra.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def masked_positions(m, ids, seeds):
    """The positions ``m`` masks on ``ids`` with these row seeds (the same draws its forward makes)."""
    from electra_ds.pretraining.masking import MASK_DRAWS, choose_masked

    draws = RowRandom(seeds, ids.shape[0], "cpu").rows(MASK_DRAWS, ids.shape[1])
    return choose_masked(ids, draws, m.mask_prob, m.masking, m.mask_count, m.word_starts)[0]


def test_uniform_generator_draws_uniformly_over_the_whole_vocabulary_specials_included():
    vocab, rows = 40, 64
    uni = model(shape=shape(vocab_size=vocab), uniform_generator=True)
    seen = disc_input_spy(uni)
    ids = torch.randint(5, vocab, (rows, 60), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    counts = torch.zeros(vocab, dtype=torch.float64)
    with torch.no_grad():
        for rep in range(40):
            seeds = range(rep * rows, (rep + 1) * rows)
            uni(ids, seeds=seeds)
            counts += torch.bincount(seen[-1][masked_positions(uni, ids, seeds)], minlength=vocab).double()
    assert counts[:5].min() > 0  # [PAD] [UNK] [CLS] [SEP] [MASK] are drawn too, as in the official code
    expected = counts.sum().item() / vocab
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    df = vocab - 1
    assert chi2 < df + 5 * math.sqrt(2 * df), chi2  # ~5 sigma above the chi-square mean


def test_uniform_generator_changes_only_the_replacements():
    ids = batch(rows=16)
    base, uni = model(), model(uniform_generator=True)
    uni.discriminator.load_state_dict(base.discriminator.state_dict())
    seen_base, seen_uni = disc_input_spy(base), disc_input_spy(uni)
    out_base, out_uni = base(ids, seeds=range(16)), uni(ids, seeds=range(16))
    masked = masked_positions(base, ids, range(16))
    assert torch.equal(out_base["stats"]["masked"], out_uni["stats"]["masked"])  # the same masks
    assert torch.equal(seen_base[0][~masked], ids[~masked]) and torch.equal(seen_uni[0][~masked], ids[~masked])
    assert (seen_base[0][masked] != seen_uni[0][masked]).any()  # other tokens there
    assert (seen_uni[0] != ids).sum() >= 0.9 * masked.sum()  # a uniform draw rarely equals the original


def test_uniform_samples_follow_the_row_seeds_only():
    ids = batch(rows=8)
    a, b = model(seed=0, uniform_generator=True), model(seed=1, uniform_generator=True)
    seen_a, seen_b = disc_input_spy(a), disc_input_spy(b)
    a(ids, seeds=range(8))
    b(ids, seeds=range(8))  # other weights, the same draws
    assert torch.equal(seen_a[0], seen_b[0])
    # world-size equivalence: the rows split over two "ranks" see the same replacements
    a(ids[:3], seeds=range(3))
    a(ids[3:], seeds=range(3, 8))
    assert torch.equal(torch.cat(seen_a[1:]), seen_a[0])


@pytest.mark.parametrize("kw", [{"objective": "mlm"}, {"objective": "adversarial"}, {"embedding_sharing": "gdes"}])
def test_uniform_generator_refuses_settings_that_need_a_generator(kw):
    with pytest.raises(ValueError, match="uniform_generator builds no generator"):
        model(uniform_generator=True, **kw)


def test_uniform_generator_flops_are_the_discriminators_alone():
    seq = 128
    full, uni = flops_per_token(SHAPE, seq), flops_per_token(SHAPE, seq, uniform_generator=True)
    g_hidden, _, g_inter = generator_dims(SHAPE)
    gen = encoder_flops(g_hidden, g_inter, SHAPE.num_layers, SHAPE.embedding_size, seq)
    head = 0.15 * (2 * g_hidden * SHAPE.embedding_size + 2 * SHAPE.embedding_size * SHAPE.vocab_size)
    assert math.isclose(full - uni, 3.0 * (gen + head), rel_tol=1e-12)


def test_uniform_generator_export_publishes_the_discriminator_alone(tmp_path):
    from transformers import AutoModelForPreTraining

    from electra_ds.pretraining.model import token_type_ids_for

    m = trained(model(uniform_generator=True), steps=2)
    state = {n: p.detach().clone() for n, p in m.named_parameters()}
    with pytest.raises(ValueError, match="missing"):  # it is not an es state with a generator
        ElectraPretrainer.from_training_state(SHAPE, "electra", state)
    nets = ElectraPretrainer.from_training_state(SHAPE, "electra", state, uniform_generator=True).exported()
    assert set(nets) == {"discriminator"}
    nets["discriminator"].save_pretrained(tmp_path / "discriminator")
    disc = AutoModelForPreTraining.from_pretrained(tmp_path / "discriminator").eval()
    ids = batch(rows=4)
    kwargs = {"attention_mask": (ids != PAD_ID).long(), "token_type_ids": token_type_ids_for(ids)}
    with torch.no_grad():
        assert (disc(ids, **kwargs).logits - m.discriminator(ids, **kwargs).logits).abs().max() < 1e-5


# -- embedding sharing ---------------------------------------------------------------------------------------------

def shared_params(m):
    gen = {id(p) for p in m.generator.parameters()}
    return [n for n, p in m.discriminator.named_parameters() if id(p) in gen]


def test_none_gives_separate_embeddings_with_the_generator_head_tied_to_its_own():
    es, none = model(), model(embedding_sharing="none")
    assert none.generator.electra.embeddings is not none.discriminator.electra.embeddings
    assert shared_params(none) == []
    assert none.generator.generator_lm_head.weight is none.generator.electra.embeddings.word_embeddings.weight
    gen_emb = sum(p.numel() for p in none.generator.electra.embeddings.parameters())
    assert sum(p.numel() for p in none.parameters()) == sum(p.numel() for p in es.parameters()) + gen_emb
    # the discriminator's loss no longer reaches the generator's embeddings
    out = none(batch(), seeds=range(8))
    (out["loss"] - out["loss"].detach()).backward()
    word = none.generator.electra.embeddings.word_embeddings.weight
    g_total = word.grad.clone()
    none.zero_grad()
    none.disc_weight = 0.0
    out = none(batch(), seeds=range(8))
    out["loss"].backward()
    assert torch.allclose(word.grad, g_total, atol=1e-7)


def test_es_shares_the_whole_embedding_module_once():
    es = model()
    assert es.generator.electra.embeddings is es.discriminator.electra.embeddings
    names = {n.split("electra.embeddings.")[1] for n in shared_params(es)}
    assert names == {"word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
                     "LayerNorm.weight", "LayerNorm.bias"}


def gdes_twin(es: ElectraPretrainer) -> ElectraPretrainer:
    """A gdes model with es's weights (delta zero): the same function as es at the start."""
    gdes = model(embedding_sharing="gdes")
    state = {k: v for k, v in es.state_dict().items()}
    emb = "discriminator.electra.embeddings."
    for table in ("word_embeddings", "position_embeddings"):
        state[f"{emb}{table}.source.weight"] = state.pop(f"{emb}{table}.weight")
        state[f"{emb}{table}.delta"] = torch.zeros_like(state[f"{emb}{table}.source.weight"])
    missing, unexpected = gdes.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("generator.electra.embeddings.") or "lm_head" in k for k in missing)
    return gdes


def test_gdes_structure_registers_every_parameter_once():
    gdes = model(embedding_sharing="gdes")
    d_emb, g_emb = gdes.discriminator.electra.embeddings, gdes.generator.electra.embeddings
    assert isinstance(d_emb.word_embeddings, GradientDisentangledEmbedding)
    assert d_emb.word_embeddings.source is g_emb.word_embeddings
    assert d_emb.position_embeddings.source is g_emb.position_embeddings
    assert d_emb.token_type_embeddings is not g_emb.token_type_embeddings and d_emb.LayerNorm is not g_emb.LayerNorm
    assert torch.count_nonzero(d_emb.word_embeddings.delta) == 0
    assert gdes.generator.generator_lm_head.weight is g_emb.word_embeddings.weight
    # every tensor once in parameters(): what the optimizer and ZeRO partition
    params = list(gdes.parameters())
    assert len({id(p) for p in params}) == len(params)
    assert sorted(n.split("electra.embeddings.")[1] for n in shared_params(gdes)) == [
        "position_embeddings.source.weight", "word_embeddings.source.weight"]
    # the discriminator's tables: the generator's plus the delta
    with torch.no_grad():
        d_emb.word_embeddings.delta.normal_()
        ids = batch()
        expected = g_emb.word_embeddings.weight[ids] + d_emb.word_embeddings.delta[ids]
        assert torch.allclose(d_emb.word_embeddings(ids), expected)


def test_gdes_leaves_the_generator_gradient_as_the_mlm_loss_alone_gives_it():
    ids = batch(rows=16)
    es = model()
    gdes = gdes_twin(es)
    es_gen_only = model(seed=5)
    es_gen_only.load_state_dict(es.state_dict())
    es_gen_only.disc_weight = 0.0  # es with the discriminator's loss switched off: the MLM loss alone

    outs = {name: m(ids, seeds=range(16)) for name, m in
            (("es", es), ("gdes", gdes), ("es_gen_only", es_gen_only))}
    for out in outs.values():
        out["loss"].backward()
    # identical forward at delta = 0
    assert outs["gdes"]["gen_loss"] == outs["es"]["gen_loss"]
    assert math.isclose(outs["gdes"]["disc_loss"].item(), outs["es"]["disc_loss"].item(), rel_tol=1e-5)

    # every generator gradient under gdes (full loss) is the MLM loss's alone, as es gives it without the
    # discriminator's loss
    checked = 0
    for name, p in gdes.generator.named_parameters():
        ref = es_gen_only.generator.get_parameter(name).grad
        assert torch.allclose(p.grad, ref, rtol=1e-4, atol=1e-7), name
        checked += 1
    assert checked > 10
    word = "electra.embeddings.word_embeddings.weight"
    # ... while under es the discriminator's loss reaches the shared table (so the comparison is sensitive)
    es_word, only_gen = es.generator.get_parameter(word).grad, es_gen_only.generator.get_parameter(word).grad
    assert not torch.allclose(es_word, only_gen, rtol=1e-3, atol=1e-6)

    # the discriminator's loss reaches its tables only through the delta, exactly as much as it reached es's
    d_emb = gdes.discriminator.electra.embeddings
    for table in ("word_embeddings", "position_embeddings"):
        disc_part = (es.generator.get_parameter(f"electra.embeddings.{table}.weight").grad
                     - es_gen_only.generator.get_parameter(f"electra.embeddings.{table}.weight").grad)
        delta = getattr(d_emb, table).delta.grad
        assert delta.abs().sum() > 0
        assert torch.allclose(delta, disc_part, rtol=1e-3, atol=1e-6), table
    assert d_emb.token_type_embeddings.weight.grad is not None  # its own, trained by its loss


def test_gdes_export_folds_the_delta_and_reproduces_the_trained_model(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

    from electra_ds.pretraining.model import token_type_ids_for

    tiny = shape(num_layers=2, vocab_size=300)
    m = trained(model(shape=tiny, embedding_sharing="gdes"), steps=3)
    d_emb = m.discriminator.electra.embeddings
    assert d_emb.word_embeddings.delta.abs().max() > 0 and d_emb.position_embeddings.delta.abs().max() > 0

    # the state as ZeRO consolidates it: every tensor once, under one of its names
    state = {n: p.detach().clone() for n, p in m.named_parameters()}
    state.update({n: b for n, b in m.named_buffers() if n in m.state_dict()})
    restored = ElectraPretrainer.from_training_state(tiny, "electra", state, embedding_sharing="gdes")
    nets = restored.exported()
    assert type(nets["discriminator"].electra.embeddings.word_embeddings) is torch.nn.Embedding
    assert not any("delta" in k or "source" in k for k in nets["discriminator"].state_dict())
    for name, net in nets.items():
        net.save_pretrained(tmp_path / name)
    disc = AutoModelForPreTraining.from_pretrained(tmp_path / "discriminator").eval()
    gen = AutoModelForMaskedLM.from_pretrained(tmp_path / "generator").eval()
    ids = batch(rows=4)
    kwargs = {"attention_mask": (ids != PAD_ID).long(), "token_type_ids": token_type_ids_for(ids)}
    with torch.no_grad():
        assert (disc(ids, **kwargs).logits - m.discriminator(ids, **kwargs).logits).abs().max() < 1e-5
        assert (gen(ids, **kwargs).logits - m.generator(ids, **kwargs).logits).abs().max() < 1e-5
    assert torch.equal(disc.electra.embeddings.word_embeddings.weight,
                       m.generator.electra.embeddings.word_embeddings.weight + d_emb.word_embeddings.delta)


def test_a_gdes_state_does_not_load_as_es():
    state = model(embedding_sharing="gdes").state_dict()
    with pytest.raises(ValueError, match="unexpected"):
        ElectraPretrainer.from_training_state(SHAPE, "electra", state)


@pytest.mark.slow
@pytest.mark.parametrize("option", [["--embedding-sharing", "gdes"], ["--uniform-generator"]])
def test_deepspeed_zero3_trains_the_option_and_exports(prepared, tmp_path, option):
    from test_pretrain import pretrain_and_export

    summary, _ = pretrain_and_export(prepared, tmp_path, ["--launcher", "none"], stage=3, steps=3, extra=option)
    assert summary["zero_stage"] == 3
    from transformers import AutoModelForPreTraining

    disc = AutoModelForPreTraining.from_pretrained(tmp_path / "export" / "discriminator")
    assert type(disc.electra.embeddings.word_embeddings) is torch.nn.Embedding
    published = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert published == (["discriminator"] if option == ["--uniform-generator"] else ["discriminator", "generator"])
    if option == ["--uniform-generator"]:  # no generator: the FLOPs are the discriminator's alone
        from electra_ds.pretraining.shape import ModelShape

        assert summary["flops_per_token"] == flops_per_token(ModelShape(**summary["model"]), summary["tokens_per_example"],
                                                             uniform_generator=True)
