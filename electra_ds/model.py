"""ELECTRA pretraining model: a small generator and a discriminator with shared embeddings.

Built from stock Hugging Face modules (``ElectraForMaskedLM`` generator, ``ElectraForPreTraining``
discriminator) so the exported models load with ``AutoModelForMaskedLM`` /
``AutoModelForPreTraining``. Follows Clark et al. (2020) and google-research/electra:

* dynamic masking of round(n_tokens x mask_prob) positions per sequence, never [CLS]/[SEP]/[PAD];
  85% of them become [MASK], 15% keep the original token (``masking="whole_word"``: whole words, the
  85/15 split per word; ``mask_count="official"``: the official code's count, drawn with replacement);
* the generator is ``generator_fraction`` as wide as the discriminator (64 dimensions per head, intermediate
  4 x its hidden size, as the official code) and ``generator_layers`` as deep; its logits are computed only at
  masked positions;
* replacements are sampled from the generator with Gumbel noise; a sample equal to the original
  counts as original for the discriminator;
* loss = generator MLM loss + ``disc_weight`` x replaced-token-detection loss over real tokens;
* token, position and type embeddings (and their LayerNorm) are shared, with an embedding size
  separate from the hidden size (``embedding_sharing="es"``; ``"gdes"``: DeBERTaV3's gradient-disentangled
  sharing; ``"none"``: separate embeddings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from electra_ds.shape import (ModelShape, flops_per_token, generator_dims,  # noqa: F401 (re-exported)
                              generator_num_layers)
from electra_ds.step_metrics import logit_histogram


def electra_configs(shape: ModelShape):
    """Return (discriminator_config, generator_config) as ``transformers.ElectraConfig``."""
    from transformers import ElectraConfig

    def config(hidden, heads, intermediate, layers=shape.num_layers):
        return ElectraConfig(
            vocab_size=shape.vocab_size, embedding_size=shape.embedding_size, hidden_size=hidden,
            num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate,
            max_position_embeddings=shape.max_position_embeddings, type_vocab_size=2,
            hidden_dropout_prob=shape.dropout, attention_probs_dropout_prob=shape.dropout,
            pad_token_id=PAD_ID, bos_token_id=CLS_ID, eos_token_id=SEP_ID,
        )

    disc = config(shape.hidden_size, shape.num_heads, shape.intermediate_size)
    gen = config(*generator_dims(shape), generator_num_layers(shape))
    for c in (disc, gen):
        c._attn_implementation = shape.attn_implementation
    return disc, gen


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
MASKINGS = ("token", "whole_word")
MASK_COUNTS = ("exact", "official")
WORD_MARKER = "\u2581"  # sentencepiece's word-boundary marker
MASK_DRAWS = 3  # uniform draws per position the masking uses, the first draws of each row's stream (RowRandom)


def check_masking(masking: str, mask_count: str) -> None:
    """ValueError for an unknown or unsupported combination of the two masking options."""
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, not {masking!r}")
    if mask_count not in MASK_COUNTS:
        raise ValueError(f"mask_count must be one of {MASK_COUNTS}, not {mask_count!r}")
    if masking == "whole_word" and mask_count == "official":
        raise ValueError("mask_count official is google-research/electra's token-level masking, which has no "
                         "whole-word variant: use mask_count exact with masking whole_word")


def word_start_table(tokenizer_dir) -> torch.Tensor:
    """(vocab_size,) bool over vocabulary ids: the pieces that start a word, i.e. begin with sentencepiece's
    word marker "▁" (a piece that is only "▁" too: sentencepiece emits it before a word whose first characters
    fuse with nothing, and the pieces after it continue that word). Control pieces ([PAD] [CLS] [SEP] [MASK]),
    [UNK] and byte-fallback pieces (<0x..>, never a space) are never starts: they continue the word before."""
    from electra_ds.shards import load_sentencepiece

    sp = load_sentencepiece(tokenizer_dir)
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
    if masking == "whole_word":
        if word_starts is None:
            raise ValueError("whole_word masking needs the vocabulary's word starts (ElectraPretrainer.use_word_starts)")
        masked, start_of = whole_word_positions(input_ids, mask_prob, draws[:, 0], word_starts)
        return masked, draws[:, 1].gather(1, start_of), None
    return mask_positions(input_ids, mask_prob, draws[:, 0]), draws[:, 1], None


def prediction_count(input_ids, mask_prob: float, masking: str = "token", mask_count: str = "exact", seeds=None,
                     word_starts: torch.Tensor | None = None, device="cpu") -> int:
    """The generator's predictions in a batch (masked positions; with mask_count official, used slots), for
    rows masked with per-row ``seeds``: from the ids alone, or with whole-word masking (where it depends on the
    draws) by replaying each row's masking draws from its seed on ``device`` (the device the model draws on)."""
    if mask_count == "official":
        return int(official_counts(input_ids, mask_prob)[1].sum())
    if masking == "token":
        return int(masks_per_row(input_ids, mask_prob)[1].sum())
    ids = torch.as_tensor(input_ids, device=device)
    draws = RowRandom(seeds, ids.shape[0], device).rows(MASK_DRAWS, ids.shape[1])
    masked, _, _ = choose_masked(ids, draws, mask_prob, masking, mask_count, word_starts)
    return int(masked.sum())


