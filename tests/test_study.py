"""The models of a run (`models:`): planning, equal pretraining FLOPs, errors; the study preset's DAG."""

from __future__ import annotations

import copy

import pytest
import yaml
from helpers import REPO

from electra_ds.common.errors import UserError
from electra_ds.common.settings import SCHEMA_PATH
from electra_ds.pipeline.study import plan_models
from electra_ds.pretraining.shape import ModelShape, flops_per_token, pretraining_flops

# these tests run Snakemake in the checkout (its .snakemake folder): `make test` runs them alone, one at a time
pytestmark = pytest.mark.workflow

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def filled(config: dict) -> dict:
    """The config with the schema's defaults, as the Snakefile's validate() fills them."""
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, str(SCHEMA_PATH))
    return config


def study_config(**models) -> dict:
    cfg = yaml.safe_load((REPO / "config/presets/cpu-study.yaml").read_text())
    if models:
        cfg["models"] = models
    return filled(cfg)


def test_equal_flops_gives_every_pretrained_model_the_first_models_budget():
    cfg = study_config()
    assert list(cfg["models"]) == ["electra", "mlm", "scratch"]
    cfg = study_config(**cfg["models"], electra_t2={"temperature": 2.0})
    plans = plan_models(cfg, SCHEMA)
    assert list(plans) == ["electra", "mlm", "scratch", "electra_t2"]
    assert plans["electra_t2"]["pretrain"]["temperature"] == 2.0 and plans["electra"]["pretrain"]["temperature"] == 1.0
    assert plans["electra_t2"]["pretrain"]["max_steps"] == cfg["pretrain"]["max_steps"]  # same FLOPs per step
    assert plans["scratch"]["source"] == "scratch" and plans["scratch"]["flops"] == 0
    electra, mlm = plans["electra"], plans["mlm"]
    assert electra["pretrain"]["max_steps"] == cfg["pretrain"]["max_steps"]
    assert mlm["pretrain"]["objective"] == "mlm" and mlm["pretrain"]["max_steps"] > electra["pretrain"]["max_steps"]
    assert abs(mlm["flops"] / electra["flops"] - 1) < 1e-3  # equal up to one step's rounding
    shape = ModelShape(vocab_size=cfg["vocab"]["vocab_size"], **cfg["pretrain"]["model"])
    assert electra["flops"] == pretraining_flops(shape, 128, cfg["pretrain"]["max_steps"], 64, "electra", 0.15)


def test_without_equal_flops_every_model_keeps_its_steps():
    cfg = study_config()
    cfg["pretrain"]["equal_flops"] = False
    plans = plan_models(cfg, SCHEMA)
    assert plans["mlm"]["pretrain"]["max_steps"] == plans["electra"]["pretrain"]["max_steps"]


def test_electra_costs_more_per_token_than_mlm_on_the_same_backbone():
    shape = ModelShape(vocab_size=8000, embedding_size=128, hidden_size=256, num_layers=12, num_heads=4,
                       intermediate_size=1024)
    ratio = flops_per_token(shape, 128, "electra") / flops_per_token(shape, 128, "mlm")
    assert 1.05 < ratio < 1.4  # the generator is a quarter of the width


def test_model_overrides_merge_into_the_pretrain_section():
    plans = plan_models(study_config(small={"model": {"hidden_size": 64}, "temperature": 1.0}), SCHEMA)
    pre = plans["small"]["pretrain"]
    assert pre["model"]["hidden_size"] == 64 and pre["model"]["num_layers"] == 4 and pre["temperature"] == 1.0


