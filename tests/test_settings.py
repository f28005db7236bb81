"""One source per setting: every config field's default lives in the schema only, and a stage run by hand sees
the same defaults, ranges and choices as the pipeline."""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest
from helpers import REPO

from electra_ds import stages
from electra_ds.cli import build_parser, main
from electra_ds.common import settings
from electra_ds.stages import STAGES

STAGE_MODULES = {}
for _stage in STAGES:
    _module = stages.module(_stage)
    if hasattr(_module, "SETTINGS"):
        STAGE_MODULES[_stage] = _module

# Fields no stage option takes, and why: they shape the DAG or the job, not what a stage computes.
PIPELINE_ONLY = {
    "results_dir": "where the rules put every output",
    "container": "the jobs' image (the Snakefile's container: directive, workflow/rules/common.smk)",
    "mlflow.tracking_uri": "exported to the jobs as MLFLOW_TRACKING_URI",
    "mlflow.experiment": "exported to the jobs (ELECTRA_DS_MLFLOW_EXPERIMENT)",
    "mlflow.log_model": "the export rule's --mlflow-model / --no-mlflow-model",
    "mlflow.registered_model_name": "the export rule's --registered-model-name (the primary model's export)",
    "mlflow.system_metrics": "exported to the jobs as MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING",
    "dedup.parts": "number of scatter jobs",
    "pretrain.equal_flops": "planning of max_steps per model (study.py)",
    "pretrain.nodes": "job shape (launcher / SLURM)",
    "pretrain.processes_per_node": "job shape (launcher / SLURM)",
    "pretrain.launcher": "job shape (launcher)",
    "pretrain.threads": "job resources",
    "pretrain.mem_mb": "job resources",
    "pretrain.runtime": "job resources",
    "pretrain.gpus_per_node": "job resources",
    "models": "the model wildcard",
    "finetune.tasks": "the task wildcard",
    "finetune.seeds": "the seed wildcard",
    "finetune.glue_dir": "the rule's --data-dir",
    "finetune.hub_id": "the rule's --hub-id",
    "finetune.init_from_mnli": "the rule's --init-from and job order",
    "finetune.init_from_mnli_rte_learning_rate": "the rule's --learning-rate for RTE started from MNLI",
    "finetune.gpus": "job resources and --device",
    "finetune.mem_mb": "job resources",
    "finetune.runtime": "job resources",
    "hub.prefetch": "the prefetch rule and the jobs' offline variables (workflow/rules/hub.smk)",
    "hub.hf_home": "HF_HOME on the prefetch's and the jobs' shell lines",
}


def schema_fields() -> dict[str, dict]:
    out = {}
    for name, spec in settings.schema()["properties"].items():
        if spec.get("type") == "object" and "properties" in spec and name != "models":
            out.update({f"{name}.{field}": node for field, node in spec["properties"].items()})
        else:
            out[name] = spec
    return out


def required_argv(stage: str) -> list[str]:
    """The stage's required options with placeholder values (nothing runs: only parsing)."""
    sub = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == stage)[1]
    argv = [stage]
    for action in sub._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], *([("1" if action.type in (int, float) else "x")]
                                                 if action.nargs != 0 else [])]
    return argv