def gumbel_sample(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Sample from softmax(logits) with the Gumbel-max trick, given uniform draws of the same shape."""
    gumbel = -torch.log(-torch.log(uniform.float().clamp(1e-9, 1.0 - 1e-9)))
    return (logits.float() + gumbel).argmax(dim=-1)


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


def token_type_ids_for(input_ids: torch.Tensor) -> torch.Tensor:
    """0 up to and including the first [SEP], 1 after it, 0 on padding (as the tokenizer's pair encoding);
    the torch twin of :func:`electra_ds.shards.token_type_ids`."""
    is_sep = (input_ids == SEP_ID).long()
    return (((is_sep.cumsum(dim=1) - is_sep) > 0) & (input_ids != PAD_ID)).long()


OBJECTIVES = ("electra", "mlm", "adversarial")
EMBEDDING_SHARING = ("es", "gdes", "none")
N_SPECIAL_IDS = 5  # [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4: never drawn as random replacements


class GradientDisentangledEmbedding(nn.Module):
    """DeBERTaV3's gradient-disentangled embedding sharing for one table: lookups in ``source`` (the generator's
    ``nn.Embedding``, the same module object, registered here a second time but holding its parameter once) with
    the gradient stopped, plus a zero-initialised ``delta`` of the discriminator's own.

    Equal to an ``nn.Embedding`` with weight ``source.weight.detach() + delta``, computed as two lookups so that
    ``source`` runs as a module: under ZeRO-3 its parameter is gathered by its own hooks. The discriminator's
    loss reaches only ``delta``; the generator's loss alone shapes ``source``. :meth:`folded` is that plain
    ``nn.Embedding`` (for export).
    """

    def __init__(self, source: nn.Embedding):
        super().__init__()
        self.source = source
        self.delta = nn.Parameter(torch.zeros_like(source.weight))

    @property
    def padding_idx(self):
        return self.source.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            shared = self.source(ids)
        return shared + F.embedding(ids, self.delta, self.padding_idx)

    @staticmethod
    def folded_state(state: dict, prefix: str) -> dict:
        """``state`` (a state dict) with ``<prefix>source.weight`` + ``<prefix>delta`` folded into
        ``<prefix>weight``, the key of a plain ``nn.Embedding``."""
        state = dict(state)
        state[prefix + "weight"] = state.pop(prefix + "source.weight") + state.pop(prefix + "delta")
        return state


class ElectraPretrainer(nn.Module):
    """Generator + discriminator trained jointly on replaced token detection.

    ``objective``:

    * ``electra`` (default): generator MLM loss + ``disc_weight`` x replaced-token detection;
    * ``mlm``: a BERT-style masked-LM baseline on the discriminator-sized backbone (80% [MASK], 10% random,
      10% unchanged), for comparisons at equal compute; the "generator" is then the full-size MLM and no
      discriminator is trained;
    * ``adversarial`` (experimental; the paper found it worse): the generator is also trained to fool the
      discriminator by policy gradient (REINFORCE, reward = the discriminator's loss on the sampled token,
      batch-mean baseline), added to ``adversarial_mle_weight`` x its MLM loss.
    """

    def __init__(self, shape: ModelShape, mask_prob: float = 0.15, mask_replace_prob: float = 0.85,
                 disc_weight: float = 50.0, objective: str = "electra", adversarial_mle_weight: float = 1.0,
                 temperature: float = 1.0, disallow_correct: bool = False, masking: str = "token",
                 mask_count: str = "exact", uniform_generator: bool = False, embedding_sharing: str = "es"):
        super().__init__()
        from transformers import ElectraForMaskedLM, ElectraForPreTraining

        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
        self.shape = shape
        self.objective = objective
        self.mask_prob = mask_prob
        self.mask_replace_prob = mask_replace_prob
        self.disc_weight = disc_weight
        self.adversarial_mle_weight = adversarial_mle_weight
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {temperature}")
        self.temperature = temperature
        self.disallow_correct = disallow_correct
        self.masking, self.mask_count = masking, mask_count
        self.uniform_generator, self.embedding_sharing = uniform_generator, embedding_sharing
        check_masking(masking, mask_count)
        self.register_buffer("word_starts", None, persistent=False)  # whole_word: set by use_word_starts
        if embedding_sharing not in EMBEDDING_SHARING:
            raise ValueError(f"embedding_sharing must be one of {EMBEDDING_SHARING}, not {embedding_sharing!r}")
        disc_config, gen_config = electra_configs(shape)
        if objective == "mlm":
            self.generator = ElectraForMaskedLM(disc_config)
            self.discriminator = None
            return
        self.discriminator = ElectraForPreTraining(disc_config)
        self.generator = ElectraForMaskedLM(gen_config)
        # Every shared tensor is shared as a module (or the one tied LM-head weight) registered under both models,
        # so each parameter exists once: parameters() lists it once and ZeRO-3 partitions it once.
        if embedding_sharing == "es":
            # ELECTRA: token, position and type embeddings (and their LayerNorm) are one module.
            self.generator.electra.embeddings = self.discriminator.electra.embeddings
        elif embedding_sharing == "gdes":
            # DeBERTaV3 (microsoft/DeBERTa apps/tasks/rtd_task.py): the discriminator's word and position tables
            # are the generator's, gradient stopped, plus a zero-initialised delta of its own; its type embeddings
            # and LayerNorm are its own.
            d_emb, g_emb = self.discriminator.electra.embeddings, self.generator.electra.embeddings
            d_emb.word_embeddings = GradientDisentangledEmbedding(g_emb.word_embeddings)
            d_emb.position_embeddings = GradientDisentangledEmbedding(g_emb.position_embeddings)
        # The generator's output layer stays tied to its word embeddings (the shared ones under es).
        self.generator.generator_lm_head.weight = self.generator.electra.embeddings.word_embeddings.weight

    @classmethod
    def from_training_state(cls, shape: ModelShape, objective: str, state: dict,
                            embedding_sharing: str = "es") -> "ElectraPretrainer":
        """The model holding a consolidated training state dict (a tensor tied or shared between generator and
        discriminator may be stored once, under any of its names). ValueError when the state does not fit."""
        model = cls(shape, objective=objective, embedding_sharing=embedding_sharing)
        missing, unexpected = model.load_state_dict(state, strict=False)
        aliases = {}  # every name of a tensor -> all its names (shared modules and the tied LM head)
        for named in (model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
            by_id = {}
            for name, t in named:
                by_id.setdefault(id(t), []).append(name)
            aliases.update({name: names for names in by_id.values() for name in names})
        absent = [k for k in missing if not any(a in state for a in aliases.get(k, ()))]
        if absent or unexpected:
            raise ValueError(f"missing {sorted(absent)[:5]}, unexpected {sorted(unexpected)[:5]}")
        return model.eval()

    def exported(self) -> dict:
        """The Hugging Face models to publish, ``{"discriminator": ElectraForPreTraining, "generator":
        ElectraForMaskedLM}``. The MLM baseline has no discriminator: fine-tuning starts from its encoder, so
        its encoder is published as one (with a new, untrained replaced-token head). Under ``gdes`` the delta is
        folded in: the discriminator is a plain ``ElectraForPreTraining`` whose word and position tables are the
        generator's plus the delta."""
        from transformers import ElectraForPreTraining

        if self.discriminator is None:
            disc = ElectraForPreTraining(self.generator.config)
            disc.electra.load_state_dict(self.generator.electra.state_dict())
            return {"discriminator": disc.eval(), "generator": self.generator}
        if self.embedding_sharing == "gdes":
            state = {k: v.detach().clone() for k, v in self.discriminator.state_dict().items()}
            for name, module in self.discriminator.named_modules():
                if isinstance(module, GradientDisentangledEmbedding):
                    state = GradientDisentangledEmbedding.folded_state(state, f"{name}.")
            disc = ElectraForPreTraining(self.discriminator.config)
            disc.load_state_dict(state, strict=True)
            return {"discriminator": disc.eval(), "generator": self.generator}
        return {"discriminator": self.discriminator, "generator": self.generator}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups: weight decay on matrices, none on biases, LayerNorm and other vectors."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def use_word_starts(self, word_starts: torch.Tensor) -> None:
        """Whole-word masking: which vocabulary ids start a word (:func:`word_start_table`), kept as a
        non-persistent buffer (it follows the model's device, never enters a checkpoint)."""
        if word_starts.shape != (self.shape.vocab_size,):
            raise ValueError(f"word starts for {tuple(word_starts.shape)} ids, the vocabulary has {self.shape.vocab_size}")
        self.word_starts = word_starts.to(dtype=torch.bool, device=next(self.parameters()).device)

    def forward(self, input_ids: torch.Tensor, seeds=None, gen_denominator: float | None = None,
                disc_denominator: float | None = None) -> dict:
        """One pretraining step on ``input_ids`` (B, L).

        ``seeds``: one seed per row for every random draw (see :class:`RowRandom`). The losses are token
        means over this micro-batch, or, with ``*_denominator`` given, sums divided by them: the trainer
        passes the global batch's token counts / (world x accumulation) so the gradient is the exact
        token-level mean over the global batch, however it is split across ranks and micro-batches.
        """
        attention_mask = (input_ids != PAD_ID).long()
        token_type_ids = token_type_ids_for(input_ids)
        rand = RowRandom(seeds, input_ids.shape[0], input_ids.device)
        draws = rand.rows(MASK_DRAWS, input_ids.shape[1])  # first in each row's stream: prediction_count replays them

        # decide: per position (per word with whole_word) the draw choosing [MASK] / random / unchanged;
        # pred_weight: per prediction (mask_count official: slots drawing the position), else None (one each)
        masked, decide, weight = choose_masked(input_ids, draws, self.mask_prob, self.masking, self.mask_count,
                                               self.word_starts)
        pred_weight = None if weight is None else weight[masked].float()
        if self.objective == "mlm":  # BERT: 80% [MASK], 10% a random token, 10% unchanged
            use_mask_token = masked & (decide < 0.8)
            use_random = masked & (decide >= 0.8) & (decide < 0.9)
            random_ids = 5 + (draws[:, 2] * (self.shape.vocab_size - 5)).long()
            generator_input = torch.where(use_random, random_ids, input_ids.masked_fill(use_mask_token, MASK_ID))
        else:  # ELECTRA: 85% [MASK], 15% unchanged
            use_mask_token = masked & (decide < self.mask_replace_prob)
            generator_input = input_ids.masked_fill(use_mask_token, MASK_ID)

        # Generator: hidden states everywhere, vocabulary logits only at masked positions.
        hidden = self.generator.electra(generator_input, attention_mask=attention_mask,
                                        token_type_ids=token_type_ids).last_hidden_state
        hidden = hidden[masked]
        gen_logits = self.generator.generator_lm_head(self.generator.generator_predictions(hidden))
        originals = input_ids[masked]
        gen_losses = F.cross_entropy(gen_logits.float(), originals, reduction="none")
        gen_correct = (gen_logits.detach().argmax(-1) == originals).float()
        n_pred = masked.sum().float()
        if pred_weight is not None:  # the official loss is a mean over slots: a position drawn twice counts twice
            gen_losses, gen_correct, n_pred = gen_losses * pred_weight, gen_correct * pred_weight, pred_weight.sum()
            gen_loss = gen_losses.sum() / (gen_denominator or n_pred)
        else:
            gen_loss = gen_losses.sum() / gen_denominator if gen_denominator else gen_losses.mean()
        real = attention_mask.bool()
        gen_stats = {"gen_loss_sum": gen_losses.detach().sum(), "masked": n_pred,
                     "gen_correct": gen_correct.sum(), "tokens": real.sum().float()}
        if self.objective == "mlm":
            return {"loss": gen_loss, "gen_loss": gen_loss.detach(), "stats": gen_stats}

        with torch.no_grad():
            sampled = self.sample_replacements(gen_logits.detach(), originals,
                                               rand.ragged(masked.sum(1).tolist(), gen_logits.shape[-1]))
            disc_input, replaced = self.corrupt(input_ids, masked, sampled)

        disc_logits = self.discriminator(disc_input, attention_mask=attention_mask,
                                         token_type_ids=token_type_ids).logits.float()
        disc_losses_all = F.binary_cross_entropy_with_logits(disc_logits, replaced.float(), reduction="none")
        disc_losses = disc_losses_all[real]
        disc_loss = disc_losses.sum() / disc_denominator if disc_denominator else disc_losses.mean()
        loss = gen_loss + self.disc_weight * disc_loss
        if self.objective == "adversarial":
            reward = disc_losses_all[masked].detach()  # the generator wants the discriminator to be wrong
            log_prob = F.log_softmax(gen_logits.float(), -1).gather(1, sampled.unsqueeze(1)).squeeze(1)
            policy = -((reward - reward.mean()) * log_prob)
            if pred_weight is not None:  # per slot, as the generator loss
                policy = policy * pred_weight
            policy_loss = policy.sum() / (gen_denominator or n_pred) if pred_weight is not None \
                else policy.sum() / gen_denominator if gen_denominator else policy.mean()
            gen_objective = self.adversarial_mle_weight * gen_loss + policy_loss
            loss = gen_objective + self.disc_weight * disc_loss

        with torch.no_grad():
            pred = disc_logits > 0
            real_logits, real_replaced = disc_logits[real], replaced[real]
            stats = {**gen_stats,
                     "disc_loss_sum": disc_losses.detach().sum(),
                     "disc_correct": (pred == replaced)[real].float().sum(),
                     "disc_tp": (pred & replaced).float().sum(),
                     "disc_pred_pos": pred[real].float().sum(),
                     "replaced": replaced.float().sum(),
                     "hist_replaced": logit_histogram(real_logits[real_replaced]),
                     "hist_original": logit_histogram(real_logits[~real_replaced]),
                     # per vocabulary id (what the discriminator saw): the context-free prior's counts
                     "ids_replaced": torch.bincount(disc_input[replaced], minlength=self.shape.vocab_size).double(),
                     "ids_total": torch.bincount(disc_input[real], minlength=self.shape.vocab_size).double()}
        return {"loss": loss, "gen_loss": gen_loss.detach(), "disc_loss": disc_loss.detach(), "stats": stats}

    @staticmethod
    def corrupt(input_ids: torch.Tensor, masked: torch.Tensor, sampled: torch.Tensor):
        """The discriminator's input (samples at masked positions) and its labels: replaced where the input
        differs from the original, so a sample equal to the original counts as original."""
        disc_input = input_ids.clone()
        disc_input[masked] = sampled
        return disc_input, disc_input != input_ids

    def sample_replacements(self, gen_logits: torch.Tensor, originals: torch.Tensor,
                            uniform: torch.Tensor) -> torch.Tensor:
        """The generator's samples at masked positions: softmax(logits / temperature), Gumbel-max on ``uniform``;
        with ``disallow_correct`` the original token is never drawn (as the official code's option).

        ``uniform_generator``: uniform over the vocabulary less the special ids instead, from the same per-row
        draws (so still a function of the row seeds). The official code's uniform generator samples from zero
        logits over the whole vocabulary, special ids included, and builds no generator at all (its "MLM loss"
        is the constant log(vocab)); here the generator still runs and trains on its MLM loss, only its samples
        are unused."""
        if self.uniform_generator:
            logits = torch.zeros_like(gen_logits, dtype=torch.float32)
            logits[:, :N_SPECIAL_IDS] = float("-inf")
        else:
            logits = gen_logits.float() / self.temperature
        if self.disallow_correct:
            logits = logits.scatter(1, originals.unsqueeze(1), float("-inf"))
        return gumbel_sample(logits, uniform)