@pytest.mark.parametrize("models, field", [
    ({"bad": {"max_step": 5}}, "models.bad.max_step"),                 # not a pretrain field
    ({"bad": {"nodes": 2}}, "models.bad.nodes"),                       # a job field: one value for all
    ({"bad": {"temperature": 0}}, "models.bad.temperature"),           # schema violation
    ({"bad": {"objective": "gan"}}, "models.bad.objective"),
    ({"no/slash": {}}, "models.no/slash"),                             # a name that reaches paths
    ({"bad": {"uniform_generator": True, "objective": "mlm"}}, "models.bad.uniform_generator"),  # no generator
    ({"bad": {"uniform_generator": True, "embedding_sharing": "gdes"}}, "models.bad.uniform_generator"),
])
def test_bad_model_entries_name_the_field(models, field):
    with pytest.raises(UserError) as err:
        plan_models(study_config(**models), SCHEMA)
    assert field in str(err.value)


def test_a_model_may_carry_its_own_fine_tuning_recipe():
    plans = plan_models(study_config(electra={}, scratch={"source": "scratch",
                                                          "finetune": {"learning_rate": 3e-4, "epochs": 10}}), SCHEMA)
    base = study_config()["finetune"]
    assert plans["electra"]["finetune"] == base
    assert plans["scratch"]["finetune"] == {**base, "learning_rate": 3e-4, "epochs": 10}
    assert plans["scratch"]["pretrain"] == plans["electra"]["pretrain"]  # a recipe field is not a pretrain field


@pytest.mark.parametrize("finetune, field", [
    ({"tasks": ["sst2"]}, "models.bad.finetune.tasks"),              # shared by every model
    ({"seeds": [1]}, "models.bad.finetune.seeds"),
    ({"learning_rate": -1}, "models.bad.finetune.learning_rate"),    # schema violation
    ({"epochs": 0}, "models.bad.finetune.epochs"),
])
def test_bad_fine_tuning_overrides_name_the_field(finetune, field):
    with pytest.raises(UserError) as err:
        plan_models(study_config(bad={"finetune": finetune}), SCHEMA)
    assert field in str(err.value)


