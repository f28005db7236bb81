# Pretraining through DeepSpeed (torchrun locally, srun under SLURM) and export to Hugging Face format,
# once per model of `models:` (the `model` wildcard; see electra_ds/pipeline/study.py).
# Checkpoints live in LAYOUT.checkpoints(model) ({R}/pretrain/{model}/checkpoints), which is NOT a declared output:
# Snakemake never deletes it, so a rerun after a crash, time limit or preemption resumes from the latest one.
# snakemake --lint (tests/test_conventions.py) reports here, and it stays: mixed rules and functions (each helper
# sits beside the rules it serves), and shell lines using the variable rule ({rule} is the rule's name, which
# Snakemake fills in; the linter does not list it).

PT = config["pretrain"]  # the job's shape (nodes, processes, GPUs, threads) is the same for every model
PT_TASKS = PT["nodes"] * PT["processes_per_node"]  # processes (one per GPU): the job's SLURM tasks


def pretrain_vocab(wildcards):
    """The vocabulary, an input only with whole-word masking (which pieces start a word): token masking reads
    the shards alone, so its runs do not depend on (or rerun for) the vocab directory. (The strategies that read
    word starts: masking.MASKINGS[...].needs_word_starts; not imported here, which would load torch to plan.)"""
    if MODELS[wildcards.model]["pretrain"]["masking"] == "whole_word":
        return {"vocab": rules.vocab.output[0]}
    return {}


def pretrain_args(wildcards, input):
    """The stage's settings from the model's merged pretrain section (ds_config: the rule's input, resolved)."""
    args = stage_args("pretrain", skip=("ds_config",), pretrain=MODELS[wildcards.model]["pretrain"])
    if "vocab" in input.keys():
        args += f" --tokenizer-dir {shlex.quote(input.vocab)}"
    return args


rule pretrain:
    conda:
        "../envs/electra-ds.yaml"
    input:
        unpack(pretrain_vocab),
        shards=rules.shards.output,
        ds_config=repo_path(PT["ds_config"]),
    output:
        summary=LAYOUT.pretrain_summary(),
        # deleted by Snakemake before a rerun of an unfinished job; restored from the checkpoint it resumes from
        train_log=LAYOUT.train_log(),
    params:
        args=pretrain_args,
        out=lambda wildcards: LAYOUT.pretrain_dir(wildcards.model),
        track=track,
        starter=lambda wildcards, resources: resources.get("mpi") or "srun",  # a site's mpi (set-resources) wins
    threads: PT["threads"]
    log:
        LAYOUT.log("pretrain", "{model}"),
    benchmark:
        LAYOUT.benchmark("pretrain", "{model}")
    wildcard_constraints:
        model="|".join(PRETRAINED) or "(?!)",
    resources:
        mem_mb=PT["mem_mb"],
        runtime=PT["runtime"],
        # Under SLURM (profiles/slurm): one sbatch job of `nodes` nodes with one task per process (per GPU).
        # More than one task: `mpi` makes the job run this shell line directly, and the launcher starts the
        # processes with `{resources.mpi} -n {resources.tasks} -N {resources.nodes} -c {resources.cpus_per_task}`.
        # One task (1 node x 1 process, e.g. electra-small's one GPU): a plain job, as the SLURM plugin refuses an
        # MPI job of one task (so a site's `mpi` in set-resources is only for multi-process runs); the plugin runs
        # this shell line in a `srun -n1` step and the launcher runs the one process right there.
        # Locally the same line starts the processes with torchrun; these resources then only label the job.
        nodes=PT["nodes"],
        **({"tasks": PT_TASKS, "mpi": "srun"} if PT_TASKS > 1 else {}),
        cpus_per_task=max(1, PT["threads"] // PT["processes_per_node"]),
        # GPUs per node as GRES (sbatch --gres=gpu:N, per node); tasks_per_gpu=0 keeps the plugin from
        # adding --ntasks-per-gpu, which would bind each process to one GPU and hide its peers from NCCL.
        **({"gres": f"gpu:{PT['gpus_per_node']}", "tasks_per_gpu": 0} if PT["gpus_per_node"] else {}),
    shell:
        # lint (shell uses variable PT): PT is the config's pretrain section, a value, not a file to track
        "electra-ds launch --nproc-per-node {PT[processes_per_node]:q} "
        "--nnodes {resources.nodes:q} --launcher {PT[launcher]:q} "
        "--srun {params.starter:q} --cpus-per-task {resources.cpus_per_task:q} -- "
        "pretrain --shards {input.shards:q} --output-dir {params.out:q} --ds-config {input.ds_config:q} "
        "{params.args} --rule {rule:q} {params.track} > {log:q} 2>&1"


def export_inputs(wildcards):
    if MODELS[wildcards.model]["source"] == "scratch":
        return {"vocab": rules.vocab.output[0]}
    return {"vocab": rules.vocab.output[0], "summary": LAYOUT.pretrain_summary(wildcards.model)}


def export_mlflow_args(wildcards):
    """MLflow's copy of the export: logged as a model unless mlflow.log_model is off; the primary model's is
    registered under mlflow.registered_model_name when one is named."""
    if not config["mlflow"]["log_model"]:
        return "--no-mlflow-model"
    name = config["mlflow"]["registered_model_name"]
    return f"--registered-model-name {shlex.quote(name)}" if name and wildcards.model == PRIMARY_MODEL else ""


def export_args(wildcards, input):
    plan = MODELS[wildcards.model]
    if plan["source"] == "scratch":  # the architecture with random weights: no pretraining to export
        return f"--scratch {stage_args('export', pretrain=plan['pretrain'])} {export_mlflow_args(wildcards)}"
    return f"--pretrain-summary {shlex.quote(input.summary)} {export_mlflow_args(wildcards)}"


rule export:
    conda:
        "../envs/electra-ds.yaml"
    input:
        unpack(export_inputs),
    output:
        directory(LAYOUT.export_dir()),
    params:
        args=export_args,
        track=track,
    log:
        LAYOUT.log("export", "{model}"),
    benchmark:
        LAYOUT.benchmark("export", "{model}")
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "electra-ds export {params.args} --tokenizer-dir {input.vocab:q} "
        "--output-dir {output:q} --rule {rule:q} {params.track} > {log:q} 2>&1"
