"""Pretraining optimizers and learning-rate schedules: the project's default and the official code's.

google-research/electra (``model/optimization.py``) trains with ``AdamWeightDecayOptimizer``: Adam *without*
bias correction, decoupled weight decay added to the update (not on LayerNorm or biases), betas (0.9, 0.999),
eps 1e-6, and the rate ``peak x (1 - t/T) x min(1, t/W)`` (linear decay from step 0, multiplied by the warmup
ramp, so the decay also runs during warmup and step 0 has rate 0). ``pretrain.optimizer`` and
``pretrain.schedule`` choose between that and torch's AdamW with a warmup-then-decay schedule.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "adam_no_bias_correction")
SCHEDULES = ("warmup_then_decay", "official")


def lr_lambda(warmup: int, total: int, schedule: str = "warmup_then_decay"):
    """The multiplier of the peak rate at optimizer step ``t`` (0-based), for ``torch.optim.lr_scheduler.LambdaLR``.

    * ``warmup_then_decay``: (t + 1) / W during warmup, then linear from 1 at W to 0 at T;
    * ``official``: (1 - t/T) x min(1, t/W).
    """
    if schedule == "official":
        def official(t: int) -> float:
            return max(0.0, 1.0 - t / total) * (min(1.0, t / warmup) if warmup > 0 else 1.0)
        return official
    if schedule != "warmup_then_decay":
        raise ValueError(f"unknown schedule {schedule!r} (one of {SCHEDULES})")

    def warmup_then_decay(t: int) -> float:
        if warmup > 0 and t < warmup:
            return (t + 1) / warmup
        return max(0.0, (total - t) / max(1, total - warmup))
    return warmup_then_decay


class AdamNoBiasCorrection(torch.optim.Optimizer):
    """The official ELECTRA/BERT ``AdamWeightDecayOptimizer``: m and v without bias correction;
    ``param -= lr x (m / (sqrt(v) + eps) + weight_decay x param)``."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(name: str, groups: list, lr: float, *, offload: bool, fused: bool):
    """The pretraining optimizer over ``groups`` (each with its weight_decay). With the optimizer state offloaded to
    the CPU, DeepSpeedCPUAdam (``bias_correction`` as asked)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (one of {OPTIMIZERS})")
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, adamw_mode=True,
                                bias_correction=name == "adamw")
    if name == "adam_no_bias_correction":
        return AdamNoBiasCorrection(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, fused=fused)
