"""Pretraining throughput: electra-ds's ELECTRA step against a reference loop of stock Hugging Face modules.

Both loops run here, in one process, on the same model shape, batch, sequence length and data:

* reference: ``ElectraForMaskedLM`` generator with full-vocabulary logits (labels -100 off the masked
  positions), ``ElectraForPreTraining`` discriminator, eager attention, fp32, torch AdamW, samples
  drawn with ``torch.multinomial``;
* electra-ds: :class:`electra_ds.model.ElectraPretrainer` (generator logits only at masked positions,
  SDPA attention), then with bf16 autocast where the device supports it, then with torch.compile.

Also measures a dense matmul peak in the same run and reports MFU against it. Prints the ratio of
the best electra-ds variant to the reference LAST.

    python benchmarks/pretrain_throughput.py --shape small --batch 32 --seq-len 128 --steps 10
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from electra_ds import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from electra_ds.masking import mask_positions
from electra_ds.model import ElectraPretrainer, ModelShape, electra_configs
from electra_ds.shape import flops_per_token


SHAPES = {  # discriminator shapes; generator = generator_fraction of the width
    "tiny": dict(embedding_size=128, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
    "small": dict(embedding_size=128, hidden_size=256, num_layers=12, num_heads=4, intermediate_size=1024),
    "base": dict(embedding_size=768, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                 generator_fraction=1 / 3),
}


def make_batches(n: int, batch: int, seq_len: int, vocab: int, device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch, seq_len), generator=g)
        ids[:, 0] = CLS_ID
        ids[:, seq_len // 2] = SEP_ID
        ids[:, -1] = SEP_ID
        ids[: batch // 4, seq_len - seq_len // 8:] = PAD_ID  # some padding, as real examples have
        out.append(ids.to(device))
    return out


class ReferenceElectra(torch.nn.Module):
    """The same objective written plainly with stock modules (no gathering, eager attention)."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        from transformers import ElectraForMaskedLM, ElectraForPreTraining

        disc_cfg, gen_cfg = electra_configs(ModelShape(**{**shape.to_dict(), "attn_implementation": "eager"}))
        self.discriminator = ElectraForPreTraining(disc_cfg)
        self.generator = ElectraForMaskedLM(gen_cfg)
        self.generator.electra.embeddings = self.discriminator.electra.embeddings
        self.generator.generator_lm_head.weight = self.discriminator.electra.embeddings.word_embeddings.weight

    def forward(self, input_ids):
        attention_mask = (input_ids != PAD_ID).long()
        masked = mask_positions(input_ids, 0.15, torch.rand(input_ids.shape, device=input_ids.device))
        use_mask = masked & (torch.rand(input_ids.shape, device=input_ids.device) < 0.85)
        labels = input_ids.masked_fill(~masked, -100)
        gen = self.generator(input_ids.masked_fill(use_mask, MASK_ID), attention_mask=attention_mask, labels=labels)
        with torch.no_grad():
            probs = torch.softmax(gen.logits[masked].float(), -1)
            sampled = torch.multinomial(probs, 1).squeeze(-1)
            disc_input = input_ids.clone()
            disc_input[masked] = sampled
            replaced = (disc_input != input_ids).float()
        logits = self.discriminator(disc_input, attention_mask=attention_mask).logits
        real = attention_mask.bool()
        disc_loss = F.binary_cross_entropy_with_logits(logits[real], replaced[real])
        return {"loss": gen.loss + 50 * disc_loss}


def time_loop(model, batches, steps: int, warmup: int, autocast_dtype=None) -> float:
    """Seconds per optimizer step (median of ``steps`` after ``warmup``)."""
    device = batches[0].device
    opt = torch.optim.AdamW(ElectraPretrainer.param_groups(model, 0.01), lr=1e-4, eps=1e-6)  # same groups for both
    times = []
    for i in range(warmup + steps):
        ids = batches[i % len(batches)]
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(ids)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def matmul_peak_tflops(device, dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    reps, t = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def bf16_supported(device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    shape = ModelShape(vocab_size=args.vocab, max_position_embeddings=max(512, args.seq_len), **SHAPES[args.shape])
    batches = make_batches(4, args.batch, args.seq_len, args.vocab, device)
    real_tokens = sum(int((b != PAD_ID).sum()) for b in batches) / len(batches)
    fpt = flops_per_token(shape, args.seq_len)
    peak_dtype = torch.bfloat16 if bf16_supported(device) else torch.float32
    peak = matmul_peak_tflops(device, peak_dtype, 4096 if device.type == "cuda" else 1024)
    peak_fp32 = matmul_peak_tflops(device, torch.float32, 4096 if device.type == "cuda" else 1024)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"shape {args.shape}, batch {args.batch} x {args.seq_len}, vocab {args.vocab}")
    print(f"measured matmul peak: {peak_fp32:.2f} TFLOP/s fp32, {peak:.2f} TFLOP/s {str(peak_dtype)[6:]}")

    results = {}

    def report(name, model, dtype=None, peak_for_mfu=peak_fp32):
        sec = time_loop(model.to(device), batches, args.steps, args.warmup, dtype)
        tok_s = real_tokens / sec
        tflops = tok_s * fpt / 1e12
        results[name] = tok_s
        print(f"{name:32s} {sec * 1000:9.1f} ms/step {tok_s:12.0f} tok/s {tflops:7.3f} TFLOP/s "
              f"MFU {100 * tflops / peak_for_mfu:5.1f}%")

    report("reference (HF, eager, fp32)", ReferenceElectra(shape))
    ours = ElectraPretrainer(shape)
    report("electra-ds (gathered, sdpa, fp32)", ours)
    if bf16_supported(device):
        report("electra-ds + bf16 autocast", ours, torch.bfloat16, peak)
    else:
        print("electra-ds + bf16 autocast      skipped: no bf16 support on this device")
    if not args.no_compile:
        try:
            compiled = torch.compile(ElectraPretrainer(shape).to(device))
            report("electra-ds + torch.compile", compiled,
                   torch.bfloat16 if bf16_supported(device) else None, peak if bf16_supported(device) else peak_fp32)
        except Exception as exc:  # compile needs a working C++ toolchain; report and go on
            print(f"electra-ds + torch.compile      failed: {type(exc).__name__}: {str(exc)[:200]}")
    best = max((k for k in results if k.startswith("electra-ds")), key=results.get)
    print(f"best electra-ds variant: {best}")
    print(f"ratio electra-ds / reference tokens/s: {results[best] / results['reference (HF, eager, fp32)']:.2f}x")


if __name__ == "__main__":
    main()
