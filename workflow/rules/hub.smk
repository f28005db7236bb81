# The Hugging Face Hub. Compute nodes of most clusters have no internet: what the jobs read from the Hub (corpus
# sources of type hf, GLUE from finetune.hub_id) is fetched once by the `prefetch` rule, a local rule (the login
# node, or the machine Snakemake runs on), into the HF cache (hub.hf_home, else $HF_HOME); the jobs that read it
# (corpus, finetune) wait for it and run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 on their shell line, reading
# that cache. Without Hub sources (the demo, local GLUE) none of this is in the DAG and the shell lines are unchanged.
# The export's upload (`push_to_hub`, export.push_to_hub.repo_id) is a local rule too.
# snakemake --lint (tests/test_conventions.py) reports here, and it stays: mixed rules and functions (each helper
# sits beside the rules it serves), and shell lines using the variable rule ({rule} is the rule's name, which
# Snakemake fills in; the linter does not list it).

from electra_ds.pipeline import prefetch as hub_prefetch

HUB = config["hub"]
HUB_DATASETS = _user_error(hub_prefetch.plan, config)  # [{kind, id, config, split, revision, field}]
PREFETCH = bool(HUB["prefetch"] and HUB_DATASETS)
PREFETCH_MARKER = LAYOUT.prefetch_marker
HF_HOME = os.path.abspath(repo_path(HUB["hf_home"])) if HUB["hf_home"] else None


def shell_env(variables):
    """`NAME=value ` words for the front of a shell line (quoted; braces doubled for Snakemake's formatting)."""
    words = "".join(f"{name}={shlex.quote(value)} " for name, value in variables.items())
    return words.replace("{", "{{").replace("}", "}}")


HF_HOME_ENV = shell_env({"HF_HOME": HF_HOME} if HF_HOME else {})
# the front of the shell line of the jobs that read the Hub: the cache, and offline once the prefetch is done
HUB_JOB_ENV = HF_HOME_ENV + (shell_env({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}) if PREFETCH else "")


def prefetched(wildcards=None):
    """The prefetch marker as an input of a job that reads the Hub (ancient: a later prefetch reruns nothing)."""
    return {"prefetch": ancient(PREFETCH_MARKER)} if PREFETCH else {}


rule prefetch:
    conda:
        "../envs/electra-ds.yaml"
    output:
        PREFETCH_MARKER,
    params:
        datasets=json.dumps(HUB_DATASETS),
    log:
        LAYOUT.log("prefetch"),
    shell:
        # lint "Path composition with '+'": this joins shell text (the HF_HOME prefix), not a path
        HF_HOME_ENV + "electra-ds prefetch --datasets {params.datasets:q} --marker {output:q} > {log:q} 2>&1"


PUSH = config["export"]["push_to_hub"]


def _push_repos():
    """{model: repo id}: the primary model, or every pretrained model when the repo id holds {model}."""
    repo = PUSH["repo_id"]
    if not repo:
        return {}
    if "{model}" in repo:
        return {model: repo.replace("{model}", model) for model in PRETRAINED}
    if PRIMARY_MODEL not in PRETRAINED:
        raise WorkflowError(f"config field 'export.push_to_hub.repo_id': the primary model {PRIMARY_MODEL} is the "
                            "scratch baseline (random weights). Fix: list a pretrained model first in models:, or "
                            "put {model} in the repo id")
    return {PRIMARY_MODEL: repo}


PUSH_REPOS = _push_repos()
PUSH_FILES = [LAYOUT.push_record(model) for model in PUSH_REPOS]


rule push_to_hub:
    conda:
        "../envs/electra-ds.yaml"
    input:
        LAYOUT.export_dir(),
    output:
        LAYOUT.push_record(),
    params:
        settings=lambda wildcards: stage_args("push", export={"push_to_hub": {**PUSH,
                                                                            "repo_id": PUSH_REPOS[wildcards.model]}}),
        track=track,
    log:
        LAYOUT.log("push_to_hub", "{model}"),
    shell:
        # no HF_HOME here: the login token (`hf auth login`) lives in the user's own HF_HOME (or HF_TOKEN is set)
        "electra-ds push --export-dir {input:q} --output {output:q} {params.settings} "
        "--rule {rule:q} {params.track} > {log:q} 2>&1"
