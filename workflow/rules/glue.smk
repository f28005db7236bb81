# Fine-tuning: one job per (task, seed), then one evaluation table.


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        metrics=f"{R}/finetune/{{task}}/seed{{seed}}/metrics.json",
        predictions=f"{R}/finetune/{{task}}/seed{{seed}}/test_predictions.tsv",
    params:
        data=finetune_data_args,
        out=lambda wildcards: f"{R}/finetune/{wildcards.task}/seed{wildcards.seed}",
        epochs=lambda wildcards: f"--epochs {config['finetune']['epochs']}" if config["finetune"]["epochs"] else "",
        track=track,
    threads: config["finetune"]["threads"]
    log:
        f"{R}/logs/finetune/{{task}}-seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{task}}-seed{{seed}}.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "electra-ds finetune --model-dir {input.model}/discriminator --task {wildcards.task} --seed {wildcards.seed} "
        "--output-dir {params.out} {params.data} {params.epochs} "
        "--learning-rate {config[finetune][learning_rate]} --layer-decay {config[finetune][layer_decay]} "
        "--batch-size {config[finetune][batch_size]} --max-length {config[finetune][max_length]} "
        "--max-train-examples {config[finetune][max_train_examples]} --threads {threads} "
        "--rule {rule} {params.track} > {log} 2>&1"


rule evaluate:
    input:
        expand(f"{R}/finetune/{{task}}/seed{{seed}}/metrics.json",
               task=config["finetune"]["tasks"], seed=config["finetune"]["seeds"]),
    output:
        json=f"{R}/evaluate/results.json",
        md=report(f"{R}/evaluate/results.md", caption="../report/results.rst", category="Evaluation"),
    params:
        track=track,
    log:
        f"{R}/logs/evaluate.log",
    benchmark:
        f"{R}/benchmarks/evaluate.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "electra-ds evaluate --metrics {input} --output-json {output.json} --output-md {output.md} "
        "--rule {rule} {params.track} > {log} 2>&1"
