"""Masking options: pretrain.masking (token | whole_word) and pretrain.mask_count (exact | official).

The default (token / exact) must stay the paper's masking bit for bit; whole-word masking must never mask part
of a word, keep the masked count near round(maskable x mask_prob) and stay a function of (seed, step, example)
with exact, rank-independent loss denominators; official must be google-research/electra's mask()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO, electra_ds
from helpers_models import tiny_batch as batch

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from electra_ds.common.settings import SCHEMA_PATH
from electra_ds.pretraining.masking import (
    MASK_DRAWS,
    RowRandom,
    check_masking,
    choose_masked,
    max_predictions,
    official_counts,
    prediction_count,
    word_start_table,
)
from electra_ds.pretraining.model import ElectraPretrainer, ModelShape

SHAPE = ModelShape(vocab_size=300, embedding_size=32, hidden_size=64, num_layers=2, num_heads=4,
                   intermediate_size=128, max_position_embeddings=128, dropout=0.0)


# -- the masking before these options existed, frozen: the default must reproduce it exactly -------------------
def masks_per_row_v0(input_ids, mask_prob):
    candidates = (input_ids != PAD_ID) & (input_ids != CLS_ID) & (input_ids != SEP_ID)
    n_candidates = candidates.sum(1)
    n_mask = torch.clamp(torch.round(n_candidates.double() * mask_prob).long(), min=1)
    return candidates, torch.minimum(n_mask, n_candidates)


def mask_positions_v0(input_ids, mask_prob, scores):
    candidates, n_mask = masks_per_row_v0(input_ids, mask_prob)
    scores = scores.masked_fill(~candidates, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < n_mask.unsqueeze(1)


def generator_input_v0(ids, draws, objective, vocab_size):
    masked = mask_positions_v0(ids, 0.15, draws[:, 0])
    if objective == "mlm":
        use_mask = masked & (draws[:, 1] < 0.8)
        use_random = masked & (draws[:, 1] >= 0.8) & (draws[:, 1] < 0.9)
        random_ids = 5 + (draws[:, 2] * (vocab_size - 5)).long()
        return torch.where(use_random, random_ids, ids.masked_fill(use_mask, MASK_ID))
    return ids.masked_fill(masked & (draws[:, 1] < 0.85), MASK_ID)


def synthetic_word_starts(vocab=300, seed=0):
    """About 40% of the pieces start a word (so words of 1 to ~10 pieces); never the special ids."""
    starts = torch.rand(vocab, generator=torch.Generator().manual_seed(seed)) < 0.4
    starts[:5] = False
    return starts


def words_of(row: list[int], word_starts) -> list[list[int]]:
    """A plain reading of the definition: a word is a maskable piece that starts one (or follows a special /
    the row start) and the maskable pieces after it up to the next start or special."""
    words, current = [], None
    for i, t in enumerate(row):
        if t in (PAD_ID, CLS_ID, SEP_ID):
            current = None
            continue
        if current is None or bool(word_starts[t]):
            current = []
            words.append(current)
        current.append(i)
    return words


def spy_generator_input(model):
    seen = {}
    model.generator.electra.register_forward_pre_hook(lambda mod, args: seen.update(ids=args[0].clone()))
    return seen


# -- defaults ---------------------------------------------------------------------------------------------------
def test_options_are_off_by_default():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    pretrain = schema["properties"]["pretrain"]["properties"]
    assert pretrain["masking"]["default"] == "token" and pretrain["mask_count"]["default"] == "exact"
    model = ElectraPretrainer(SHAPE)
    assert (model.masking, model.mask_count, model.word_starts) == ("token", "exact", None)
    assert "word_starts" not in model.state_dict()


@pytest.mark.parametrize("seed", range(5))
def test_default_masks_are_the_old_ones_bit_for_bit(seed):
    ids = batch(rows=32, length=64, pad_from=40, seed=seed)
    draws = RowRandom(range(seed * 100, seed * 100 + 32), 32, "cpu").rows(MASK_DRAWS, 64)
    masked, decide, weight = choose_masked(ids, draws, 0.15)
    assert torch.equal(masked, mask_positions_v0(ids, 0.15, draws[:, 0]))
    assert torch.equal(decide, draws[:, 1]) and weight is None
    assert prediction_count(ids.numpy(), 0.15) == int(masks_per_row_v0(ids, 0.15)[1].sum())


@pytest.mark.parametrize("objective", ["electra", "mlm"])
def test_default_generator_input_is_the_old_one_bit_for_bit(objective):
    torch.manual_seed(0)
    model = ElectraPretrainer(SHAPE, objective=objective).eval()
    seen = spy_generator_input(model)
    ids = batch(rows=16)
    out = model(ids, seeds=range(100, 116))
    draws = RowRandom(range(100, 116), 16, "cpu").rows(3, ids.shape[1])
    assert torch.equal(seen["ids"], generator_input_v0(ids, draws, objective, SHAPE.vocab_size))
    assert out["stats"]["masked"].item() == mask_positions_v0(ids, 0.15, draws[:, 0]).sum().item()


def test_unknown_or_unsupported_combinations_are_refused():
    check_masking("whole_word", "exact")
    check_masking("token", "official")
    for masking, count in (("whole_word", "official"), ("span", "exact"), ("token", "approx")):
        with pytest.raises(ValueError):
            check_masking(masking, count)
    with pytest.raises(ValueError):
        ElectraPretrainer(SHAPE, masking="whole_word", mask_count="official")


# -- whole-word masking -----------------------------------------------------------------------------------------
def check_whole_words(ids, masked, scores, word_starts, mask_prob=0.15):
    """Every row: no word partly masked, no special masked, the chosen words are the ones with the smallest
    scores, and the count reaches round(maskable x mask_prob) without the last word taken it would not."""
    for b, row in enumerate(ids.tolist()):
        words = words_of(row, word_starts)
        maskable = sum(len(w) for w in words)
        target = min(max(1, round(maskable * mask_prob)), maskable)
        taken = []
        for w in words:
            flags = {bool(masked[b, i]) for i in w}
            assert len(flags) == 1, f"row {b}: word {w} partly masked"
            if flags == {True}:
                taken.append(w)
        assert masked[b].sum().item() == sum(len(w) for w in taken)  # nothing outside words: no special
        if not words:
            continue
        score = lambda w: scores[b, w[0]].item()  # noqa: E731
        last = max(taken, key=score)
        assert all(score(w) > score(last) for w in words if w not in taken)
        n = sum(len(w) for w in taken)
        assert n >= target and n - len(last) < target


def test_whole_words_are_masked_entirely_and_the_count_is_bounded():
    word_starts = synthetic_word_starts()
    ids = batch(rows=64, length=60, pad_from=33)
    draws = RowRandom(range(64), 64, "cpu").rows(MASK_DRAWS, 60)
    masked, decide, weight = choose_masked(ids, draws, 0.15, "whole_word", word_starts=word_starts)
    assert weight is None
    check_whole_words(ids, masked, draws[:, 0], word_starts)
    # one [MASK]/unchanged decision per word: the draw at its first piece
    for b, row in enumerate(ids.tolist()):
        for w in words_of(row, word_starts):
            assert len({decide[b, i].item() for i in w}) == 1
    maskable = ((ids != PAD_ID) & (ids != CLS_ID) & (ids != SEP_ID)).sum().item()
    assert 0.15 <= masked.sum().item() / maskable < 0.22


def test_whole_word_masking_on_the_real_vocabulary(prepared):
    """The vocab stage's sentencepiece model: word starts are the "▁" pieces; on real shards no word is ever
    partly masked and the masked fraction stays close to mask_prob."""
    import sentencepiece as spm

    from electra_ds.data.shard_format import open_split

    word_starts = word_start_table(prepared["vocab"])
    sp = spm.SentencePieceProcessor(model_file=str(prepared["vocab"] / "spm.model"))
    assert len(word_starts) == sp.get_piece_size() and not word_starts[:5].any()
    assert word_starts[sp.piece_to_id("▁the")] and not word_starts[sp.piece_to_id(".")]
    if sp.piece_to_id("▁") != sp.unk_id():
        assert word_starts[sp.piece_to_id("▁")]  # a bare marker starts the word its next pieces continue

    train = open_split(prepared["shards"], "train")
    ids = torch.from_numpy(train.batch(np.arange(min(len(train), 256))))
    draws = RowRandom(range(len(ids)), len(ids), "cpu").rows(MASK_DRAWS, ids.shape[1])
    masked, _, _ = choose_masked(ids, draws, 0.15, "whole_word", word_starts=word_starts)
    check_whole_words(ids, masked, draws[:, 0], word_starts)
    maskable = ((ids != PAD_ID) & (ids != CLS_ID) & (ids != SEP_ID)).sum().item()
    assert 0.15 <= masked.sum().item() / maskable < 0.18


@pytest.mark.parametrize("objective", ["electra", "mlm"])
def test_whole_word_forward_masks_whole_words_with_one_decision_each(objective):
    torch.manual_seed(0)
    word_starts = synthetic_word_starts()
    model = ElectraPretrainer(SHAPE, objective=objective, masking="whole_word").eval()
    with pytest.raises(ValueError, match="word starts"):
        model(batch(), seeds=range(8))
    model.use_word_starts(word_starts)
    seen = spy_generator_input(model)
    ids = batch(rows=128, length=60, pad_from=45)
    seeds = range(1000, 1128)
    out = model(ids, seeds=seeds)
    draws = RowRandom(seeds, 128, "cpu").rows(MASK_DRAWS, 60)
    masked, _, _ = choose_masked(ids, draws, 0.15, "whole_word", word_starts=word_starts)
    assert out["stats"]["masked"].item() == masked.sum().item() == prediction_count(
        ids.numpy(), 0.15, "whole_word", seeds=list(seeds), word_starts=word_starts)
    changed = seen["ids"] != ids
    assert not (changed & ~masked).any()
    kinds = {"mask": 0, "same": 0, "random": 0}
    for b, row in enumerate(ids.tolist()):
        for w in words_of(row, word_starts):
            if not masked[b, w[0]]:
                continue
            got = seen["ids"][b, w]
            if (got == MASK_ID).all():
                kinds["mask"] += 1
            elif torch.equal(got, ids[b, w]):
                kinds["same"] += 1
            else:  # mlm's 10% random: every piece of the word replaced by a random one, never [MASK]
                assert objective == "mlm" and not (got == MASK_ID).any()
                kinds["random"] += 1
    n = sum(kinds.values())
    if objective == "electra":
        assert kinds["random"] == 0 and 0.78 < kinds["mask"] / n < 0.92
    else:
        assert 0.72 < kinds["mask"] / n < 0.88 and kinds["random"] > 0


@pytest.mark.parametrize("masking,mask_count", [("whole_word", "exact"), ("token", "official")])
def test_micro_batch_split_gives_the_full_batch_gradient(masking, mask_count):
    """The global prediction count (from the ids, or replayed from the per-row seeds) makes two half batches
    give exactly the full batch's loss and gradient, as the default masking does."""
    from electra_ds.pretraining.trainer import global_token_counts

    torch.manual_seed(0)
    word_starts = synthetic_word_starts()
    model = ElectraPretrainer(SHAPE, masking=masking, mask_count=mask_count).eval()
    if masking == "whole_word":
        model.use_word_starts(word_starts)
    ids = batch(rows=8)
    seeds = [7 * i + 3 for i in range(8)]
    n_pred, n_real = global_token_counts(ids.numpy(), 0.15, masking, mask_count, seeds, word_starts)
    full = model(ids, seeds=seeds, gen_denominator=n_pred, disc_denominator=n_real)
    assert full["stats"]["masked"].item() == n_pred
    full["loss"].backward()
    grad_full = model.discriminator.electra.embeddings.word_embeddings.weight.grad.clone()
    model.zero_grad()
    halves = [model(ids[i:i + 4], seeds=seeds[i:i + 4], gen_denominator=n_pred / 2, disc_denominator=n_real / 2)
              for i in (0, 4)]
    assert sum(h["stats"]["masked"].item() for h in halves) == n_pred
    (sum(h["loss"] for h in halves) / 2).backward()
    assert torch.allclose(sum(h["loss"] for h in halves) / 2, full["loss"], rtol=1e-5)
    assert torch.allclose(model.discriminator.electra.embeddings.word_embeddings.weight.grad, grad_full,
                          atol=1e-6)


