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

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from electra_ds.common import alibi
from electra_ds.common.hardware import resolve_attention
from electra_ds.pretraining.masking import MASK_DRAWS, RowRandom, check_masking, choose_masked, inverse_cdf_sample
from electra_ds.pretraining.shape import ModelShape, check_uniform_generator, generator_dims, generator_num_layers
from electra_ds.pretraining.step_metrics import logit_histogram


def electra_configs(shape: ModelShape, device_type: str | None = None):
    """Return (discriminator_config, generator_config) as ``transformers.ElectraConfig``; ``device_type`` resolves
    ``attn_implementation: auto`` (:func:`resolve_attention`)."""
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
    if shape.attention_bias not in ATTENTION_BIASES:
        raise ValueError(f"attention_bias must be one of {ATTENTION_BIASES}, not {shape.attention_bias!r}")
    for c in (disc, gen):
        if shape.attention_bias == "alibi":
            setattr(c, alibi.CONFIG_KEY, True)  # saved in config.json: loaders add the bias (alibi.implementation)
        c._attn_implementation = alibi.implementation(c, resolve_attention(shape.attn_implementation, device_type))
    return disc, gen


def attention_kernels(device_type: str):
    """The SDPA kernels to use on ``device_type``: on CPU the math kernel, which computes bf16 attention in fp32
    and at sequence length 128 trains faster than the CPU flash kernel (whose backward dominated a profiled bf16
    step: README, "Speed"); elsewhere PyTorch's choice."""
    if device_type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def token_type_ids_for(input_ids: torch.Tensor) -> torch.Tensor:
    """0 up to and including the first [SEP], 1 after it, 0 on padding (as the tokenizer's pair encoding);
    the torch twin of :func:`electra_ds.data.shards.token_type_ids`."""
    is_sep = (input_ids == SEP_ID).long()
    return (((is_sep.cumsum(dim=1) - is_sep) > 0) & (input_ids != PAD_ID)).long()


