"""benchmarks/gpu_check.sh, the first-GPU check, in its reduced CPU form: so it is known to run when a GPU appears."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import REPO


@pytest.mark.slow
def test_gpu_check_runs_in_its_reduced_cpu_form(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "ELECTRA_DS_MLFLOW": "0"}
    res = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--reduced", "--work-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = res.stdout.split("electra-ds GPU check on ")[1]
    for row in ("pretrain step, tiny", "data stages", "pretrain 20 steps", "export", "fine-tune probe-acceptability"):
        assert row in table, table
    assert "tokens/s" in table and "model TFLOP/s" in table and "MFU" in table
    assert (tmp_path / "export" / "discriminator" / "config.json").is_file()
    assert (tmp_path / "finetune" / "metrics.json").is_file()
    assert not list(REPO.glob("electra-ds-*"))  # nothing written into the checkout
