"""DeepSpeed config: the JSON in ``ds_configs/`` holds ZeRO, offload and communication settings;
batch sizes and precision come from the pipeline config and are derived and checked here.

The user gives the global batch size and the micro-batch per process; gradient accumulation is
derived from the world size. A DeepSpeed JSON that states a batch key or precision that
disagrees with those settings is an error, reported before training starts.
"""

from __future__ import annotations

import json
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.hardware import PRECISIONS, resolve_precision


def derive_batch(global_batch: int, micro_batch: int | None, world_size: int) -> tuple[int, int]:
    """Return (micro_batch, grad_accum) such that micro x accum x world == global."""
    if micro_batch in (None, 0):
        micro_batch = global_batch // world_size
    if micro_batch <= 0 or global_batch % (micro_batch * world_size):
        raise UserError(
            f"global batch {global_batch} is not divisible by micro-batch {micro_batch} x world size {world_size}",
            field="pretrain.global_batch_size",
            fix="choose a global batch that is a multiple of micro_batch_size x processes")
    return micro_batch, global_batch // (micro_batch * world_size)


def load_ds_config(path, *, global_batch: int, micro_batch: int | None, world_size: int, precision: str,
                   grad_clip: float = 1.0, device_type: str = "cpu") -> dict:
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("DeepSpeed config not found", path=path, fix="point pretrain.ds_config at a file in ds_configs/")
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON ({exc})", path=path)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", field="pretrain.precision", fix=f"use one of {PRECISIONS}")
    precision = resolve_precision(precision, device_type)
    if precision == "fp16" and device_type != "cuda":
        raise UserError("fp16 is not supported on CPU", field="pretrain.precision", fix="use bf16 or fp32 on CPU")

    micro, accum = derive_batch(global_batch, micro_batch, world_size)
    for key, value in (("train_batch_size", global_batch), ("train_micro_batch_size_per_gpu", micro),
                       ("gradient_accumulation_steps", accum)):
        stated = cfg.get(key, "auto")
        if stated != "auto" and stated != value:
            raise UserError(f"{key}={stated} disagrees with the pipeline config (derived {value} from global batch "
                            f"{global_batch}, micro-batch {micro}, world size {world_size})", path=path,
                            fix=f"remove {key} from the DeepSpeed config or set it to \"auto\"")
        cfg[key] = value
    for name in ("bf16", "fp16"):
        stated = cfg.get(name, {}).get("enabled", "auto")
        wanted = precision == name
        if stated != "auto" and bool(stated) != wanted:
            raise UserError(f"{name}.enabled={stated} disagrees with pretrain.precision={precision}", path=path,
                            fix=f"set {name}.enabled to \"auto\" (precision comes from the pipeline config)")
        cfg.setdefault(name, {})["enabled"] = wanted
    if precision == "fp16":
        cfg["fp16"].setdefault("loss_scale", 0)  # 0 = dynamic loss scaling
        cfg["fp16"].setdefault("initial_scale_power", 16)
    cfg.setdefault("gradient_clipping", grad_clip)
    cfg.setdefault("zero_optimization", {"stage": 0})
    cfg["zero_allow_untested_optimizer"] = True  # we pass torch's AdamW as a client optimizer
    cfg.setdefault("steps_per_print", 10 ** 9)
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg


def zero_stage(cfg: dict) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(cfg: dict) -> bool:
    return cfg.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") not in ("none", None)
