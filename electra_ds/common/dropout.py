"""Dropout with a cheaper mask on CPU: the same distribution, a quarter of the random-number work.

PyTorch's CPU dropout draws its mask with ``bernoulli_``: one Mersenne-Twister draw and a float comparison per
element, then divides the mask and multiplies (``aten::bernoulli_`` alone was 19% of the op time of a fine-tuning
step of the demo's 128-wide model at dropout 0.1, and dropout 15% of a whole RTE job; docs/speed.md). Here one
64-bit draw gives four 16-bit uniforms, and an element is dropped where its uniform is below a threshold: the drop
probability is ``round(p * 65536) / 65536`` (0.1 -> 0.100006) and kept elements are scaled by ``1 / (1 - p)``, as in
PyTorch. The mask is written in the input's dtype (a boolean mask costs 3x more to apply on CPU), so the forward and
backward passes are one multiply each, as PyTorch's. On other devices (a GPU's fused Philox kernel is fast) and in
evaluation it is :func:`torch.nn.functional.dropout`. Pretraining takes it where ``pretrain.dropout_masks: fast``
(the default; ``torch`` resumes checkpoints written before it exactly); fine-tuning on CPU always.

It enters a model in two places (:func:`use_cpu_dropout`): its ``nn.Dropout`` modules become ``Dropout`` (an
``nn.Dropout`` subclass), and its attention runs through :func:`eager_attention` (Hugging Face's eager attention,
whose probabilities dropout calls ``torch.nn.functional.dropout`` directly), registered with Hugging Face as
``electra_ds_eager``; ALiBi's eager attention (:mod:`electra_ds.common.alibi`) uses it too. The masks come from torch's default generator, so a seeded
run is reproducible; they are not the masks PyTorch's dropout would draw for the same seed.
"""

from __future__ import annotations

import functools
import math

ATTENTION_NAME = "electra_ds_eager"
_UNIFORMS_PER_DRAW = 4  # 16-bit uniforms in one 64-bit draw


def scaled_keep_mask(shape, p: float, dtype, device=None):
    """A ``dtype`` tensor of ``shape``: ``1 / (1 - p)`` (keep) with probability ``1 - round(p * 65536) / 65536``,
    else 0, independently."""
    import torch

    n = math.prod(shape)
    words = torch.empty((n + _UNIFORMS_PER_DRAW - 1) // _UNIFORMS_PER_DRAW, dtype=torch.int64, device=device)
    words.random_(-2 ** 63, None)  # every bit uniform (torch's full 64-bit range)
    uniforms = words.view(torch.int16)[:n].view(shape)  # each in [-32768, 32767]
    # the comparison writes 0/1 in dtype directly: a boolean mask costs 3x more to apply on CPU
    mask = torch.ge(uniforms, round(p * 65536) - 32768, out=torch.empty(shape, dtype=dtype, device=device))
    return mask.mul_(1.0 / (1.0 - p))


def fast_dropout(x, p: float, training: bool = True):
    """:func:`torch.nn.functional.dropout` with the cheaper mask on CPU (see the module's docstring)."""
    import torch

    if not training or x.device.type != "cpu" or not 0.0 < p < 1.0:
        return torch.nn.functional.dropout(x, p, training)
    return x * scaled_keep_mask(x.shape, p, x.dtype, x.device)  # autograd keeps the mask for the backward pass


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """Hugging Face's eager attention for BERT-like models (``modeling_electra.eager_attention_forward``: scaled
    scores, the additive mask, softmax, dropout on the probabilities, the weighted values), with :func:`fast_dropout`."""
    import torch

    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.nn.functional.softmax(scores, dim=-1)
    probs = fast_dropout(probs, dropout, module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def register() -> None:
    """Make ``electra_ds_eager`` known to Hugging Face (idempotent), with eager attention's padding mask."""
    from electra_ds.common.hardware import register_attention

    register_attention(ATTENTION_NAME, eager_attention, "eager")


@functools.cache
def _module_class():
    """The ``Dropout`` module class (built once, on first use: torch is imported lazily here)."""
    import torch

    class Dropout(torch.nn.Dropout):
        """``nn.Dropout`` (same ``p``, same ``training`` switch) drawing its mask with :func:`fast_dropout`."""

        def forward(self, x):
            return fast_dropout(x, self.p, self.training)

    return Dropout


def use_cpu_dropout(model):
    """Give ``model`` (a Hugging Face BERT-like model, or a module holding some) the cheaper dropout: each
    ``nn.Dropout`` module becomes that ``Dropout`` with the same ``p``, and each Hugging Face model in it that runs
    eager attention runs :func:`eager_attention` (ALiBi's eager attention already uses it; other attention
    implementations are left as they are). The weights and the dropout rates do not change. Returns ``model``."""
    import torch
    from transformers import PreTrainedModel

    cls = _module_class()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout:
                replacement = cls(child.p, child.inplace)
                replacement.train(child.training)
                setattr(parent, name, replacement)
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.config._attn_implementation == "eager":
            register()
            module.set_attn_implementation(ATTENTION_NAME)
    return model
