# Data stages: corpus -> dedup -> vocab -> shards, and the offline probe tasks.


rule corpus:
    output:
        docs=f"{R}/corpus/documents.jsonl",
        stats=f"{R}/corpus/stats.json",
    params:
        sources=as_json(config["corpus"]["sources"]),
        track=track,
    log:
        f"{R}/logs/corpus.log",
    benchmark:
        f"{R}/benchmarks/corpus.tsv"
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "electra-ds corpus --sources {params.sources} --output {output.docs:q} --stats {output.stats:q} "
        "--min-chars {config[corpus][min_chars]:q} --max-chars {config[corpus][max_chars]:q} "
        "--on-decode-error {config[corpus][on_decode_error]:q} --rule {rule:q} {params.track} > {log:q} 2>&1"


DEDUP_SETTINGS = (
    "{params.exact} {params.near} --shingle {config[dedup][shingle]:q} --ngram {config[dedup][ngram]:q} "
    "--num-perm {config[dedup][num_perm]:q} --threshold {config[dedup][threshold]:q} "
    "--bands {config[dedup][bands]:q} --rows {config[dedup][rows]:q} --workers {threads:q}"
)
DEDUP_PARTS = [f"{part:05d}" for part in range(config["dedup"]["parts"])]


rule corpus_parts:
    # scatter (only with dedup.parts > 1): contiguous parts of the corpus, one signing job each
    input:
        rules.corpus.output.docs,
    output:
        expand(f"{R}/dedup/parts/documents-{{part}}.jsonl", part=DEDUP_PARTS),
    params:
        track=track,
    log:
        f"{R}/logs/corpus_parts.log",
    benchmark:
        f"{R}/benchmarks/corpus_parts.tsv"
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "electra-ds scatter --input {input:q} --outputs {output:q} --rule {rule:q} {params.track} > {log:q} 2>&1"


rule dedup_sign:
    input:
        f"{R}/dedup/parts/documents-{{part}}.jsonl",
    output:
        directory(f"{R}/dedup/parts/signatures-{{part}}"),
    params:
        exact="--exact" if config["dedup"]["exact"] else "--no-exact",
        near="--near" if config["dedup"]["near"] else "--no-near",
        track=track,
    threads: config["dedup"]["threads"]
    log:
        f"{R}/logs/dedup_sign/{{part}}.log",
    benchmark:
        f"{R}/benchmarks/dedup_sign/{{part}}.tsv"
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "electra-ds dedup --sign-only --input {input:q} --output {output:q} " + DEDUP_SETTINGS
        + " --rule {rule:q} {params.track} > {log:q} 2>&1"


def dedup_inputs(wildcards):
    if len(DEDUP_PARTS) == 1:
        return {"docs": rules.corpus.output.docs}
    return {"docs": expand(f"{R}/dedup/parts/documents-{{part}}.jsonl", part=DEDUP_PARTS),
            "signatures": expand(f"{R}/dedup/parts/signatures-{{part}}", part=DEDUP_PARTS)}


rule dedup:
    # one job; with dedup.parts > 1 the gather step over the parts' signatures
    input:
        unpack(dedup_inputs),
    output:
        docs=f"{R}/dedup/documents.jsonl",
        stats=f"{R}/dedup/stats.json",
    params:
        exact="--exact" if config["dedup"]["exact"] else "--no-exact",
        near="--near" if config["dedup"]["near"] else "--no-near",
        signatures=lambda wildcards, input: (
            "--signatures " + " ".join(shlex.quote(path) for path in input.signatures)
            if "signatures" in input.keys() else ""),
        track=track,
    threads: config["dedup"]["threads"]
    log:
        f"{R}/logs/dedup.log",
    benchmark:
        f"{R}/benchmarks/dedup.tsv"
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "electra-ds dedup --input {input.docs:q} {params.signatures} --output {output.docs:q} "
        "--stats {output.stats:q} "
        + DEDUP_SETTINGS + " --rule {rule:q} {params.track} > {log:q} 2>&1"


rule vocab:
    input:
        rules.dedup.output.docs,
    output:
        directory(f"{R}/vocab"),
    params:
        byte_fallback="--byte-fallback" if config["vocab"]["byte_fallback"] else "",
        track=track,
    threads: config["vocab"]["threads"]
    log:
        f"{R}/logs/vocab.log",
    benchmark:
        f"{R}/benchmarks/vocab.tsv"
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "electra-ds vocab --input {input:q} --output-dir {output:q} --vocab-size {config[vocab][vocab_size]:q} "
        "--model-type {config[vocab][model_type]:q} --sample-sentences {config[vocab][sample_sentences]:q} "
        # the configured thread count, not {threads} (which --cores may lower): sentencepiece's model
        # depends on its thread count, and the vocabulary must depend on the config only
        "--character-coverage {config[vocab][character_coverage]:q} {params.byte_fallback} "
        "--threads {config[vocab][threads]:q} "
        "--seed {config[seed]:q} --rule {rule:q} {params.track} > {log:q} 2>&1"


rule shards:
    input:
        docs=rules.dedup.output.docs,
        vocab=rules.vocab.output,
    output:
        directory(f"{R}/shards"),
    params:
        track=track,
    threads: config["shards"]["threads"]
    log:
        f"{R}/logs/shards.log",
    benchmark:
        f"{R}/benchmarks/shards.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "electra-ds shards --input {input.docs:q} --tokenizer-dir {input.vocab:q} --output-dir {output:q} "
        "--max-seq-len {config[shards][max_seq_len]:q} --valid-fraction {config[shards][valid_fraction]:q} "
        "--heldout-fraction {config[shards][heldout_fraction]:q} "
        "--short-seq-prob {config[shards][short_seq_prob]:q} "
        "--examples-per-shard {config[shards][examples_per_shard]:q} --packing {config[shards][packing]:q} "
        "--seed {config[seed]:q} --threads {threads:q} "
        "--rule {rule:q} {params.track} > {log:q} 2>&1"


rule probes:
    input:
        rules.dedup.output.docs,
    output:
        directory(f"{R}/probes"),
    params:
        track=track,
    log:
        f"{R}/logs/probes.log",
    benchmark:
        f"{R}/benchmarks/probes.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "electra-ds probes --input {input:q} --output-dir {output:q} "
        "--valid-fraction {config[shards][valid_fraction]:q} "
        "--heldout-fraction {config[shards][heldout_fraction]:q} --seed {config[seed]:q} "
        "--max-train {config[probes][max_train]:q} --max-eval {config[probes][max_eval]:q} "
        "--rule {rule:q} {params.track} > {log:q} 2>&1"
