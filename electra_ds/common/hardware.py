"""What the machine offers a stage: the device (GPU or CPU), the precision (bf16 where the hardware multiplies it),
the attention kernel. Pretraining and fine-tuning pick them the same way, from here."""

from __future__ import annotations

import os
from pathlib import Path

from electra_ds.common.errors import UserError

DEVICES = ("auto", "cuda", "cpu")


def resolve_device(requested: str, *, field: str, fix: str) -> str:
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a usable GPU is a
    :class:`UserError` naming ``field`` (the config field or option that asked for it)."""
    import torch

    if requested not in DEVICES:
        raise UserError(f"unknown device {requested!r}", field=field, fix=f"use one of {DEVICES}")
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise UserError(f"GPUs requested but no usable GPU (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch {torch.__version__}, CUDA build: "
                        f"{torch.version.cuda})", field=field, fix=fix)
    return "cpu"


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 matrix instructions; without them bf16 is emulated, slower


def cpu_has_bf16_matmul(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16), from /proc/cpuinfo's flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto``: bf16 on GPUs that support it and on CPUs with bf16 matrix units (measured on a 2-core AMX CPU:
    README, "Speed"), fp32 elsewhere; any other value as given."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_matmul() else "fp32"


ATTENTION = ("auto", "sdpa", "eager")


def resolve_attention(name: str, device_type: str | None) -> str:
    """The Hugging Face attention implementation for ``name`` on ``device_type``. ``auto``: ``eager`` on CPU, whose
    two batched matmuls run in the model's dtype (bf16 on the AMX units; its softmax accumulates in fp32 and
    rounds to bf16, as a GPU's flash kernel keeps its probabilities), where PyTorch's math SDPA kernel computes
    bf16 attention in fp32 and its CPU flash kernel's backward is slow at length 128 (README "Speed": eager is
    1.2-1.3x math at the study's shape); ``sdpa`` elsewhere (GPUs: flash / memory-efficient kernels) and where no
    device is named (an exported model: what a Hugging Face user gets by default)."""
    if name not in ATTENTION:
        raise ValueError(f"attn_implementation must be one of {ATTENTION}, not {name!r}")
    if name != "auto":
        return name
    return "eager" if device_type == "cpu" else "sdpa"


def register_attention(name: str, function, base: str) -> None:
    """Make the attention function ``function`` known to Hugging Face as ``name`` (idempotent), with the padding mask
    of the implementation it builds on, ``base`` (``eager``: additive; ``sdpa``: boolean). Hugging Face builds no
    attention mask at all for an attention name it has no mask function for: without one, the model would attend to
    padding."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
