# Fine-tuning: one job per (task, seed), so a cluster runs them side by side; then one evaluation
# job (tables, comparison with published and earlier runs, plots, GLUE leaderboard zip).
# snakemake --lint (tests/test_conventions.py) reports here, and it stays: mixed rules and functions (each helper
# sits beside the rules it serves), and shell lines using the variable rule ({rule} is the rule's name, which
# Snakemake fills in; the linter does not list it).

from electra_ds.finetuning.glue import MNLI_INIT_TASKS  # RTE and STS-B, as the ELECTRA paper

FT = config["finetune"]
HAS_GLUE = any(not get_task(t).is_probe for t in FT["tasks"])


def starts_from_mnli(task):
    return FT["init_from_mnli"] and get_task(task).name in MNLI_INIT_TASKS


def finetune_job_inputs(wildcards):
    """The exported model (and probes); with init_from_mnli, RTE/MRPC/STS-B wait for MNLI of the same seed; GLUE
    from the Hub waits for its prefetch."""
    inputs = finetune_inputs(wildcards)
    if not get_task(wildcards.task).is_probe and not FT["glue_dir"]:
        inputs.update(prefetched())  # GLUE from the Hub: fetched on the login node first (workflow/rules/hub.smk)
    if starts_from_mnli(wildcards.task):
        inputs["mnli"] = LAYOUT.finetune_metrics(wildcards.model, "mnli", wildcards.seed)
    return inputs


def finetune_model_args(wildcards):
    """--model-source; --init-from for tasks started from MNLI (RTE also at init_from_mnli_rte_learning_rate, after
    the settings' --learning-rate, so it wins); --keep-model where the weights are wanted or needed."""
    source = MODELS[wildcards.model]["source"]
    args = [f"--model-name {shlex.quote(wildcards.model)} --model-source {shlex.quote(source)}"]
    if starts_from_mnli(wildcards.task):
        args.append(f"--init-from {shlex.quote(LAYOUT.finetune_kept_model(wildcards.model, 'mnli', wildcards.seed))}")
        rte_lr = FT["init_from_mnli_rte_learning_rate"]
        if get_task(wildcards.task).name == "rte" and rte_lr is not None:
            args.append(f"--learning-rate {shlex.quote(str(rte_lr))}")
    mnli_needed = wildcards.task == "mnli" and any(starts_from_mnli(t) for t in FT["tasks"])
    if FT["keep_model"] or mnli_needed:
        args.append("--keep-model")
    return " ".join(args)


rule finetune:
    conda:
        "../envs/electra-ds.yaml"
    input:
        unpack(finetune_job_inputs),
    output:
        metrics=LAYOUT.finetune_metrics(),
        predictions=LAYOUT.finetune_predictions(),
    params:
        data=finetune_data_args,
        out=lambda wildcards: LAYOUT.finetune_dir(wildcards.model, wildcards.task, wildcards.seed),
        model=finetune_model_args,
        model_dir=lambda wildcards: LAYOUT.export_discriminator(wildcards.model),
        device="cuda" if FT["gpus"] else "auto",
        # both set per job; the model's own recipe (models.<name>.finetune) in place
        settings=lambda wildcards: stage_args("finetune", skip=("keep_model", "threads"),
                                              finetune=MODELS[wildcards.model]["finetune"]),
        track=track,
    threads: FT["threads"]
    log:
        LAYOUT.log("finetune", LAYOUT.finetune_job()),
    benchmark:
        LAYOUT.benchmark("finetune", LAYOUT.finetune_job())
    resources:
        mem_mb=FT["mem_mb"],
        runtime=FT["runtime"],
        gpu=FT["gpus"],
    shell:
        # HUB_JOB_ENV: with GLUE from the Hub, HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 (and HF_HOME): read the cache
        HUB_JOB_ENV
        + "electra-ds finetune --model-dir {params.model_dir:q} --task {wildcards.task:q} --seed {wildcards.seed:q} "
        "--output-dir {params.out:q} {params.data} --device {params.device:q} {params.settings} {params.model} "
        "--threads {threads:q} --rule {rule:q} {params.track} > {log:q} 2>&1"


EVALUATE_OUTPUTS = {
    "json": LAYOUT.evaluate_json,
    "md": report(LAYOUT.evaluate_md, caption="../report/results.rst", category="Evaluation"),
    "html": report(LAYOUT.evaluate_html, caption="../report/results_html.rst", category="Evaluation"),
    "loss_plot": report(LAYOUT.loss_plot, caption="../report/pretrain_loss.rst", category="Pretraining"),
    "scores_plot": report(LAYOUT.scores_plot, caption="../report/task_scores.rst", category="Evaluation"),
    "epochs_plot": report(LAYOUT.epochs_plot, caption="../report/finetune_epochs.rst", category="Evaluation"),
}
if HAS_GLUE:  # the leaderboard zip only when GLUE tasks are fine-tuned (never for probes)
    EVALUATE_OUTPUTS["submission"] = report(LAYOUT.submission_zip, caption="../report/submission.rst",
                                            category="Submission")


rule evaluate:
    conda:
        "../envs/electra-ds.yaml"
    input:
        metrics=expand(LAYOUT.finetune_metrics(), model=MODELS, task=FT["tasks"], seed=FT["seeds"]),
        predictions=expand(LAYOUT.finetune_predictions(), model=MODELS, task=FT["tasks"], seed=FT["seeds"]),
        pretrain=[LAYOUT.pretrain_summary(model) for model in PRETRAINED],
        train_logs=[LAYOUT.train_log(model) for model in PRETRAINED],  # the curves in the report
        linear_probe=LINEAR_PROBE_FILES,  # the frozen probe table (workflow/rules/linear_probe.smk); may be none
    output:
        **EVALUATE_OUTPUTS,
    params:
        models=" ".join(shlex.quote(name) for name in MODELS),
        pretrain=" ".join(shlex.quote(f"{name}={LAYOUT.pretrain_dir(name)}") for name in PRETRAINED),
        submission=lambda wildcards, output: (
            f"--submission-zip {shlex.quote(output.submission)}" if HAS_GLUE else ""),
        linear_probe=lambda wildcards, input: (
            "--linear-probe " + " ".join(shlex.quote(p) for p in input.linear_probe) if LINEAR_PROBE_FILES else ""),
        settings=stage_args("evaluate"),
        track=track,
    log:
        LAYOUT.log("evaluate"),
    benchmark:
        LAYOUT.benchmark("evaluate")
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "electra-ds evaluate --metrics {input.metrics:q} --output-json {output.json:q} --output-md {output.md:q} "
        "--output-html {output.html:q} --loss-plot {output.loss_plot:q} --scores-plot {output.scores_plot:q} "
        "--epochs-plot {output.epochs_plot:q} "
        "--models {params.models} --pretrain-dirs {params.pretrain} {params.submission} {params.linear_probe} "
        "{params.settings} --rule {rule:q} {params.track} > {log:q} 2>&1"