def test_each_models_fine_tuning_jobs_get_its_own_recipe(tmp_path):
    from test_pipeline import snakemake

    cfg = yaml.safe_load((REPO / "config/presets/cpu-study.yaml").read_text())
    cfg["models"] = {"electra": {}, "scratch": {"source": "scratch", "finetune": {"learning_rate": 3e-4, "epochs": 10}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake(path, tmp_path / "results", extra=["-n", "-p"])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    jobs = [line for line in out.splitlines() if line.startswith("Shell command: electra-ds finetune")]
    scratch = [line for line in jobs if "--model-source scratch" in line]
    electra = [line for line in jobs if "--model-source pretrained" in line]
    assert len(scratch) == len(electra) == 15
    assert all("--learning-rate 0.0003 " in line and "--epochs 10 " in line for line in scratch)
    assert all("--learning-rate 0.001 " in line and "--epochs 3 " in line for line in electra)


def test_the_converged_overlay_gives_each_study_model_its_rate_and_ten_epochs():
    """config/presets/cpu-study-converged.yaml on top of the study preset (Snakemake merges --configfile files in
    order, sections key by key): the study's models, 10 epochs, scratch at 3e-4 and the pretrained models at 1e-3."""
    from snakemake.utils import update_config

    cfg = yaml.safe_load((REPO / "config/presets/cpu-study.yaml").read_text())
    update_config(cfg, yaml.safe_load((REPO / "config/presets/cpu-study-converged.yaml").read_text()))
    plans = plan_models(filled(cfg), SCHEMA)
    assert list(plans) == ["electra", "mlm", "scratch"] and plans["mlm"]["pretrain"]["objective"] == "mlm"
    assert {n: (p["finetune"]["learning_rate"], p["finetune"]["epochs"]) for n, p in plans.items()} == {
        "electra": (1e-3, 10), "mlm": (1e-3, 10), "scratch": (3e-4, 10)}
    assert plans["scratch"]["source"] == "scratch" and cfg["results_dir"] == "results/cpu-study-converged"
    assert cfg["finetune"]["tasks"] == ["cola", "sst2", "mrpc", "stsb", "rte"]  # the study's tasks, cap and seeds


def test_the_full_training_sets_overlay_uncaps_the_capped_tasks_at_the_papers_three_epochs():
    """config/presets/cpu-study-full.yaml on top of the study preset: CoLA and SST-2 (the tasks the study caps) on
    their whole training sets, 3 epochs, each model at its converged rate; nothing else of the study changes."""
    from snakemake.utils import update_config

    study = yaml.safe_load((REPO / "config/presets/cpu-study.yaml").read_text())
    cfg = yaml.safe_load((REPO / "config/presets/cpu-study.yaml").read_text())
    update_config(cfg, yaml.safe_load((REPO / "config/presets/cpu-study-full.yaml").read_text()))
    plans = plan_models(filled(cfg), SCHEMA)
    assert {n: (p["finetune"]["learning_rate"], p["finetune"]["epochs"]) for n, p in plans.items()} == {
        "electra": (1e-3, 3), "mlm": (1e-3, 3), "scratch": (3e-4, 3)}
    assert cfg["finetune"]["tasks"] == ["cola", "sst2"] and study["finetune"]["max_train_examples"] == 4000
    assert cfg["finetune"]["max_train_examples"] == 0  # 0: the whole training set
    assert cfg["pretrain"] == study["pretrain"] and cfg["finetune"]["seeds"] == study["finetune"]["seeds"]
    assert cfg["results_dir"] == "results/cpu-study-full"


def test_the_study_preset_plans_one_dag_with_the_model_as_a_wildcard(tmp_path):
    from test_pipeline import snakemake

    res = snakemake(REPO / "config/presets/cpu-study.yaml", tmp_path / "results", extra=["-n", "-p"])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    jobs = dict(line.split()[:2] for line in out.split("Job stats:")[1].splitlines()[3:12] if line.strip())
    assert jobs["pretrain"] == "2" and jobs["export"] == "3" and jobs["finetune"] == str(3 * 5 * 3)
    assert jobs["linear_probe"] == "3"  # the frozen probe of every model, scratch included
    assert jobs["corpus"] == "1" and jobs["shards"] == "1"  # the data stages are shared
    pretrain = [line for line in out.splitlines() if line.startswith("Shell command: electra-ds launch")]
    steps = sorted(int(line.split("--max-steps ")[1].split()[0]) for line in pretrain)
    assert steps == [1600, 1660]  # MLM gets ELECTRA's FLOPs (ELECTRA's 1-layer generator is cheap)
    assert all('"attention_bias": "alibi"' in line for line in pretrain)  # the preset's models all carry the bias
    # each pretrained model at the better of the two rates measured for it (docs/study.md): ELECTRA at 5e-4
    # (ELECTRA-Small's), the MLM at 1e-3
    rates = {line.split("--objective ")[1].split()[0]: line.split("--learning-rate ")[1].split()[0] for line in pretrain}
    assert rates == {"electra": "0.0005", "mlm": "0.001"}
    assert any("--scratch" in line for line in out.splitlines() if line.startswith("Shell command: electra-ds export"))
    assert sum("--model-source scratch" in line for line in out.splitlines()) == 15
    # the launch and precision benchmarks/pretrain_throughput.py measured here (docs/speed.md): 2 processes x 1 thread
    # (as fast as 1 x 2 on a quiet machine, 1.65x slower where 1 x 2 is 8x slower beside a busy process) and auto =
    # bf16 on an AMX CPU
    assert all("--nproc-per-node 2 " in line and "--cpus-per-task 1 " in line and "--precision auto " in line
               and "--micro-batch-size 32 " in line for line in pretrain)


@pytest.mark.slow
def test_micro_study_runs_every_model_side_by_side(tmp_path, shared_data):
    """The study preset, shrunk (two books, a tiny model, two GLUE tasks, one seed): one invocation pretrains
    ELECTRA and MLM with equal FLOPs, adds scratch, fine-tunes all three and compares them. (A second ELECTRA
    model's equal steps are planned in test_equal_flops_gives_every_pretrained_model_the_first_models_budget.)"""
    import json

    from test_pipeline import snakemake

    cfg = yaml.safe_load((REPO / "config/presets/cpu-study.yaml").read_text())
    books = shared_data / "corpus" / "gutenberg"
    cfg["corpus"]["sources"][0]["paths"] = [str(books / "The-Art-of-War.txt"), str(books / "The-Dunwich-Horror.txt")]
    cfg["vocab"]["vocab_size"] = 1000
    cfg["shards"].update(max_seq_len=64, valid_fraction=0.1)
    cfg["pretrain"].update(model={"embedding_size": 32, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                  "intermediate_size": 64}, global_batch_size=16, micro_batch_size=8, max_steps=6,
                           warmup_steps=2, checkpoint_every=6, log_every=2, eval_every=3, eval_examples=16, device="cpu")
    cfg["finetune"].update(tasks=["rte", "stsb"], glue_dir=str(shared_data / "glue"), seeds=[1], epochs=1,
                           max_train_examples=48)
    # the frozen probe on 200 training sentences and two rates (the preset's 2000 and seven: about 40 s a model here)
    cfg["linear_probe"] = {**cfg.get("linear_probe", {}), "train_examples": 200, "cs": [0.01, 1.0]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = tmp_path / "results"
    res = snakemake(path, results, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]

    summaries = {m: json.loads((results / f"pretrain/{m}/summary.json").read_text()) for m in ("electra", "mlm")}
    assert summaries["electra"]["steps"] == 6
    assert summaries["mlm"]["objective"] == "mlm" and summaries["mlm"]["steps"] > 6
    assert abs(summaries["mlm"]["flops"] / summaries["electra"]["flops"] - 1) < 0.1  # equal up to a step
    table = json.loads((results / "evaluate/results.json").read_text())
    assert list(table["models"])[0] == "electra"  # the primary model first
    assert set(table["models"]) == {"electra", "mlm", "scratch"}
    for model in table["models"]:  # the frozen probe of every model
        probe = json.loads((results / f"linear_probe/{model}.json").read_text())
        assert set(probe["tasks"]) == {"sst2", "mrpc"}
    for name, model in table["models"].items():
        assert set(model["summary"]["tasks"]) == {"rte", "stsb"}
        assert model["summary"]["glue_score"]["value"] is not None
    md = (results / "evaluate/results.md").read_text()
    assert "# Models side by side" in md and "none (random weights)" in md
    assert (results / "evaluate/glue_submission.zip").is_file()


def test_a_uniform_generator_model_gets_more_steps_at_equal_flops():
    plans = plan_models(study_config(electra={}, uniform={"uniform_generator": True}), SCHEMA)
    electra, uniform = plans["electra"], plans["uniform"]
    assert uniform["pretrain"]["max_steps"] > electra["pretrain"]["max_steps"]  # it builds no generator
    assert abs(uniform["flops"] / electra["flops"] - 1) < 1e-3


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "config/presets").glob("*.yaml")))
def test_every_preset_validates_and_plans(preset):
    cfg = filled(yaml.safe_load((REPO / "config/presets" / preset).read_text()))
    plans = plan_models(cfg, SCHEMA)
    assert plans and all(p["source"] in ("pretrained", "scratch") for p in plans.values())


def test_the_demo_plans_the_launch_and_precision_found_fastest(tmp_path):
    """The demo pretrains as benchmarks/pretrain_throughput.py measured fastest on a 2-core AMX CPU (README,
    "Speed"): 2 processes x 1 thread through DeepSpeed, precision auto (bf16 where the CPU has bf16 matrix units);
    fine-tuning with precision auto as well."""
    from test_pipeline import snakemake

    res = snakemake(REPO / "config/config.yaml", tmp_path / "results", extra=["-n", "-p"])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    launch = [line for line in out.splitlines() if line.startswith("Shell command: electra-ds launch")]
    assert len(launch) == 1
    assert "--nproc-per-node 2 " in launch[0] and "--cpus-per-task 1 " in launch[0] and "--precision auto " in launch[0]
    finetune = [line for line in out.splitlines() if line.startswith("Shell command: electra-ds finetune")]
    assert finetune and all("--precision auto " in line for line in finetune)
