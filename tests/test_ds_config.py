"""Batch sizes and precision: derived from the pipeline config, checked against the DeepSpeed JSON."""

import json

import pytest
from helpers import REPO

from electra_ds.common.errors import UserError
from electra_ds.pretraining.ds_config import derive_batch, load_ds_config, zero_stage


def test_accumulation_is_derived_from_world_size():
    assert derive_batch(128, 16, 2) == (16, 4)
    assert derive_batch(128, 0, 4) == (32, 1)


def test_world_size_that_does_not_divide_the_batch_is_an_error():
    with pytest.raises(UserError, match="pretrain.global_batch_size"):
        derive_batch(100, 16, 3)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_shipped_configs_fill_batch_and_precision(stage):
    cfg = load_ds_config(REPO / f"ds_configs/zero{stage}.json", global_batch=64, micro_batch=8, world_size=2,
                         precision="bf16")
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (64, 8, 4)
    assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
    assert zero_stage(cfg) == stage and cfg["gradient_clipping"] == 1.0


def test_inconsistent_deepspeed_batch_is_reported_with_the_file(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 32, "zero_optimization": {"stage": 2}}))
    with pytest.raises(UserError) as err:
        load_ds_config(path, global_batch=64, micro_batch=8, world_size=2, precision="fp32")
    assert "ds.json" in str(err.value) and "train_batch_size" in str(err.value)


def test_fp16_on_cpu_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match="fp16 is not supported on CPU"):
        load_ds_config(REPO / "ds_configs/zero2.json", global_batch=8, micro_batch=4, world_size=2,
                       precision="fp16", device_type="cpu")
    cfg = load_ds_config(REPO / "ds_configs/zero2.json", global_batch=8, micro_batch=4, world_size=2,
                         precision="fp16", device_type="cuda")
    assert cfg["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}


def test_precision_conflict_with_json(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(UserError, match="bf16.enabled"):
        load_ds_config(path, global_batch=8, micro_batch=4, world_size=2, precision="fp32")


AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
PLAIN_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"


def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_bf16_in_hardware(monkeypatch):
    from electra_ds.common import hardware as ds_config  # where precision is resolved, for both training stages

    assert ds_config.cpu_has_bf16_matmul(AMX_CPUINFO)
    assert ds_config.cpu_has_bf16_matmul(PLAIN_CPUINFO.replace("avx512bw", "avx512bw avx512_bf16"))
    assert not ds_config.cpu_has_bf16_matmul(PLAIN_CPUINFO)  # AVX512 alone emulates bf16: slower than fp32
    for info, expected in ((AMX_CPUINFO, "bf16"), (PLAIN_CPUINFO, "fp32")):
        monkeypatch.setattr(ds_config, "cpu_has_bf16_matmul", lambda info=info: ds_config.BF16_CPU_FLAGS[0] in info)
        assert ds_config.resolve_precision("auto", "cpu") == expected
        cfg = load_ds_config(REPO / "ds_configs/zero2.json", global_batch=8, micro_batch=4, world_size=2,
                             precision="auto")
        assert cfg["bf16"]["enabled"] is (expected == "bf16") and cfg["fp16"]["enabled"] is False
    assert ds_config.resolve_precision("fp32", "cpu") == "fp32"  # an explicit choice is kept