ATTENTION_BIASES = ("none", "alibi")
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
                 mask_count: str = "exact", uniform_generator: bool = False, embedding_sharing: str = "es",
                 device_type: str | None = None):
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
        self.embedding_sharing = embedding_sharing  # uniform_generator: self.generator is None
        check_masking(masking, mask_count)
        self.register_buffer("word_starts", None, persistent=False)  # whole_word: set by use_word_starts
        if embedding_sharing not in EMBEDDING_SHARING:
            raise ValueError(f"embedding_sharing must be one of {EMBEDDING_SHARING}, not {embedding_sharing!r}")
        check_uniform_generator(uniform_generator, objective, embedding_sharing)
        disc_config, gen_config = electra_configs(shape, device_type)  # device_type: where it trains (attention)
        if uniform_generator:
            # The official code's ablation builds no generator: replacements are drawn from zero logits over the
            # whole vocabulary and its "MLM loss" is the constant log(vocab) (forward); only the discriminator trains.
            self.discriminator = ElectraForPreTraining(disc_config)
            self.generator = None
            return
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
    def from_training_state(cls, shape: ModelShape, objective: str, state: dict, embedding_sharing: str = "es",
                            uniform_generator: bool = False) -> "ElectraPretrainer":
        """The model holding a consolidated training state dict (a tensor tied or shared between generator and
        discriminator may be stored once, under any of its names). ValueError when the state does not fit."""
        model = cls(shape, objective=objective, embedding_sharing=embedding_sharing,
                    uniform_generator=uniform_generator)
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
        ElectraForMaskedLM}`` (no generator under ``uniform_generator``, which builds none). The MLM baseline has
        no discriminator: fine-tuning starts from its encoder, so its encoder is published as one (with a new,
        untrained replaced-token head). Under ``gdes`` the delta is folded in: the discriminator is a plain
        ``ElectraForPreTraining`` whose word and position tables are the generator's plus the delta."""
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
        if self.generator is None:
            return {"discriminator": self.discriminator}
        return {"discriminator": self.discriminator, "generator": self.generator}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups: weight decay on matrices, none on biases, LayerNorm and other vectors."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    @torch.no_grad()
    def init_output_biases(self, counts) -> dict:
        """Start both output layers at the data's base rates instead of zero (``output_bias_init: prior``): the
        generator's vocabulary bias at the log unigram frequencies of the pretraining tokens (specials and ids
        never seen get the floor of one count), the discriminator's bias at the log-odds of a replacement (the
        masked share of the tokens times how often a unigram sample differs from the original). At zero, Adam moves
        a bias by about the learning rate a step, so biases that must reach -10..-2 take thousands of steps, and
        the generator spends a short run's budget learning token frequencies through its tied embeddings (what
        the study measured: the generator at the unigram plateau for its whole run). Returns the values set."""
        counts = torch.as_tensor(counts, dtype=torch.float64).clone()
        counts[[PAD_ID, CLS_ID, SEP_ID, MASK_ID]] = 0  # never a prediction target ([UNK] in the text can be)
        counts = counts.clamp_min(1.0)
        prior = counts / counts.sum()
        log_prior = prior.log()
        if self.generator is not None:  # None under uniform_generator
            head = self.generator.generator_lm_head
            head.bias.copy_(log_prior.to(head.bias.dtype))
        replaced = None
        if self.discriminator is not None:
            same = float((prior * prior).sum())  # a unigram sample equals the original this often
            share = self.mask_prob * (1.0 - same)
            replaced = float(torch.logit(torch.tensor(share, dtype=torch.float64)))
            self.discriminator.discriminator_predictions.dense_prediction.bias.fill_(replaced)
        return {"generator_bias_mean": float(log_prior.mean()) if self.generator is not None else None,
                "discriminator_bias": replaced}

    def use_word_starts(self, word_starts: torch.Tensor) -> None:
        """Whole-word masking: which vocabulary ids start a word (:func:`word_start_table`), kept as a
        non-persistent buffer (it follows the model's device, never enters a checkpoint)."""
        if word_starts.shape != (self.shape.vocab_size,):
            raise ValueError(f"word starts for {tuple(word_starts.shape)} ids, the vocabulary has {self.shape.vocab_size}")
        self.word_starts = word_starts.to(dtype=torch.bool, device=next(self.parameters()).device)

    def forward(self, input_ids: torch.Tensor, seeds=None, gen_denominator: float | None = None,
                disc_denominator: float | None = None) -> dict:
        with attention_kernels(input_ids.device.type):
            return self._forward(input_ids, seeds, gen_denominator, disc_denominator)

    def _forward(self, input_ids: torch.Tensor, seeds=None, gen_denominator: float | None = None,
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
            random_ids = N_SPECIAL_IDS + (draws[:, 2] * (self.shape.vocab_size - N_SPECIAL_IDS)).long()
            generator_input = torch.where(use_random, random_ids, input_ids.masked_fill(use_mask_token, MASK_ID))
        else:  # ELECTRA: 85% [MASK], 15% unchanged
            use_mask_token = masked & (decide < self.mask_replace_prob)
            generator_input = input_ids.masked_fill(use_mask_token, MASK_ID)

        originals = input_ids[masked]
        if self.generator is None:  # uniform_generator: zero logits, so uniform samples and a constant log(V) loss
            gen_logits = torch.zeros(originals.shape[0], self.shape.vocab_size, device=input_ids.device)
        else:  # the generator: hidden states everywhere, vocabulary logits only at masked positions
            hidden = self.generator.electra(generator_input, attention_mask=attention_mask,
                                            token_type_ids=token_type_ids).last_hidden_state
            # the projection in the model's precision, the logits in fp32 once (loss, accuracy and sampling use them)
            gen_logits = self.generator.generator_lm_head(self.generator.generator_predictions(hidden[masked])).float()
        gen_losses = F.cross_entropy(gen_logits, originals, reduction="none")
        gen_correct = self.generator_correct(gen_logits.detach(), originals)
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
            return {"loss": gen_loss + _zero_tie(hidden), "gen_loss": gen_loss.detach(), "stats": gen_stats}

        with torch.no_grad():
            sampled = self.sample_replacements(gen_logits.detach(), originals,
                                               rand.ragged(masked.sum(1).tolist(), 1))
            disc_input, replaced = self.corrupt(input_ids, masked, sampled)

        disc_logits = self.discriminator(disc_input, attention_mask=attention_mask,
                                         token_type_ids=token_type_ids).logits.float()
        disc_losses_all = F.binary_cross_entropy_with_logits(disc_logits, replaced.float(), reduction="none")
        disc_losses = disc_losses_all[real]
        disc_loss = disc_losses.sum() / disc_denominator if disc_denominator else disc_losses.mean()
        loss = gen_loss + self.disc_weight * disc_loss
        if self.objective == "adversarial":
            reward = disc_losses_all[masked].detach()  # the generator wants the discriminator to be wrong
            log_prob = F.log_softmax(gen_logits, -1).gather(1, sampled.unsqueeze(1)).squeeze(1)
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
        return {"loss": loss + _zero_tie(disc_logits), "gen_loss": gen_loss.detach(), "disc_loss": disc_loss.detach(),
                "stats": stats}

    def generator_correct(self, gen_logits: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
        """1.0 where the generator's most likely id is the original. The original's logit against the row maximum
        (a max over 8000 ids is ~12x faster than an argmax on CPU); under ``uniform_generator`` (all logits zero,
        argmax id 0 = [PAD], never an original) 0 everywhere."""
        if self.generator is None:
            return torch.zeros(originals.shape, device=originals.device)
        return (gen_logits.gather(1, originals.unsqueeze(1)).squeeze(1) >= gen_logits.amax(-1)).float()

    @staticmethod
    def corrupt(input_ids: torch.Tensor, masked: torch.Tensor, sampled: torch.Tensor):
        """The discriminator's input (samples at masked positions) and its labels: replaced where the input
        differs from the original, so a sample equal to the original counts as original."""
        disc_input = input_ids.clone()
        disc_input[masked] = sampled
        return disc_input, disc_input != input_ids

    def sample_replacements(self, gen_logits: torch.Tensor, originals: torch.Tensor,
                            uniform: torch.Tensor) -> torch.Tensor:
        """The generator's samples at masked positions: softmax(logits / temperature), inverse CDF on ``uniform``
        (one draw per position); with ``disallow_correct`` the original token is never drawn (as the official
        code's option). Under
        ``uniform_generator`` the logits are zero, so the draw is uniform over the whole vocabulary, special ids
        included, as the official code's."""
        logits = gen_logits.float() / self.temperature if self.temperature != 1 else gen_logits.float()
        if self.disallow_correct:
            logits = logits.scatter(1, originals.unsqueeze(1), float("-inf"))
        return inverse_cdf_sample(logits, uniform)


def _zero_tie(output: torch.Tensor) -> torch.Tensor:
    """0 x the sum of an output every position has: the loss keeps its value (and its gradients, exactly), but is
    tied to the network at every position. A batch with nothing to predict (padding only) has a loss of 0/0 and no
    gradient path to any weight; tied, the trainer's NaN loss scale for a non-finite loss (trainer.train_step)
    reaches the gradients, and the optimizer's check of the gradient norm skips the update."""
    return 0.0 * output.float().sum()
