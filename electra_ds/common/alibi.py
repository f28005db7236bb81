"""ALiBi for an encoder: a fixed, per-head penalty on attention scores, linear in the distance between positions.

Press et al. (2022, "Train Short, Test Long") add ``-m_h x (i - j)`` to a causal model's attention scores, with
head slopes ``m_h`` a geometric sequence (1/2 ... 1/256 for 8 heads); MosaicBERT (Portes et al., 2023) uses the
symmetric form ``-m_h x |i - j|`` in a BERT encoder to pretrain faster. Each head starts out reading a
neighbourhood of about ``1/m_h`` positions, so a masked position sees its neighbours from the first step. Measured
on this project's study data (docs/study.md), an encoder with learned absolute positions alone stays at the
unigram plateau (it predicts token frequencies, not tokens in context) for its whole CPU budget, and with this
bias leaves it within a few hundred steps.

A model trained with it records ``"alibi": true`` in its Hugging Face ``config.json``; the bias has no
parameters, and the weights load into stock ``Electra*`` classes. It is applied through a Hugging Face attention
function registered here (``alibi_eager`` / ``alibi_sdpa``): load such a model with
``attn_implementation=implementation(path)`` (:func:`implementation`), as every stage of electra-ds does. A stock
``from_pretrained`` without it runs the model without its bias, which is not the model that was trained.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from electra_ds.common.dropout import eager_attention
from electra_ds.common.hardware import register_attention

CONFIG_KEY = "alibi"  # the Hugging Face config's attribute: true for a model trained with the bias
BASES = ("eager", "sdpa")


def slopes(heads: int) -> list[float]:
    """The per-head slopes. From 8 heads up, Press et al.'s: for a power of two ``n``, ``2^(-8/n), 2^(-16/n), ...,
    2^-8`` (1/2 ... 1/256 for 8 heads); for other counts, those of the power of two below and every other slope of
    the one above. Below 8 heads, the same range as 8 heads' (1/2 ... 1/256), spread geometrically over the heads:
    Press et al.'s rule would give one head 1/256, a bias too flat to make it local, where ELECTRA's generators
    have one or a few heads (64 dimensions per head: one for a 64-wide generator)."""
    if heads < 1:
        raise ValueError(f"heads must be >= 1, not {heads}")
    if heads < 8:
        return [2.0 ** -(1 + 7 * i / (heads - 1)) for i in range(heads)] if heads > 1 else [0.5]

    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    below = 2 ** math.floor(math.log2(heads))
    return power_of_two(below) + power_of_two(2 * below)[0::2][:heads - below]


_BIAS_CACHE: dict = {}


def distance_bias(heads: int, q_len: int, k_len: int, device, dtype):
    """``-m_h x |i - j|`` as a (1, heads, q_len, k_len) tensor (cached per shape, device and dtype)."""
    import torch

    key = (heads, q_len, k_len, str(device), dtype)
    bias = _BIAS_CACHE.get(key)
    if bias is None:
        distance = (torch.arange(q_len, device=device)[:, None] - torch.arange(k_len, device=device)[None, :]).abs()
        m = torch.tensor(slopes(heads), device=device, dtype=torch.float32)
        bias = (-m[:, None, None] * distance.float()).unsqueeze(0).to(dtype)
        if len(_BIAS_CACHE) > 64:
            _BIAS_CACHE.clear()
        _BIAS_CACHE[key] = bias
    return bias


def with_bias(attention_mask, query, key):
    """The attention mask a Hugging Face attention function receives (None, boolean ``True`` = attend, or additive
    float) with the distance bias added: an additive float mask."""
    import torch

    float_mask = attention_mask is not None and attention_mask.dtype != torch.bool
    dtype = attention_mask.dtype if float_mask else query.dtype
    bias = distance_bias(query.shape[1], query.shape[2], key.shape[2], query.device, dtype)
    if attention_mask is None:
        return bias
    if attention_mask.dtype == torch.bool:
        return bias.masked_fill(~attention_mask, torch.finfo(dtype).min)
    return attention_mask + bias


def _attention_function(base: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        # eager: Hugging Face's eager attention with the cheaper CPU dropout (electra_ds.common.dropout)
        forward = eager_attention if base == "eager" else ALL_ATTENTION_FUNCTIONS[base]
        return forward(module, query, key, value, with_bias(attention_mask, query, key), **kwargs)

    attention.__name__ = f"alibi_{base}_attention"
    return attention


def register() -> None:
    """Make ``alibi_eager`` and ``alibi_sdpa`` known to Hugging Face (idempotent), each with its base's padding mask."""
    for base in BASES:
        register_attention(f"alibi_{base}", _attention_function(base), base)


def uses_alibi(config) -> bool:
    """Whether ``config`` (a Hugging Face config, a config.json dict, or a model folder) asks for the bias."""
    if isinstance(config, (str, Path)):
        path = Path(config) / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            return False  # the loader names what is wrong with the folder
    if isinstance(config, dict):
        return bool(config.get(CONFIG_KEY, False))
    return bool(getattr(config, CONFIG_KEY, False))


def implementation(config, base: str = "sdpa") -> str:
    """The ``attn_implementation`` to load or build ``config`` with: ``alibi_<base>`` (registered) for a model
    trained with the bias, else ``base``."""
    if base not in BASES:
        raise ValueError(f"attention base must be one of {BASES}, not {base!r}")
    if not uses_alibi(config):
        return base
    register()
    return f"alibi_{base}"
