# Pretraining through DeepSpeed (torchrun locally, srun under SLURM) and export to Hugging Face format.
# Checkpoints live in {R}/pretrain/checkpoints, which is NOT a declared output: Snakemake never
# deletes it, so a rerun after a crash, time limit or preemption resumes from the latest one.


rule pretrain:
    input:
        shards=rules.shards.output,
        ds_config=repo_path(config["pretrain"]["ds_config"]),
    output:
        summary=f"{R}/pretrain/summary.json",
    params:
        model=as_json(config["pretrain"]["model"]),
        compile="--compile" if config["pretrain"]["compile"] else "",
        out=f"{R}/pretrain",
        track=track,
    threads: config["pretrain"]["threads"]
    log:
        f"{R}/logs/pretrain.log",
    benchmark:
        f"{R}/benchmarks/pretrain.tsv"
    resources:
        mem_mb=config["pretrain"]["mem_mb"],
        runtime=config["pretrain"]["runtime"],
        # Under SLURM (profiles/slurm): one sbatch job of `nodes` nodes with one task per process (per GPU);
        # `mpi` makes the job run this shell line directly, and the launcher starts the processes with
        # `{resources.mpi} -n {resources.tasks} -N {resources.nodes} -c {resources.cpus_per_task} ...`.
        # Locally the same line starts them with torchrun; these resources then only label the job.
        nodes=config["pretrain"]["nodes"],
        tasks=config["pretrain"]["nodes"] * config["pretrain"]["processes_per_node"],
        mpi="srun",
        cpus_per_task=max(1, config["pretrain"]["threads"] // config["pretrain"]["processes_per_node"]),
        # GPUs per node as GRES (sbatch --gres=gpu:N, per node); tasks_per_gpu=0 keeps the plugin from
        # adding --ntasks-per-gpu, which would bind each process to one GPU and hide its peers from NCCL.
        **({"gres": f"gpu:{config['pretrain']['gpus_per_node']}", "tasks_per_gpu": 0}
           if config["pretrain"]["gpus_per_node"] else {}),
    shell:
        "electra-ds launch --nproc-per-node {config[pretrain][processes_per_node]} "
        "--nnodes {resources.nodes} --launcher {config[pretrain][launcher]} "
        "--srun {resources.mpi:q} --cpus-per-task {resources.cpus_per_task} -- "
        "pretrain --shards {input.shards} --output-dir {params.out} --model {params.model} "
        "--ds-config {input.ds_config} --global-batch-size {config[pretrain][global_batch_size]} "
        "--micro-batch-size {config[pretrain][micro_batch_size]} --learning-rate {config[pretrain][learning_rate]} "
        "--weight-decay {config[pretrain][weight_decay]} --warmup-steps {config[pretrain][warmup_steps]} "
        "--max-steps {config[pretrain][max_steps]} --precision {config[pretrain][precision]} "
        "--device {config[pretrain][device]} {params.compile} --objective {config[pretrain][objective]} "
        "--mask-prob {config[pretrain][mask_prob]} "
        "--disc-weight {config[pretrain][disc_weight]} --seed {config[seed]} "
        "--checkpoint-every {config[pretrain][checkpoint_every]} "
        "--checkpoint-minutes {config[pretrain][checkpoint_minutes]} "
        "--keep-checkpoints {config[pretrain][keep_checkpoints]} --log-every {config[pretrain][log_every]} "
        "--eval-every {config[pretrain][eval_every]} --eval-examples {config[pretrain][eval_examples]} "
        "--peak-tflops {config[pretrain][peak_tflops]} --rule {rule} {params.track} > {log} 2>&1"


rule export:
    input:
        summary=rules.pretrain.output.summary,
        vocab=rules.vocab.output,
    output:
        directory(f"{R}/export"),
    params:
        track=track,
    log:
        f"{R}/logs/export.log",
    benchmark:
        f"{R}/benchmarks/export.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "electra-ds export --pretrain-summary {input.summary} --tokenizer-dir {input.vocab} "
        "--output-dir {output} --rule {rule} {params.track} > {log} 2>&1"
