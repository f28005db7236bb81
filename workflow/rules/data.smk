# Data stages: corpus -> dedup -> vocab -> shards, and the offline probe tasks.
# snakemake --lint (tests/test_conventions.py) reports here, and it stays: mixed rules and functions (each helper
# sits beside the rules it serves), and shell lines using the variable rule ({rule} is the rule's name, which
# Snakemake fills in; the linter does not list it).


rule corpus:
    conda:
        "../envs/electra-ds.yaml"
    input:
        unpack(prefetched),  # Hub sources: fetched on the login node first (workflow/rules/hub.smk)
    output:
        docs=LAYOUT.corpus_docs,
        stats=LAYOUT.corpus_stats,
    params:
        settings=stage_args("corpus"),
        track=track,
    log:
        LAYOUT.log("corpus"),
    benchmark:
        LAYOUT.benchmark("corpus")
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        # HUB_JOB_ENV: with Hub sources, HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 (and HF_HOME): read the prefetched cache
        HUB_JOB_ENV
        + "electra-ds corpus --output {output.docs:q} --stats {output.stats:q} {params.settings} "
        "--rule {rule:q} {params.track} > {log:q} 2>&1"


# the dedup settings but the thread count, which is the job's {threads} (the output does not depend on it)
DEDUP_SETTINGS = stage_args("dedup", skip=("threads",)) + " --threads {threads:q}"
DEDUP_PARTS = [f"{part:05d}" for part in range(config["dedup"]["parts"])]


rule corpus_parts:
    conda:
        "../envs/electra-ds.yaml"
    # scatter (only with dedup.parts > 1): contiguous parts of the corpus, one signing job each
    input:
        rules.corpus.output.docs,
    output:
        [LAYOUT.dedup_part_docs(part) for part in DEDUP_PARTS],
    params:
        track=track,
    log:
        LAYOUT.log("corpus_parts"),
    benchmark:
        LAYOUT.benchmark("corpus_parts")
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "electra-ds scatter --input {input:q} --outputs {output:q} --rule {rule:q} {params.track} > {log:q} 2>&1"


rule dedup_sign:
    conda:
        "../envs/electra-ds.yaml"
    input:
        LAYOUT.dedup_part_docs(),
    output:
        directory(LAYOUT.dedup_part_signatures()),
    params:
        track=track,
    threads: config["dedup"]["threads"]
    log:
        LAYOUT.log("dedup_sign", "{part}"),
    benchmark:
        LAYOUT.benchmark("dedup_sign", "{part}")
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        # lint "Path composition with '+'" (reported at the first quote of the file): this joins shell text
        "electra-ds dedup --sign-only --input {input:q} --output {output:q} " + DEDUP_SETTINGS
        + " --rule {rule:q} {params.track} > {log:q} 2>&1"


def dedup_inputs(wildcards):
    if len(DEDUP_PARTS) == 1:
        return {"docs": rules.corpus.output.docs}
    return {"docs": [LAYOUT.dedup_part_docs(part) for part in DEDUP_PARTS],
            "signatures": [LAYOUT.dedup_part_signatures(part) for part in DEDUP_PARTS]}


rule dedup:
    conda:
        "../envs/electra-ds.yaml"
    # one job; with dedup.parts > 1 the gather step over the parts' signatures
    input:
        unpack(dedup_inputs),
    output:
        docs=LAYOUT.dedup_docs,
        stats=LAYOUT.dedup_stats,
    params:
        signatures=lambda wildcards, input: (
            "--signatures " + " ".join(shlex.quote(path) for path in input.signatures)
            if "signatures" in input.keys() else ""),
        track=track,
    threads: config["dedup"]["threads"]
    log:
        LAYOUT.log("dedup"),
    benchmark:
        LAYOUT.benchmark("dedup")
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "electra-ds dedup --input {input.docs:q} {params.signatures} --output {output.docs:q} "
        "--stats {output.stats:q} "
        # lint "Path composition with '+'": this joins shell text, not a path
        + DEDUP_SETTINGS + " --rule {rule:q} {params.track} > {log:q} 2>&1"


rule vocab:
    conda:
        "../envs/electra-ds.yaml"
    input:
        docs=rules.dedup.output.docs,
        vocab_file=config["vocab"]["vocab_file"] or [],  # vocab.tokenizer wordpiece: a given vocab.txt
    output:
        directory(LAYOUT.vocab),
    params:
        settings=stage_args("vocab"),
        track=track,
    threads: config["vocab"]["threads"]
    log:
        LAYOUT.log("vocab"),
    benchmark:
        LAYOUT.benchmark("vocab")
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        # vocab.threads as configured, not {threads} (which --cores may lower): sentencepiece's model depends on
        # its thread count, and the vocabulary must depend on the config only
        "electra-ds vocab --input {input.docs:q} --output-dir {output:q} {params.settings} "
        "--rule {rule:q} {params.track} > {log:q} 2>&1"


rule shards:
    conda:
        "../envs/electra-ds.yaml"
    input:
        docs=rules.dedup.output.docs,
        vocab=rules.vocab.output,
    output:
        directory(LAYOUT.shards),
    params:
        settings=stage_args("shards", skip=("threads",)),  # threads: the job's {threads}
        track=track,
    threads: config["shards"]["threads"]
    log:
        LAYOUT.log("shards"),
    benchmark:
        LAYOUT.benchmark("shards")
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "electra-ds shards --input {input.docs:q} --tokenizer-dir {input.vocab:q} --output-dir {output:q} "
        "{params.settings} --threads {threads:q} --rule {rule:q} {params.track} > {log:q} 2>&1"


rule probes:
    conda:
        "../envs/electra-ds.yaml"
    input:
        rules.dedup.output.docs,
    output:
        directory(LAYOUT.probes),
    params:
        settings=stage_args("probes"),
        track=track,
    log:
        LAYOUT.log("probes"),
    benchmark:
        LAYOUT.benchmark("probes")
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "electra-ds probes --input {input:q} --output-dir {output:q} {params.settings} "
        "--rule {rule:q} {params.track} > {log:q} 2>&1"
