"""A config that validates never crashes later on a value it could have checked (issue 24 item 9, and the
results_dir cases of item 12): each cross-field constraint of electra_ds/pipeline/constraints.py refused naming its field,
the model shapes it accepts are exactly those the model builds and trains on, and the CLI and the dry run refuse."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from helpers import REPO, cli_error, micro_config
from test_faults_workflow import snakemake

from electra_ds.common.errors import UserError
from electra_ds.common.settings import SCHEMA_PATH
from electra_ds.pipeline.constraints import check_config, check_model

# these tests run Snakemake in the checkout (its .snakemake folder): `make test` runs them alone, one at a time
pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def micro() -> dict:
    """tests/configs/micro.yaml with the schema's defaults filled (as the Snakefile sees it)."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((REPO / "tests/configs/micro.yaml").read_text())
    cfg["results_dir"] = "results/micro-test"
    validate(cfg, str(SCHEMA_PATH))
    return cfg


def with_(cfg: dict, **dotted) -> dict:
    cfg = copy.deepcopy(cfg)
    for key, value in dotted.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def test_the_micro_config_passes(micro):
    check_config(copy.deepcopy(micro), checkout=REPO)


@pytest.mark.parametrize("overrides, field", [
    ({"pretrain.model.num_heads": 3, "pretrain.model.hidden_size": 64}, "pretrain.model.num_heads"),
    ({"models": {"electra": {}, "wide": {"model": {"hidden_size": 48, "num_heads": 5}}}}, "models.wide.model.num_heads"),
    ({"corpus.min_chars": 500, "corpus.max_chars": 100}, "corpus.max_chars"),
    ({"probes.min_eval": 600, "probes.max_eval": 500}, "probes.min_eval"),
    ({"dedup.bands": 20, "dedup.rows": 8}, "dedup.bands"),
    ({"dedup.bands": 4}, "dedup.bands"),
    ({"linear_probe.folds": 10, "linear_probe.train_examples": 5}, "linear_probe.folds"),
    ({"results_dir": "/"}, "results_dir"),
    ({"results_dir": "//"}, "results_dir"),
    ({"results_dir": str(REPO)}, "results_dir"),
    ({"results_dir": "~"}, "results_dir"),
])
def test_each_cross_field_constraint_names_its_field(micro, overrides, field):
    with pytest.raises(UserError, match=f"field '{field.replace('.', '[.]')}'"):
        check_config(with_(micro, **overrides), checkout=REPO)


@pytest.mark.parametrize("field, value", [("seed", 2 ** 70), ("seed", -1), ("seed", 2 ** 32),
                                          ("finetune.seeds", [1, 4294967296]), ("linear_probe.seed", -3),
                                          ("dedup.minhash_seed", 2 ** 32)])
def test_seeds_outside_what_numpy_and_torch_take_are_refused_by_the_schema(micro, field, value):
    from electra_ds.pipeline.config import config_error

    problem = config_error(with_(micro, **{field: value}), SCHEMA_PATH)
    assert problem and f"config field '{field}" in problem, problem


def test_the_largest_seed_the_schema_takes_works_in_numpy_and_torch(micro):
    """The bound is the real one: 2**32 - 1 seeds numpy's legacy RNG and torch (the fine-tuning runtime)."""
    import numpy as np
    import torch

    from electra_ds.pipeline.config import config_error

    assert config_error(with_(micro, seed=2 ** 32 - 1, **{"finetune.seeds": [2 ** 32 - 1]}), SCHEMA_PATH) is None
    np.random.seed(2 ** 32 - 1)
    torch.manual_seed(2 ** 32 - 1)
    with pytest.raises(ValueError):
        np.random.seed(2 ** 32)  # what the schema refuses crashed here


def test_results_dir_with_a_tilde_is_expanded_not_a_folder_in_the_checkout(micro, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = with_(micro, results_dir="~/x", **{"finetune.glue_dir": "~/glue"})
    check_config(cfg, checkout=REPO)
    assert cfg["results_dir"] == str(tmp_path / "x") and cfg["finetune"]["glue_dir"] == str(tmp_path / "glue")


# Shapes around the boundary: hidden sizes with and without divisors, generator fractions that round oddly.
SHAPES = [(h, n, f) for h in (12, 30) for n in (4, 5) for f in (0.25, 1.0)] + \
         [(64, 3, 0.34), (130, 2, 0.5), (200, 8, 0.3)]


def test_accepted_model_shapes_build_and_train_and_refused_ones_would_not():
    """For every shape in the grid: check_model accepts it exactly when the model builds, runs a forward and a
    backward, and refuses it exactly when the model would fail (the crash the check is there to prevent)."""
    import torch
    from helpers_models import tiny_batch

    from electra_ds.pretraining.model import ElectraPretrainer, ModelShape

    ids = tiny_batch(rows=2, length=16, pad_from=12)
    for hidden, heads, fraction in SHAPES:
        model = {"embedding_size": 8, "hidden_size": hidden, "num_layers": 1, "num_heads": heads,
                 "intermediate_size": 16, "generator_fraction": fraction, "dropout": 0.0}
        try:
            check_model(model)
            accepted = True
        except UserError as exc:
            accepted = False
            assert "pretrain.model.num_heads" in str(exc) or "generator_fraction" in str(exc)
        try:
            torch.manual_seed(0)
            net = ElectraPretrainer(ModelShape(vocab_size=300, max_position_embeddings=16, **model))
            net(ids, seeds=range(len(ids)))["loss"].backward()
            builds = True
        except (RuntimeError, ValueError):
            builds = False
        assert accepted == builds, (hidden, heads, fraction, accepted, builds)


def test_pretrain_and_finetune_by_hand_refuse_before_any_work(capsys, tmp_path):
    line = cli_error(capsys, "pretrain", "--shards", tmp_path / "none", "--output-dir", tmp_path / "out",
                     "--model", '{"hidden_size": 64, "num_heads": 3}', "--results-dir", tmp_path)
    assert "pretrain.model.num_heads" in line and "num_heads 3 does not divide hidden_size 64" in line
    line = cli_error(capsys, "finetune", "--model-dir", tmp_path / "none", "--task", "probe-adjacency",
                     "--seed", 4294967296, "--data-dir", tmp_path, "--output-dir", tmp_path / "ft",
                     "--results-dir", tmp_path)
    assert "finetune.seeds" in line and "4294967296" in line
    line = cli_error(capsys, "shards", "--input", tmp_path / "x", "--tokenizer-dir", tmp_path, "--output-dir",
                     tmp_path / "s", "--seed", 2 ** 70, "--results-dir", tmp_path)
    assert "field 'seed'" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "ft").exists() and not (tmp_path / "s").exists()


def test_dry_run_refuses_heads_that_do_not_divide_and_expands_a_tilde(tmp_path):
    cfg = micro_config(tmp_path, tmp_path / "r", **{"pretrain.model.num_heads": 3})
    out = snakemake(cfg, "-n")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "config field 'pretrain.model.num_heads': num_heads 3 does not divide hidden_size 32" in text, text[-2000:]
    assert "Traceback" not in text

    home = tmp_path / "home"
    home.mkdir()
    cfg = micro_config(tmp_path, "~/x", name="tilde.yaml")
    env_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        out = snakemake(cfg, "-n", "-p")
    finally:
        os.environ["HOME"] = env_home
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    assert f"--output {home}/x/corpus/" in out.stdout.replace("'", "") or f"{home}/x/corpus" in out.stdout
    assert not (REPO / "~").exists()
