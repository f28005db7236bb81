"""ELECTRA pretraining model: a small generator and a discriminator with shared embeddings.

Built from stock Hugging Face modules (``ElectraForMaskedLM`` generator, ``ElectraForPreTraining``
discriminator) so the exported models load with ``AutoModelForMaskedLM`` /
``AutoModelForPreTraining``. Follows Clark et al. (2020) and google-research/electra:

* dynamic masking of round(n_tokens x mask_prob) positions per sequence, never [CLS]/[SEP]/[PAD];
  85% of them become [MASK], 15% keep the original token;
* the generator's hidden size, heads and intermediate size are ``generator_fraction`` of the
  discriminator's; its logits are computed only at masked positions;
* replacements are sampled from the generator with Gumbel noise; a sample equal to the original
  counts as original for the discriminator;
* loss = generator MLM loss + ``disc_weight`` x replaced-token-detection loss over real tokens;
* token, position and type embeddings (and their LayerNorm) are shared, with an embedding size
  separate from the hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from electra_ds.shape import ModelShape, flops_per_token, generator_dims  # noqa: F401 (re-exported)
from electra_ds.step_metrics import logit_histogram


def electra_configs(shape: ModelShape):
    """Return (discriminator_config, generator_config) as ``transformers.ElectraConfig``."""
    from transformers import ElectraConfig

    def config(hidden, heads, intermediate):
        return ElectraConfig(
            vocab_size=shape.vocab_size, embedding_size=shape.embedding_size, hidden_size=hidden,
            num_hidden_layers=shape.num_layers, num_attention_heads=heads, intermediate_size=intermediate,
            max_position_embeddings=shape.max_position_embeddings, type_vocab_size=2,
            hidden_dropout_prob=shape.dropout, attention_probs_dropout_prob=shape.dropout,
            pad_token_id=PAD_ID, bos_token_id=CLS_ID, eos_token_id=SEP_ID,
        )

    disc = config(shape.hidden_size, shape.num_heads, shape.intermediate_size)
    gen = config(*generator_dims(shape))
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
        if (masking, mask_count, uniform_generator, embedding_sharing) != ("token", "exact", False, "es"):
            raise NotImplementedError("masking / mask_count / uniform_generator / embedding_sharing: in progress")
        disc_config, gen_config = electra_configs(shape)
        if objective == "mlm":
            self.generator = ElectraForMaskedLM(disc_config)
            self.discriminator = None
            return
        self.discriminator = ElectraForPreTraining(disc_config)
        self.generator = ElectraForMaskedLM(gen_config)
        # Share token, position and type embeddings (and their LayerNorm); the generator's output
        # layer stays tied to the shared word embeddings.
        self.generator.electra.embeddings = self.discriminator.electra.embeddings
        self.generator.generator_lm_head.weight = self.discriminator.electra.embeddings.word_embeddings.weight

    @classmethod
    def from_training_state(cls, shape: ModelShape, objective: str, state: dict) -> "ElectraPretrainer":
        """The model holding a consolidated training state dict (a tensor tied or shared between generator and
        discriminator may be stored once, under either name). ValueError when the state does not fit."""
        model = cls(shape, objective=objective)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {"generator.generator_lm_head.weight"} | {k for k in missing
                                                          if k.startswith("generator.electra.embeddings.")}
        if set(missing) - tied or unexpected:
            raise ValueError(f"missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
        return model.eval()

    def exported(self) -> dict:
        """The Hugging Face models to publish, ``{"discriminator": ElectraForPreTraining, "generator":
        ElectraForMaskedLM}``. The MLM baseline has no discriminator: fine-tuning starts from its encoder, so
        its encoder is published as one (with a new, untrained replaced-token head)."""
        if self.discriminator is None:
            from transformers import ElectraForPreTraining

            disc = ElectraForPreTraining(self.generator.config)
            disc.electra.load_state_dict(self.generator.electra.state_dict())
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
        draws = rand.rows(3, input_ids.shape[1])

        masked = mask_positions(input_ids, self.mask_prob, draws[:, 0])
        if self.objective == "mlm":  # BERT: 80% [MASK], 10% a random token, 10% unchanged
            use_mask_token = masked & (draws[:, 1] < 0.8)
            use_random = masked & (draws[:, 1] >= 0.8) & (draws[:, 1] < 0.9)
            random_ids = 5 + (draws[:, 2] * (self.shape.vocab_size - 5)).long()
            generator_input = torch.where(use_random, random_ids, input_ids.masked_fill(use_mask_token, MASK_ID))
        else:  # ELECTRA: 85% [MASK], 15% unchanged
            use_mask_token = masked & (draws[:, 1] < self.mask_replace_prob)
            generator_input = input_ids.masked_fill(use_mask_token, MASK_ID)

        # Generator: hidden states everywhere, vocabulary logits only at masked positions.
        hidden = self.generator.electra(generator_input, attention_mask=attention_mask,
                                        token_type_ids=token_type_ids).last_hidden_state
        hidden = hidden[masked]
        gen_logits = self.generator.generator_lm_head(self.generator.generator_predictions(hidden))
        originals = input_ids[masked]
        gen_losses = F.cross_entropy(gen_logits.float(), originals, reduction="none")
        gen_loss = gen_losses.sum() / gen_denominator if gen_denominator else gen_losses.mean()
        real = attention_mask.bool()
        gen_stats = {"gen_loss_sum": gen_losses.detach().sum(), "masked": masked.sum().float(),
                     "gen_correct": (gen_logits.detach().argmax(-1) == originals).float().sum(),
                     "tokens": real.sum().float()}
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
            policy_loss = policy.sum() / gen_denominator if gen_denominator else policy.mean()
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
        with ``disallow_correct`` the original token is never drawn (as the official code's option)."""
        logits = gen_logits.float() / self.temperature
        if self.disallow_correct:
            logits = logits.scatter(1, originals.unsqueeze(1), float("-inf"))
        return gumbel_sample(logits, uniform)