# -- google-research/electra's count ----------------------------------------------------------------------------
def full_rows(rows, length=128, seed=0):
    ids = torch.randint(5, 300, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    return ids


def test_official_count_includes_cls_sep_and_is_capped():
    assert max_predictions(0.15, 128) == 19 and max_predictions(0.15, 512) == 79
    ids = torch.full((3, 128), PAD_ID)
    ids[0, :24] = 9  # 24 real tokens with [CLS] and [SEP]: official round(3.6) = 4, exact round(3.3) = 3
    ids[0, 0], ids[0, 23] = CLS_ID, SEP_ID
    ids[1], ids[1, 0], ids[1, -1] = 9, CLS_ID, SEP_ID  # full row: round(19.2) = 19, the cap
    ids[2, 0], ids[2, 1] = CLS_ID, SEP_ID  # nothing maskable
    _, n = official_counts(ids, 0.15)
    assert n.tolist() == [4, 19, 0]
    assert official_counts(ids.numpy(), 0.15)[1].tolist() == [4, 19, 0]
    assert masks_per_row_v0(ids, 0.15)[1].tolist()[0] == 3
    _, n = official_counts(ids, 0.25)  # 128 x 0.25 = 32 > int(0.255 x 128) = 32: the cap
    assert n[1].item() == 32


def test_official_masks_about_14_percent_distinct_at_length_128():
    """19 candidates drawn with replacement from the 126 maskable positions: 126 x (1 - (125/126)^19) = 17.65
    distinct on average, 13.8% of 128; never over the cap, never a special, 19 predictions per row."""
    ids = full_rows(2000)
    draws = RowRandom(range(2000), 2000, "cpu").rows(MASK_DRAWS, 128)
    masked, decide, weight = choose_masked(ids, draws, 0.15, "token", "official")
    distinct = masked.sum(1)
    assert int(distinct.max()) <= 19 and not masked[:, [0, -1]].any()
    assert torch.equal(weight.sum(1), torch.full((2000,), 19)) and torch.equal(weight > 0, masked)
    expected = 126 * (1 - (125 / 126) ** 19) / 128
    assert math.isclose(expected, 0.1379, abs_tol=1e-3)
    assert abs(distinct.float().mean().item() / 128 - expected) < 0.002
    assert (distinct < 19).float().mean() > 0.5  # repeats are common: most rows have fewer than 19 distinct
    assert prediction_count(ids.numpy(), 0.15, "token", "official") == 19 * 2000
    # [MASK] where any slot drawing the position says so: a little over 85%
    assert 0.85 < ((decide < 0.85) & masked).sum().item() / masked.sum().item() < 0.87


def test_official_generator_loss_counts_a_position_once_per_slot():
    torch.manual_seed(0)
    model = ElectraPretrainer(SHAPE, mask_count="official").eval()
    ids = full_rows(16, length=100)
    out = model(ids, seeds=range(16))
    draws = RowRandom(range(16), 16, "cpu").rows(MASK_DRAWS, 100)
    masked, _, weight = choose_masked(ids, draws, 0.15, "token", "official")
    slots = max_predictions(0.15, 100)
    assert out["stats"]["masked"].item() == weight.sum().item() == 16 * slots > masked.sum().item()
    assert out["stats"]["replaced"].item() <= masked.sum().item()
    assert math.isclose(out["gen_loss"].item(), out["stats"]["gen_loss_sum"].item() / (16 * slots), rel_tol=1e-6)


# -- through the pretrain stage: exact under any world size and across a SIGKILL --------------------------------
def whole_word_args(prepared, out, steps, stage=2):
    from test_pretrain import pretrain_args

    return pretrain_args(prepared, out, stage=stage, steps=steps,
                         extra=("--masking", "whole_word", "--tokenizer-dir", str(prepared["vocab"])))


def test_whole_word_without_the_vocabulary_is_a_clear_error(prepared, tmp_path):
    from test_pretrain import pretrain_args

    res = electra_ds(pretrain_args(prepared, tmp_path / "out", extra=("--masking", "whole_word")))
    assert res.returncode == 2 and "--tokenizer-dir" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_whole_word_two_ranks_with_micro_b_match_one_rank_with_2b(prepared, tmp_path):
    from test_pretrain import assert_two_ranks_match_one

    assert_two_ranks_match_one(lambda out: whole_word_args(prepared, out, steps=3), tmp_path)


@pytest.mark.slow
def test_whole_word_sigkill_and_restart_gives_exactly_the_uninterrupted_run(prepared, tmp_path):
    from test_pretrain import assert_sigkill_and_restart_is_exact

    def args(out):
        a = whole_word_args(prepared, out, steps=10)
        a[a.index("--checkpoint-every") + 1] = "2"
        a[a.index("--keep-checkpoints") + 1] = "3"
        return ["launch", "--nproc-per-node", "1", "--", *a]

    reference = assert_sigkill_and_restart_is_exact(args, tmp_path, kill_after="step00000004")
    assert json.loads((reference / "summary.json").read_text())["steps"] == 10


def test_the_masking_table_and_the_schema_name_the_same_strategies():
    """A masking strategy is one entry of masking.MASKINGS plus its name in the schema's enum; the workflow gives
    the vocabulary to exactly the strategies that read word starts."""
    import yaml

    from electra_ds.common.settings import SCHEMA_PATH
    from electra_ds.pretraining.masking import MASKINGS

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert schema["properties"]["pretrain"]["properties"]["masking"]["enum"] == list(MASKINGS)
    rules = (REPO / "workflow/rules/pretrain.smk").read_text()
    needs = [name for name, m in MASKINGS.items() if m.needs_word_starts]
    assert needs == ["whole_word"] and '["masking"] == "whole_word"' in rules, \
        "a new strategy that reads word starts must be given the vocabulary in pretrain_vocab (pretrain.smk)"
