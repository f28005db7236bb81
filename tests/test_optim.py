"""The pretraining optimizers and schedules: the default (AdamW, warmup then decay) and the official code's."""

from __future__ import annotations

import math

import pytest
import torch

from electra_ds.common.optim import AdamNoBiasCorrection, build_optimizer, lr_lambda


def test_official_schedule_decays_from_step_0_and_through_warmup():
    f = lr_lambda(10, 100, "official")
    assert f(0) == 0.0  # the official first update has rate 0
    assert f(5) == pytest.approx((1 - 5 / 100) * 5 / 10)
    assert f(10) == pytest.approx(0.9) and f(50) == pytest.approx(0.5) and f(100) == 0.0 and f(150) == 0.0


def test_default_schedule_ramps_to_the_peak_then_decays():
    f = lr_lambda(10, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == 0.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_lambda(10, 100, "cosine")


def test_adam_without_bias_correction_is_the_official_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(torch.randn(5))
    g_w, g_b = torch.randn(5), torch.randn(5)
    opt = AdamNoBiasCorrection([{"params": [w], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}], lr=0.1)
    w0, b0 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = g_w.clone(), g_b.clone()
    opt.step()
    w, b = w.detach(), b.detach()
    m, v = 0.1 * g_w, 0.001 * g_w ** 2  # no division by (1 - beta^t): the first step is sqrt(1000)/10 ~ 3.2x Adam's
    assert torch.allclose(w, w0 - 0.1 * (m / (v.sqrt() + 1e-6) + 0.01 * w0), atol=1e-6)
    assert torch.allclose(b, b0 - 0.1 * (0.1 * g_b / ((0.001 * g_b ** 2).sqrt() + 1e-6)), atol=1e-6)
    assert (w - w0).abs().max() / 0.1 == pytest.approx(0.1 / math.sqrt(0.001), rel=1e-2)


def test_build_optimizer_names():
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "weight_decay": 0.0}]
    assert type(build_optimizer("adamw", params, 1e-3, offload=False, fused=False)).__name__ == "AdamW"
    assert isinstance(build_optimizer("adam_no_bias_correction", params, 1e-3, offload=False, fused=False),
                      AdamNoBiasCorrection)
