# The frozen-feature linear probe: one job per model (electra_ds/finetuning/linear_probe.py), read by the evaluate rule.
# Which tasks (linear_probe.tasks, null = automatic): sst2 and mrpc when GLUE tasks are fine-tuned from a local
# glue_dir; in an offline run (the demo) the probe tasks it fine-tunes; none when GLUE comes from the Hub.
# snakemake --lint (tests/test_conventions.py) reports here, and it stays: mixed rules and functions (each helper
# sits beside the rules it serves), and shell lines using the variable rule ({rule} is the rule's name, which
# Snakemake fills in; the linter does not list it).

LP = config["linear_probe"]
LINEAR_PROBE_DEFAULT_TASKS = importlib.import_module("electra_ds.finetuning.linear_probe").DEFAULT_TASKS


def _linear_probe_tasks():
    if LP["tasks"] is None:
        finetuned = [get_task(t) for t in config["finetune"]["tasks"]]
        if config["finetune"]["glue_dir"] and any(not t.is_probe for t in finetuned):
            return list(LINEAR_PROBE_DEFAULT_TASKS)
        return [t.name for t in finetuned if t.is_probe and not t.is_regression]
    tasks = [_user_error(importlib.import_module("electra_ds.finetuning.linear_probe").resolve_task, t) for t in LP["tasks"]]
    if any(not t.is_probe for t in tasks) and not config["finetune"]["glue_dir"]:
        raise WorkflowError("config field 'linear_probe.tasks' names GLUE tasks, but finetune.glue_dir is not set: the "
                            "linear probe reads local GLUE files. Fix: set finetune.glue_dir, or linear_probe.tasks: []")
    if any(t.is_probe for t in tasks) and not config["shards"]["heldout_fraction"]:
        raise WorkflowError("config field 'linear_probe.tasks' names probe tasks, but shards.heldout_fraction is 0 "
                            "and they are built from held-out documents. Fix: set shards.heldout_fraction")
    return [t.name for t in tasks]


LINEAR_PROBE_TASKS = _linear_probe_tasks()
LINEAR_PROBE_HAS_PROBES = any(get_task(t).is_probe for t in LINEAR_PROBE_TASKS)
LINEAR_PROBE_FILES = [LAYOUT.linear_probe(model) for model in MODELS] if LINEAR_PROBE_TASKS else []


def linear_probe_inputs(wildcards):
    inputs = {"model": LAYOUT.export_dir(wildcards.model)}
    if LINEAR_PROBE_HAS_PROBES:
        inputs["probes"] = LAYOUT.probes
    return inputs


def linear_probe_data_args():
    args = []
    if any(not get_task(t).is_probe for t in LINEAR_PROBE_TASKS):
        args.append(f"--data-dir {shlex.quote(repo_path(config['finetune']['glue_dir']))}")
    if LINEAR_PROBE_HAS_PROBES:
        args.append(f"--probes-dir {shlex.quote(LAYOUT.probes)}")
    return " ".join(args)


rule linear_probe:
    conda:
        "../envs/electra-ds.yaml"
    input:
        unpack(linear_probe_inputs),
    output:
        LAYOUT.linear_probe(),
    params:
        model_dir=lambda wildcards: LAYOUT.export_discriminator(wildcards.model),
        tasks=json.dumps(LINEAR_PROBE_TASKS),
        data=linear_probe_data_args(),
        settings=stage_args("linear-probe", skip=("tasks", "threads")),  # tasks resolved above; threads per job
        track=track,
    threads: LP["threads"]
    log:
        LAYOUT.log("linear_probe", "{model}"),
    benchmark:
        LAYOUT.benchmark("linear_probe", "{model}")
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "electra-ds linear-probe --model-dir {params.model_dir:q} --model-name {wildcards.model:q} "
        "--output {output:q} --tasks {params.tasks:q} {params.data} {params.settings} --threads {threads:q} "
        "--rule {rule:q} {params.track} > {log:q} 2>&1"
