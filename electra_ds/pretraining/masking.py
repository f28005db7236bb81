"""Which positions a pretraining step masks, and the per-example random streams it draws from.

* ``token`` masking (the paper): round(non-special tokens x mask_prob) positions per sequence (at least one),
  never [CLS]/[SEP]/[PAD];
* ``whole_word``: whole words (a piece starting with sentencepiece's word marker, or a WordPiece token that is not
  a ``##`` continuation, plus the pieces continuing it),
  drawn until the count reaches that target, going over by less than one word;
* ``mask_count: official``: google-research/electra's ``mask()``: counted over all real tokens, positions drawn
  with replacement, capped at int((mask_prob + 0.005) x max_seq_len).

Every draw comes from :class:`RowRandom`, one stream per example seeded from (seed, step, example), so an
example is masked the same way on any rank, micro-batch or world size, and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID


def masks_per_row(input_ids, mask_prob: float):
    """How many positions each row masks: round(n_candidates x mask_prob), at least one (numpy or torch)."""
    candidates = (input_ids != PAD_ID) & (input_ids != CLS_ID) & (input_ids != SEP_ID)
    n_candidates = candidates.sum(1)
    if isinstance(input_ids, torch.Tensor):
        n_mask = torch.clamp(torch.round(n_candidates.double() * mask_prob).long(), min=1)
        return candidates, torch.minimum(n_mask, n_candidates)
    import numpy as np

    n_mask = np.maximum(np.round(n_candidates.astype(np.float64) * mask_prob).astype(np.int64), 1)
    return candidates, np.minimum(n_mask, n_candidates)


def mask_positions(input_ids: torch.Tensor, mask_prob: float, scores: torch.Tensor) -> torch.Tensor:
    """Choose round(n_real_tokens x mask_prob) positions per row (at least one), never specials; ``scores``
    are uniform draws of the same shape deciding which."""
    candidates, n_mask = masks_per_row(input_ids, mask_prob)
    scores = scores.masked_fill(~candidates, 2.0)  # candidates first when sorted ascending
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < n_mask.unsqueeze(1)


# -- masking options (pretrain.masking, pretrain.mask_count) ----------------------------------------------------
# The strategies are the table MASKINGS at the end of this section: a new one is its positions function, its
# entry there and its name in the schema's pretrain.masking enum (tests/test_masking.py checks the two agree).
MASK_COUNTS = ("exact", "official")
WORD_MARKER = "\u2581"  # sentencepiece's word-boundary marker
WORDPIECE_PREFIX = "##"  # WordPiece's continuation prefix (electra_ds.data.vocab)
MASK_DRAWS = 3  # uniform draws per position the masking uses, the first draws of each row's stream (RowRandom)


def check_masking(masking: str, mask_count: str) -> None:
    """ValueError for an unknown or unsupported combination of the two masking options."""
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {tuple(MASKINGS)}, not {masking!r}")
    if mask_count not in MASK_COUNTS:
        raise ValueError(f"mask_count must be one of {MASK_COUNTS}, not {mask_count!r}")
    if MASKINGS[masking].needs_word_starts and mask_count == "official":
        raise ValueError("mask_count official is google-research/electra's token-level masking, which has no "
                         "whole-word variant: use mask_count exact with masking whole_word")


def word_start_table(tokenizer_dir) -> torch.Tensor:
    """(vocab_size,) bool over vocabulary ids: the pieces that start a word.

    sentencepiece: the pieces that begin with its word marker "▁" (a piece that is only "▁" too: sentencepiece emits
    it before a word whose first characters fuse with nothing, and the pieces after it continue that word). Control
    pieces ([PAD] [CLS] [SEP] [MASK]), [UNK] and byte-fallback pieces (<0x..>, never a space) are never starts: they
    continue the word before. WordPiece (``vocab.tokenizer: wordpiece``): every token but the ``##`` continuations
    and the four control tokens, as BERT's whole-word masking; [UNK] stands for a whole word there, so it starts one,
    and punctuation is a word of its own (BERT's pre-tokenizer splits it off)."""
    from electra_ds.data.vocab_format import WordPieceEncoder, load_encoder

    sp = load_encoder(tokenizer_dir)
    if isinstance(sp, WordPieceEncoder):
        table = torch.ones(sp.get_piece_size(), dtype=torch.bool)
        for token, i in sp.tok.get_vocab().items():
            if token.startswith(WORDPIECE_PREFIX):
                table[i] = False
        table[[PAD_ID, CLS_ID, SEP_ID, MASK_ID]] = False
        return table
    return torch.tensor([sp.id_to_piece(i).startswith(WORD_MARKER)
                         and not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))
                         for i in range(sp.get_piece_size())], dtype=torch.bool)


