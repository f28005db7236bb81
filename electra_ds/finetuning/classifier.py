"""The task model of fine-tuning: the exported discriminator with a task head, and its layer-wise learning rates.

``load_classifier`` loads the tokenizer and ``AutoModelForSequenceClassification`` for a task (from the export,
from another fine-tuned model with a fresh head, or the same architecture with random weights);
``OfficialHead`` is google-research/electra's head (dropout + one dense layer on [CLS]) for ``finetune.head:
official``; ``layer_lr_groups`` gives each parameter ``learning_rate x layer_decay^(depth from the top)``
(google-research/electra ``_get_layer_lrs``).
"""

from __future__ import annotations

import re
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.userfiles import load_hf_tokenizer


def parameter_depth(name: str, n_layers: int, prefix: str = "electra") -> int:
    """Depth of a parameter as in google-research/electra ``_get_layer_lrs``.

    Embeddings (and their projection) have depth 0, encoder layer k depth k + 1, and everything
    outside the encoder (the task-specific head) depth n_layers + 2.
    """
    base = name[len(prefix) + 1:] if name.startswith(prefix + ".") else None
    if base is None:
        return n_layers + 2
    if base.startswith("embeddings"):
        return 0
    match = re.match(r"encoder\.layers?\.(\d+)\.", base)
    if match:
        return int(match.group(1)) + 1
    return n_layers + 2


def layer_lr_groups(model, learning_rate: float, layer_decay: float, weight_decay: float) -> list:
    """AdamW parameter groups: lr * decay ** (n_layers + 2 - depth); no decay on biases and LayerNorm.

    As in the ELECTRA code the head gets the full rate, the top encoder layer ``decay ** 2`` (the
    original skips depth n_layers + 1), each lower layer one more factor, the embeddings the least.
    """
    n_layers = model.config.num_hidden_layers
    prefix = getattr(model, "base_model_prefix", "electra")
    groups: dict = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = parameter_depth(name, n_layers, prefix)
        no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        key = (depth, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "depth": depth,
                           "lr": learning_rate * layer_decay ** (n_layers + 2 - depth),
                           "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


OFFICIAL_HEAD_DROPOUT = 0.1  # classification_tasks.py: tf.nn.dropout(reprs, keep_prob=0.9), whatever the model's


def OfficialHead(config):
    """The official ELECTRA task head (``finetune/classification/classification_tasks.py``): dropout 0.1, then one
    dense layer on the [CLS] state (Hugging Face's ElectraClassificationHead adds a dense + GELU layer before it).
    Initialised as the official one: ``tf.layers.dense`` without an initializer, i.e. Glorot-uniform weights
    (|w| <= sqrt(6 / (hidden + labels))) and a zero bias; HF draws its head from normal(0, 0.02)."""
    import torch
    from torch import nn

    class _Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout = nn.Dropout(OFFICIAL_HEAD_DROPOUT)
            self.out_proj = nn.Linear(config.hidden_size, config.num_labels)
            with torch.no_grad():
                nn.init.xavier_uniform_(self.out_proj.weight)
                self.out_proj.bias.zero_()

        def forward(self, sequence_output, **kwargs):
            return self.out_proj(self.dropout(sequence_output[:, 0]))

    return _Head()


def load_classifier(model_dir: Path, task, init_from: Path | None = None, scratch: bool = False,
                    device_type: str | None = None, dropout: float | None = None):
    """Tokenizer of ``model_dir`` and a classifier for ``task`` (from ``init_from`` with a fresh head; with
    ``scratch`` the architecture of ``model_dir`` with random weights from torch's current seed). ``device_type``
    picks the attention as pretraining's ``attn_implementation: auto`` does (eager on CPU: bf16 matmuls under
    autocast; sdpa elsewhere); the weights and the results do not depend on it. ``dropout`` (not None) replaces the
    model's hidden and attention-probability dropout rates (the head's follows the hidden one)."""
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from electra_ds.common import alibi
    from electra_ds.common.hardware import resolve_attention

    attention = resolve_attention("auto", device_type)
    kwargs = {"num_labels": task.num_labels, "attn_implementation": alibi.implementation(model_dir, attention)}
    if dropout is not None:
        kwargs.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs.update(problem_type="single_label_classification",
                      id2label=dict(enumerate(task.labels)), label2id={s: i for i, s in enumerate(task.labels)})
    try:
        tokenizer = load_hf_tokenizer(model_dir, fix="pass the export stage's discriminator folder")
        if scratch:
            model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model_dir, **kwargs))
        elif init_from is None:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load the model or tokenizer: {exc}", path=model_dir,
                        fix="pass the export stage's discriminator folder") from None
    if tokenizer.pad_token_id is None:
        raise UserError("the tokenizer has no [PAD] token", path=model_dir)
    if init_from is not None:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                init_from, ignore_mismatched_sizes=True,
                **{**kwargs, "attn_implementation": alibi.implementation(init_from, attention)})
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot load the model to start from: {exc}", path=init_from,
                            fix="pass a fine-tuned model folder (finetune --keep-model writes <output-dir>/model)") from None
        reset_head(model)
    return tokenizer, model


def reset_head(model) -> None:
    """Re-initialise the task head (a new task's label set), as ELECTRA's per-task heads start fresh."""
    import torch

    head = getattr(model, "classifier", None)
    if head is None:
        return
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