def test_every_schema_field_is_a_stage_option_or_a_pipeline_field():
    taken = {field: stage for stage, module in STAGE_MODULES.items() for field in settings.fields(module.SETTINGS)}
    for field in schema_fields():
        assert field in taken or field in PIPELINE_ONLY, f"config field {field} reaches no stage and is not listed"
        assert not (field in taken and field in PIPELINE_ONLY), field
    assert set(PIPELINE_ONLY) <= set(schema_fields())


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_a_stage_by_hand_sees_the_schema_defaults(stage):
    args = build_parser().parse_args(required_argv(stage))
    for section, names in STAGE_MODULES[stage].SETTINGS.items():
        for name in names:
            assert getattr(args, name) == settings.default(settings.node(section, name)), f"{stage} {name}"


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_the_pipeline_renders_what_the_stage_parses(stage):
    """The rule's rendering of a config (common.smk stage_args -> settings.render) parses back to the config's
    values, for the defaults and for a config where every value differs from its default."""
    stage_settings = STAGE_MODULES[stage].SETTINGS
    config = {"": {"seed": 7}}
    for section, names in stage_settings.items():
        if section:
            config[section] = {name: settings.default(settings.node(section, name)) for name in names}
    changed = copy.deepcopy(config)
    for section, names in stage_settings.items():
        for name in names:
            spec = settings.node(section, name)
            target = changed[section]
            value = target[name]
            if isinstance(value, bool):
                target[name] = not value
            elif "enum" in spec:
                target[name] = [v for v in spec["enum"] if v != value][0]
            elif value is None and "array" in settings._types(spec):  # a list or null (linear_probe.tasks)
                target[name] = ["sst2"]
            elif value is None and "string" in settings._types(spec):  # a path or null (vocab.vocab_file)
                target[name] = "some/file.txt"
            elif isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
                target[name] = _other_number(spec, value)
    for values in (config, changed):
        args = build_parser().parse_args(required_argv(stage) + settings.render(values, stage_settings))
        for section, names in stage_settings.items():
            for name in names:
                assert getattr(args, name) == values[section][name], f"{stage} {section}.{name}"


def _other_number(spec, value):
    low = spec.get("minimum", spec.get("exclusiveMinimum", 0))
    high = spec.get("maximum", spec.get("exclusiveMaximum"))
    integer = "integer" in settings._types(spec)
    candidate = (value or low or 0) + 1 if integer else ((value or 0) + (high if high is not None else 2)) / 2
    if high is not None and candidate > high:
        candidate = low + (1 if integer else (high - low) / 3)
    jsonschema.validate(candidate, spec)
    return candidate


def test_a_field_the_schema_lacks_is_refused_by_the_cli(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(required_argv("vocab") + ["--vocab-sise", "100"])
    assert exc.value.code == 2 and "unrecognized arguments: --vocab-sise" in capsys.readouterr().err


def test_a_value_outside_the_schema_is_refused_by_the_cli_naming_the_field(tmp_path, capsys):
    assert main(["shards", "--input", str(tmp_path / "x"), "--tokenizer-dir", str(tmp_path), "--output-dir",
                 str(tmp_path / "o"), "--max-seq-len", "8"]) == 2
    assert "field 'shards.max_seq_len': --max-seq-len: 8 is less than the minimum of 16" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_no_stage_module_keeps_a_default_of_its_own():
    """No getattr(args, ..., default) fallbacks in stage code: the parser (from the schema) gives every value."""
    for path in (REPO / "electra_ds").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"getattr\(args,\s*['\"]", text), path.name


def test_the_model_shape_defaults_are_the_schemas():
    from dataclasses import fields

    from electra_ds.pretraining.shape import ModelShape

    shape = {f.name: f.default for f in fields(ModelShape) if f.name in settings.node("pretrain", "model")["properties"]}
    assert shape == settings.default(settings.node("pretrain", "model"))


def test_a_partial_model_option_is_filled_from_the_schema():
    args = build_parser().parse_args(required_argv("pretrain") + ["--model", '{"hidden_size": 64}'])
    assert args.model == {**settings.default(settings.node("pretrain", "model")), "hidden_size": 64}


@pytest.mark.parametrize("stage", [None, *STAGES])
def test_every_subcommand_prints_its_help(stage, capsys):
    """`electra-ds <stage> --help` for every stage (a `%` in a schema description once crashed argparse)."""
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"] if stage else ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: electra-ds") and "--help" in out
    if stage in STAGE_MODULES:  # every setting of the stage is listed with its config field
        for field in settings.fields(STAGE_MODULES[stage].SETTINGS):
            assert field in out, field
