"""The benchmark scripts' parts that run without launching the pipeline (benchmarks/pretrain_throughput.py,
finetune_throughput.py, ipex_ceiling.py): so the scripts the README's speed figures come from do not rot between the
sessions that run them."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import REPO


def bench(name="pretrain_throughput"):
    spec = importlib.util.spec_from_file_location(name, REPO / f"benchmarks/{name}.py")
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


def test_the_fine_tuning_benchmark_runs_jobs_this_checkouts_command_line_accepts(tmp_path):
    from electra_ds.cli import build_parser

    b = bench("finetune_throughput")
    args = b.parser().parse_args(["--baseline-src", str(tmp_path)])
    for task, epochs in (("rte", 10), ("stsb", 10), ("sst2", 3)):
        parsed = build_parser().parse_args(b.finetune_args(tmp_path / "model", tmp_path / "glue", task, args,
                                                           tmp_path / "out", tmp_path / "results"))
        assert (parsed.task, parsed.epochs, parsed.max_train_examples, parsed.learning_rate) == (task, epochs, 2000,
                                                                                                 1e-3)
        assert parsed.threads == 1 and parsed.double_unordered is False


def test_the_ipex_benchmark_tells_a_step_that_trains_from_one_that_leaves_weights_unchanged():
    b = bench("ipex_ceiling")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(5, 4)

    def train():
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()

    def frozen():  # what a compiled step that folded the weights into constants does to them: nothing
        with torch.no_grad():
            model(x)

    assert b.weights_changed(model, train) == (4, 4)
    assert b.weights_changed(model, frozen) == (0, 4)
