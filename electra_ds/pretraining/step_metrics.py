"""Named per-step statistics of the pretraining model, one reduction for training and validation.

``ElectraPretrainer.forward`` returns ``stats``: a dict of tensors that are *sums* over the
micro-batch (counts, loss sums, histograms of the discriminator's logits). :class:`MetricSums` adds
them over micro-batches, all-reduces them over ranks in one call, and :func:`summarise` turns the
totals into the metrics a user reads:

* ``gen_loss``, ``gen_acc``: the generator's MLM loss and accuracy at masked positions;
* ``disc_loss``: replaced-token-detection loss per real token (nats);
* ``replaced_frac`` and ``base_entropy`` = H(replaced_frac), the loss of a discriminator that only
  knows the base rate;
* ``rtd_gain`` = 1 - disc_loss / base_entropy: 0 = predicting the base rate, 1 = perfect. This is the
  learning signal: a discriminator at the base rate has learned nothing, whatever its accuracy;
* ``disc_auc``: ROC AUC of the discriminator's logit for "replaced" vs "original" tokens, from
  histograms of the logits (:data:`AUC_BINS` bins over [-AUC_RANGE, AUC_RANGE]; ties within a bin
  count half). It moves long before recall at the 0.5 threshold does;
* ``disc_acc``, ``disc_precision``, ``disc_recall`` on replaced tokens at the 0.5 threshold.

A discriminator can beat the base rate without reading any context: some tokens are replaced far more
often than others (a hot generator samples rare pieces). :class:`TokenPrior` counts, over training,
how often each vocabulary id is a replacement where it appears; ``token_prior_auc`` (validation only)
is the ROC AUC of that context-free score, and ``context_auc`` = ``disc_auc - token_prior_auc`` is
what the discriminator adds by reading the sentence. Only that part is language knowledge.
"""

from __future__ import annotations

import math

import torch

AUC_BINS = 1024
AUC_RANGE = 16.0


def logit_histogram(logits: torch.Tensor) -> torch.Tensor:
    """Counts of ``logits`` in AUC_BINS equal bins over [-AUC_RANGE, AUC_RANGE] (clamped at the ends)."""
    scaled = (logits.detach().float().clamp(-AUC_RANGE, AUC_RANGE) + AUC_RANGE) / (2 * AUC_RANGE)
    index = (scaled * AUC_BINS).long().clamp(0, AUC_BINS - 1)
    return torch.bincount(index, minlength=AUC_BINS).double()


def auc_from_histograms(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties (same bin) counting one half."""
    n_pos, n_neg = float(positive.sum()), float(negative.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    negative_below = torch.cumsum(negative, 0) - negative
    wins = (positive * negative_below).sum() + 0.5 * (positive * negative).sum()
    return float(wins) / (n_pos * n_neg)


def binary_entropy(p: float) -> float:
    """H(p) in nats (the unit of binary cross-entropy)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


class MetricSums:
    """Totals of ``stats`` dicts over micro-batches (and, after :meth:`all_reduce`, over ranks)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, stats: dict) -> None:
        for key, value in stats.items():
            value = value.detach().double()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()

    def all_reduce(self) -> None:
        """Sum over all ranks in one collective (every rank holds the same keys: same objective)."""
        import torch.distributed as dist

        if not self.sums or not (dist.is_available() and dist.is_initialized()):
            return
        keys = sorted(self.sums)
        flat = torch.cat([self.sums[k].reshape(-1) for k in keys])
        dist.all_reduce(flat)
        offset = 0
        for k in keys:
            n = self.sums[k].numel()
            self.sums[k] = flat[offset:offset + n].reshape(self.sums[k].shape)
            offset += n

    def summary(self) -> dict:
        return summarise({k: v.cpu() for k, v in self.sums.items()})

    def reset(self) -> None:
        self.sums = {}


def summarise(sums: dict) -> dict:
    """Metrics from summed stats (see the module docstring); discriminator metrics only when it exists."""
    def total(key):
        return float(sums[key]) if key in sums else 0.0

    masked, tokens = max(total("masked"), 1.0), max(total("tokens"), 1.0)
    out = {"gen_loss": total("gen_loss_sum") / masked, "gen_acc": total("gen_correct") / masked}
    if "micro_batches" in sums:
        out["loss"] = total("loss_sum") / max(total("micro_batches"), 1.0)
    if "disc_loss_sum" not in sums:
        return out
    if "prior_auc_pos" in sums:
        out["token_prior_auc"] = auc_from_histograms(sums["prior_auc_pos"], sums["prior_auc_neg"])
    replaced_frac = total("replaced") / tokens
    base = binary_entropy(replaced_frac)
    disc_loss = total("disc_loss_sum") / tokens
    out.update({
        "disc_loss": disc_loss,
        "replaced_frac": replaced_frac,
        "base_entropy": base,
        "rtd_gain": 1.0 - disc_loss / base if base > 0 else float("nan"),
        "disc_auc": auc_from_histograms(sums["hist_replaced"], sums["hist_original"]),
        "disc_acc": total("disc_correct") / tokens,
        "disc_precision": total("disc_tp") / max(total("disc_pred_pos"), 1.0),
        "disc_recall": total("disc_tp") / max(total("replaced"), 1.0),
    })
    if "token_prior_auc" in out:
        out["context_auc"] = out["disc_auc"] - out["token_prior_auc"]
    return out


class TokenPrior:
    """Per vocabulary id: how often it was a replacement where the discriminator saw it, over training."""

    def __init__(self, vocab_size: int, device="cpu"):
        self.replaced = torch.zeros(vocab_size, dtype=torch.float64, device=device)
        self.total = torch.zeros(vocab_size, dtype=torch.float64, device=device)

    def add(self, sums: dict) -> None:
        """Take the id counts of reduced training sums (``ids_replaced``, ``ids_total``)."""
        if "ids_total" in sums:
            self.replaced += sums["ids_replaced"]
            self.total += sums["ids_total"]

    def auc_stats(self, sums: dict) -> dict:
        """Histograms (over distinct prior scores, ascending) of validation's replaced and original tokens:
        ``summarise`` turns them into ``token_prior_auc``."""
        if "ids_total" not in sums or float(self.total.sum()) == 0:
            return {}
        base = float(self.replaced.sum() / self.total.sum())
        score = (self.replaced + base) / (self.total + 1.0)  # unseen ids: the base rate
        levels, index = torch.unique(score, return_inverse=True)
        pos = torch.zeros(len(levels), dtype=torch.float64, device=score.device)
        neg = torch.zeros_like(pos)
        pos.index_add_(0, index, sums["ids_replaced"].to(pos))
        neg.index_add_(0, index, (sums["ids_total"] - sums["ids_replaced"]).to(neg))
        return {"prior_auc_pos": pos, "prior_auc_neg": neg}

    def state(self) -> torch.Tensor:
        return torch.stack([self.replaced, self.total]).cpu()

    def load(self, state: torch.Tensor) -> None:
        self.replaced.copy_(state[0])
        self.total.copy_(state[1])