def word_starts_in(input_ids: torch.Tensor, word_starts: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions that start a word. A word is a maskable piece that starts one (``word_starts``
    over vocabulary ids) or follows a special token / the row start (a word cut by packing), plus the maskable
    pieces continuing it; [CLS]/[SEP]/[PAD] belong to no word and end the one before."""
    follows_candidate = F.pad(candidates[:, :-1], (1, 0), value=False)
    return candidates & (word_starts.to(input_ids.device)[input_ids] | ~follows_candidate)


def whole_word_positions(input_ids: torch.Tensor, mask_prob: float, scores: torch.Tensor,
                         word_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked, start_of): whole words in the random order of ``scores`` (uniform draws; a word's is the one at
    its first piece) until the masked pieces reach round(maskable pieces x mask_prob) (as token masking, at
    least one), so a row exceeds that count by less than its last word; ``start_of`` (B, L) is the position of
    the first piece of each position's word (for per-word decisions)."""
    candidates, n_mask = masks_per_row(input_ids, mask_prob)
    starts = word_starts_in(input_ids, word_starts, candidates)
    pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    start_of = torch.where(starts, pos, 0).cummax(dim=1).values
    lengths = torch.zeros_like(input_ids).scatter_add_(1, start_of, candidates.long())  # at each word's start
    order = scores.masked_fill(~starts, 2.0).argsort(dim=1, stable=True)  # the words in random order, then the rest
    starts_sorted = starts.gather(1, order)
    lengths_sorted = lengths.gather(1, order) * starts_sorted
    before = lengths_sorted.cumsum(dim=1) - lengths_sorted  # pieces masked before this word is taken
    taken = torch.zeros_like(starts).scatter_(1, order, starts_sorted & (before < n_mask.unsqueeze(1)))
    return candidates & taken.gather(1, start_of), start_of


def _token(input_ids, mask_prob, draws, word_starts):
    return mask_positions(input_ids, mask_prob, draws[:, 0]), draws[:, 1]


def _whole_word(input_ids, mask_prob, draws, word_starts):
    masked, start_of = whole_word_positions(input_ids, mask_prob, draws[:, 0], word_starts)
    return masked, draws[:, 1].gather(1, start_of)  # one decision per word: its first piece's draw


@dataclass(frozen=True)
class Masking:
    """One ``pretrain.masking`` strategy. ``positions(input_ids, mask_prob, draws, word_starts)`` gives (masked,
    decide): the positions to predict and per position the uniform deciding [MASK] / random / unchanged, from
    ``draws`` (B, MASK_DRAWS, L); ``count_from_ids``: it masks masks_per_row positions per row, so the count is
    known from the ids alone (otherwise the trainer replays the draws to count); ``needs_word_starts``: it reads
    which pieces start a word, so pretraining needs the vocabulary (``--tokenizer-dir``; the workflow's
    pretrain_vocab gives it as an input)."""

    positions: Callable
    count_from_ids: bool = False
    needs_word_starts: bool = False


MASKINGS = {
    "token": Masking(_token, count_from_ids=True),  # the paper's: mask_prob of the pieces, independently
    "whole_word": Masking(_whole_word, needs_word_starts=True),  # whole words until mask_prob of the pieces
}


def max_predictions(mask_prob: float, seq_len: int) -> int:
    """google-research/electra's max_predictions_per_seq: int((mask_prob + 0.005) x max_seq_length), 19 at 128
    (here at most seq_len, at least 1)."""
    return min(seq_len, max(1, int((mask_prob + 0.005) * seq_len)))


def official_counts(input_ids, mask_prob: float):
    """(candidates, predictions per row) as google-research/electra's pretrain_helpers.mask(): predictions =
    max(1, min(max_predictions, round(real tokens x mask_prob))) with [CLS]/[SEP] counted as real tokens, while
    candidates exclude [CLS]/[SEP]/[MASK]/[PAD]; 0 for a row with no candidate (numpy or torch)."""
    candidates = (input_ids != PAD_ID) & (input_ids != CLS_ID) & (input_ids != SEP_ID) & (input_ids != MASK_ID)
    n_real, cap = (input_ids != PAD_ID).sum(1), max_predictions(mask_prob, input_ids.shape[1])
    if isinstance(input_ids, torch.Tensor):
        n_pred = torch.round(n_real.double() * mask_prob).long().clamp(min=1, max=cap)
        return candidates, torch.where(candidates.any(1), n_pred, 0)
    import numpy as np

    n_pred = np.clip(np.round(n_real.astype(np.float64) * mask_prob).astype(np.int64), 1, cap)
    return candidates, np.where(candidates.any(1), n_pred, 0)


def official_positions(input_ids: torch.Tensor, mask_prob: float, slot_scores: torch.Tensor,
                       slot_decide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """google-research/electra's masking: max_predictions slots per row, each a candidate drawn uniformly WITH
    replacement (slot j from ``slot_scores[:, j]``), the first ``official_counts`` of them used. Returns
    (masked, decide, weight): the positions drawn at least once; per position the smallest decision draw of its
    slots (``slot_decide``), so "[MASK] when < 0.85" is the official "[MASK] when any of its slots says so";
    and per position how many slots drew it, the weight of its generator loss (the official loss averages over
    slots, counting a position drawn twice twice)."""
    candidates, n_pred = official_counts(input_ids, mask_prob)
    n_slots = max_predictions(mask_prob, input_ids.shape[1])
    n_cand = candidates.sum(1, keepdim=True)
    in_order = (~candidates).to(torch.uint8).argsort(dim=1, stable=True)  # candidate positions first, in order
    k = (slot_scores[:, :n_slots] * n_cand).long().clamp(max=(n_cand - 1).clamp(min=0))
    pos = in_order.gather(1, k)
    used = torch.arange(n_slots, device=input_ids.device) < n_pred.unsqueeze(1)
    weight = torch.zeros_like(input_ids).scatter_add_(1, pos, used.long())
    decide = torch.ones(input_ids.shape, dtype=slot_decide.dtype, device=input_ids.device).scatter_reduce_(
        1, pos, slot_decide[:, :n_slots].masked_fill(~used, 1.0), reduce="amin")
    return weight > 0, decide, weight


def choose_masked(input_ids: torch.Tensor, draws: torch.Tensor, mask_prob: float, masking: str = "token",
                  mask_count: str = "exact", word_starts: torch.Tensor | None = None):
    """(masked, decide, weight) for ``draws`` (B, MASK_DRAWS, L) uniform: the masked positions; per position the
    uniform deciding [MASK] / random / unchanged (one per word with whole-word masking); the generator-loss weight
    per position (None: one per masked position). token/exact is the paper's masking, unchanged."""
    if mask_count == "official":
        return official_positions(input_ids, mask_prob, draws[:, 0], draws[:, 1])
    strategy = MASKINGS[masking]
    if strategy.needs_word_starts and word_starts is None:
        raise ValueError(f"{masking} masking needs the vocabulary's word starts (ElectraPretrainer.use_word_starts)")
    masked, decide = strategy.positions(input_ids, mask_prob, draws, word_starts)
    return masked, decide, None


def prediction_count(input_ids, mask_prob: float, masking: str = "token", mask_count: str = "exact", seeds=None,
                     word_starts: torch.Tensor | None = None, device="cpu") -> int:
    """The generator's predictions in a batch (masked positions; with mask_count official, used slots), for
    rows masked with per-row ``seeds``: from the ids alone, or with whole-word masking (where it depends on the
    draws) by replaying each row's masking draws from its seed on ``device`` (the device the model draws on)."""
    if mask_count == "official":
        return int(official_counts(input_ids, mask_prob)[1].sum())
    if MASKINGS[masking].count_from_ids:
        return int(masks_per_row(input_ids, mask_prob)[1].sum())
    ids = torch.as_tensor(input_ids, device=device)
    draws = RowRandom(seeds, ids.shape[0], device).rows(MASK_DRAWS, ids.shape[1])
    masked, _, _ = choose_masked(ids, draws, mask_prob, masking, mask_count, word_starts)
    return int(masked.sum())


SAMPLE_BLOCK = 64  # vocabulary ids per block of the two-level inverse-CDF sampler


def inverse_cdf_sample(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One sample per row from softmax(logits) (float32), by inverse CDF on one uniform draw per row
    (``uniform``: (N,) or (N, 1), in [0, 1)).

    Two levels keep it O(V) with cheap passes: the row's probabilities summed in blocks of SAMPLE_BLOCK ids, a
    search over the blocks' cumulative sums, then over the cumulative sum inside the chosen block. The same draw as
    one search over the whole cumulative sum, up to float rounding. An id of probability 0 (a logit of -inf) is
    never returned: the target is > 0 and the search returns the first id whose cumulative sum reaches it.
    Replaces Gumbel-max, which needs V uniforms, two logs and an argmax per row: measured at 600 x 8000 on one
    core, 63 ms (uniforms 22, Gumbel 41) against 4 ms.
    """
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    n, vocab = probs.shape
    pad = -vocab % SAMPLE_BLOCK
    blocks = F.pad(probs, (0, pad)).view(n, -(-vocab // SAMPLE_BLOCK), SAMPLE_BLOCK)  # n = 0: no masked position
    block_cum = blocks.sum(-1).cumsum(-1)
    target = (1.0 - uniform.reshape(n, 1).float()) * block_cum[:, -1:]  # in (0, total]
    block = torch.searchsorted(block_cum, target).clamp(max=block_cum.shape[1] - 1)
    before = torch.where(block > 0, block_cum.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target))
    within = blocks[torch.arange(n, device=probs.device), block.squeeze(1)].cumsum(-1)
    rest = torch.minimum(target - before, within[:, -1:]).clamp(min=torch.finfo(within.dtype).tiny)
    offset = torch.searchsorted(within, rest).clamp(max=SAMPLE_BLOCK - 1)
    return (block * SAMPLE_BLOCK + offset).squeeze(1).clamp(max=vocab - 1)


class RowRandom:
    """Random draws per sequence from its own seed, so an example gets the same masks and samples whatever
    micro-batch, rank or world size it lands in (``seeds=None``: torch's global generator)."""

    def __init__(self, seeds, batch: int, device):
        self.device = device
        self.batch = batch
        self.generators = None if seeds is None else [
            torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def rows(self, *shape) -> torch.Tensor:
        """(batch, *shape) uniform draws."""
        if self.generators is None:
            return torch.rand((self.batch, *shape), device=self.device)
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.generators])

    def ragged(self, counts, width: int) -> torch.Tensor:
        """(sum(counts), width) uniform draws, counts[i] rows from sequence i's stream."""
        if self.generators is None:
            return torch.rand((int(sum(counts)), width), device=self.device)
        return torch.cat([torch.rand((int(c), width), generator=g, device=self.device)
                          for g, c in zip(self.generators, counts)])
