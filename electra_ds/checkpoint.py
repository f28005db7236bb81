"""Loading DeepSpeed checkpoints without unpickling arbitrary objects.

DeepSpeed's own loaders call ``torch.load(..., weights_only=False)``. Inside :func:`weights_only_loading`
every ``torch.load`` is forced to ``weights_only=True`` and only the few plain data classes DeepSpeed
stores in its checkpoints are allowlisted, so a tampered checkpoint cannot run code on load.
"""

from __future__ import annotations

import contextlib
import importlib

# Data classes DeepSpeed 0.19 writes into model/optimizer state files (no behaviour on unpickling).
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def _resolve(names):
    out = []
    for dotted in names:
        module, _, name = dotted.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if callable(obj) or isinstance(obj, type):
            out.append(obj)
    return out


@contextlib.contextmanager
def weights_only_loading():
    import torch

    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    with torch.serialization.safe_globals(_resolve(DEEPSPEED_SAFE_GLOBALS)):
        torch.load = load
        try:
            yield
        finally:
            torch.load = original
