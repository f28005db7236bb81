"""Does Intel's extension for PyTorch (IPEX) lift the CPU ceiling of ELECTRA's discriminator?

docs/speed.md found that ELECTRA-Small's discriminator alone, eager or under torch.compile, reaches only 20-28% of
the bf16 matmul peak on this 2-core AMX machine: the elementwise work between the matrix multiplies (GELU, layer
norm, softmax, casts, bias sums) is not fused by PyTorch's CPU kernels. IPEX ships fused CPU kernels and a bf16
training recipe (``ipex.optimize(model, optimizer=..., dtype=torch.bfloat16)`` under CPU autocast). It exists only
for older torch releases (2.8 at most) than this project's, so this script runs in its own environment:

    python3 -m venv /tmp/ipexenv
    /tmp/ipexenv/bin/pip install torch==2.8.0 intel-extension-for-pytorch==2.8.0 transformers
    TORCHINDUCTOR_COMPILE_THREADS=1 /tmp/ipexenv/bin/python benchmarks/ipex_ceiling.py --shape small study

It also runs in the project's environment (no IPEX: its rows are skipped). It uses pretrain_throughput.py's shapes,
peak and discriminator config (electra_ds from this checkout, on sys.path). In one process it prints the bf16 and
fp32 matmul rates at the model's own GEMM shapes (the best bf16 rate is "the peak") and, for one training
step of the discriminator alone (``ElectraForPreTraining``, a replaced-token loss on random labels, batch x 128
tokens), tokens/s and model TFLOP/s (the FLOPs the pipeline counts for the discriminator) of:

- bf16 weights, eager, no optimizer (docs/speed.md's "discriminator alone, eager" ceiling);
- fp32 weights under bf16 autocast with an AdamW step (how a mixed-precision training step runs);
- that, compiled with ``torch.compile`` (inductor);
- the same with ``ipex.optimize`` (fused kernels, prepacked oneDNN weights, IPEX's fused AdamW);
- that, compiled with ``torch.compile(backend="ipex")``.

A variant is checked, not only timed: a row whose step leaves any weight unchanged is flagged INVALID (with IPEX
imported, torch.compile folds the weights into its graph as constants: its steps change 4 weights of the model and
look 3x faster than a training step).
Run it with ``TORCHINDUCTOR_COMPILE_THREADS=1``: the compiler's worker processes otherwise share the 2 cores with the
matmul timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the shapes, the peak at the model's GEMMs and the discriminator's config, as the pipeline's benchmark has them (it
# imports electra_ds from the checkout, not from an installed package: it runs in IPEX's environment too)
import pretrain_throughput as pt  # noqa: E402

LR = 1e-3  # large enough that one AdamW step moves every bf16 weight (the validity check)


def step_rate(step, tokens_per_step: int, steps: int) -> tuple[float, float]:
    """(tokens/s from the median step, seconds of the two warm-up steps)."""
    start = time.perf_counter()
    step(), step()
    warm = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return tokens_per_step / statistics.median(times), warm


def weights_changed(model, step) -> tuple[int, int]:
    """(weights one more ``step()`` changes, floating-point tensors of the model's state_dict): a variant that
    trains changes them all."""
    before = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    step()
    after = model.state_dict()
    return sum(not torch.equal(v, after[k].detach().float()) for k, v in before.items()), len(before)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs="+", choices=sorted(pt.SHAPES), default=["small"])
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default (all cores)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(backend='ipex') (minutes)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import ElectraForPreTraining

    try:
        import intel_extension_for_pytorch as ipex
    except ImportError:
        ipex = None
    print(f"torch {torch.__version__}, IPEX {ipex.__version__ if ipex else 'not installed'}, "
          f"{torch.get_num_threads()} threads, batch {args.batch} x {args.seq_len}")
    tokens = args.batch * args.seq_len
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, args.vocab, (args.batch, args.seq_len), generator=g)
    labels = torch.randint(0, 2, (args.batch, args.seq_len), generator=g).float()

    for name in args.shape:
        shape = pt.ModelShape(vocab_size=args.vocab, max_position_embeddings=max(512, args.seq_len),
                              **{**pt.SHAPES[name], "dropout": 0.0})
        flops = pt.flops_per_token(shape, args.seq_len, uniform_generator=True)  # the discriminator's FLOPs only
        print(f"\n{name}: {pt.SHAPES[name]}; {flops / 1e6:.1f} MFLOP per token (discriminator)")
        peak = pt.print_peak(shape, tokens, torch.device("cpu"))

        def config():  # the discriminator as the pipeline builds it on CPU (eager attention; ALiBi for `study`)
            return pt.electra_configs(shape, "cpu")[0]

        def loss_of(model):
            return F.binary_cross_entropy_with_logits(model(input_ids=ids).logits.float(), labels)

        rows = []

        def timed(label, step, model):
            """A row, after a check that the variant trains: one more step must change every weight of the model
            (its state_dict's floating tensors). torch.compile of a model after ``import
            intel_extension_for_pytorch`` folds the weights into its graph as constants, so its steps change 4 of
            the weights and look 3x faster than a training step: such a row is flagged INVALID."""
            rate, warm = step_rate(step, tokens, args.steps)
            changed, total = weights_changed(model, step)
            if changed < total:
                label += f" [INVALID: one step changes {changed} of {total} weights]"
            return label, rate, warm

        torch.manual_seed(0)
        model = ElectraForPreTraining(config()).to(torch.bfloat16)

        def bare():  # forward and backward only: docs/speed.md's ceiling (no weight changes: not checked)
            loss_of(model).backward()
            for q in model.parameters():
                q.grad = None
        rows.append(("bf16 weights, eager, no optimizer", *step_rate(bare, tokens, args.steps)))

        def trainer(model, optimizer):
            def step():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = loss_of(model)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return step

        torch.manual_seed(0)
        model = ElectraForPreTraining(config())
        opt = torch.optim.AdamW(model.parameters(), lr=LR)
        rows.append(timed("fp32 weights, bf16 autocast, AdamW", trainer(model, opt), model))
        if not args.no_compile:
            rows.append(timed("the same, torch.compile (inductor)", trainer(torch.compile(model), opt), model))
        if ipex is not None:
            torch.manual_seed(0)
            model = ElectraForPreTraining(config()).train()
            opt = torch.optim.AdamW(model.parameters(), lr=LR)
            model, opt = ipex.optimize(model, optimizer=opt, dtype=torch.bfloat16)
            rows.append(timed("ipex.optimize, bf16 autocast, AdamW", trainer(model, opt), model))
            if not args.no_compile:
                rows.append(timed("the same, torch.compile(backend='ipex')",
                                  trainer(torch.compile(model, backend="ipex"), opt), model))
        print("discriminator training step                 tokens/s  model TFLOP/s  of peak  warm-up s")
        for label, rate, warm in rows:
            tf = rate * flops / 1e12
            print(f"  {label:40s} {rate:9.0f} {tf:13.3f} {100 * tf / peak:7.1f}% {warm:9.1f}")
        print("  the peak again after the steps:")
        pt.print_peak(shape, tokens, torch.device("cpu"))


if __name__ == "__main__":
    main()
