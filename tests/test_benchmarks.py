"""benchmarks/pretrain_throughput.py's parts that run without launching the pipeline: so the script the README's speed
figures come from does not rot between the sessions that run it."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import REPO


def bench():
    spec = importlib.util.spec_from_file_location("pretrain_throughput", REPO / "benchmarks/pretrain_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ceilings_time_the_whole_model_and_the_discriminator_eager_and_compiled():
    b = bench()
    shape = b.ModelShape(vocab_size=300, embedding_size=32, hidden_size=64, num_layers=1, num_heads=1,
                         intermediate_size=128, dropout=0.0)
    rows = b.ceiling_rates(shape, batch=2, seq_len=16, device=torch.device("cpu"), steps=1)
    assert [label for label, *_ in rows] == ["whole pretraining model, eager", "discriminator alone, eager",
                                            "discriminator alone, torch.compile"]
    flops = [b.flops_per_token(shape, 16), *[b.flops_per_token(shape, 16, uniform_generator=True)] * 2]
    assert flops[0] > flops[1]  # the discriminator alone leaves out the generator's FLOPs
    for (label, tokens, tflops, warm), f in zip(rows, flops):
        assert tokens > 0 and warm > 0, label
        assert tflops == pytest.approx(tokens * f / 1e12), label  # counted as the pipeline counts its model's FLOPs



def test_busy_cores_spin_at_the_lowest_priority_while_the_block_runs_and_are_gone_after():
    b = bench()
    with b.BusyCores(2) as busy:
        assert len(busy.procs) == 2 and all(p.poll() is None for p in busy.procs)
        nice = [int(open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[16]) for p in busy.procs]
        assert nice == [19, 19]
    assert all(p.poll() is not None for p in busy.procs)
