# Helpers shared by the rules: results paths (LAYOUT: electra_ds/common/layout.py), CLI argument rendering,
# MLflow parent run.

import hashlib
import importlib
import json
import os
import shlex

import yaml
from snakemake.logging import logger

from electra_ds import stages, tracking
from electra_ds.common import settings
from electra_ds.common.lock import ResultsLock
from electra_ds.common.errors import UserError
from electra_ds.common.layout import Layout
from electra_ds.common.fileio import refuse_link, refuse_links_under
from electra_ds.finetuning.glue import get_task
from electra_ds.pipeline.study import plan_models

# Every path under results_dir (the rules' inputs, outputs, logs and benchmarks): LAYOUT.<name>(), with the
# job's wildcards ({model}, {task}, {seed}, {part}) left in where no value is given.
LAYOUT = Layout(config["results_dir"])
R = LAYOUT.root  # the results directory itself (the stages' --results-dir, MLflow, the lock)

# Software: the rules all declare conda "../envs/electra-ds.yaml" (--software-deployment-method conda); the image of
# config `container` (built from containers/, README "Software environments") is every job's under
# --software-deployment-method apptainer. Empty (the default): no image.
if config["container"]:

    container: config["container"]

CONFIG_HASH = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def repo_path(path):
    """Paths in the config are relative to the repository (the Snakefile's folder)."""
    return path if os.path.isabs(path) else os.path.join(workflow.basedir, path)


def stage_args(stage, skip=(), **sections):
    """The options of `electra-ds <stage>` for its settings (its module's SETTINGS), from the config, quoted.
    The schema is their one source (electra_ds/common/settings.py); `sections` replace config sections (a model's
    merged pretrain section), `skip` leaves out fields the rule sets per job (e.g. threads)."""
    wanted = {section: tuple(n for n in names if n not in skip)
              for section, names in stages.module(stage).SETTINGS.items()}
    values = {"": config, **{s: config[s] for s in wanted if s}, **sections}
    return " ".join(shlex.quote(word) for word in settings.render(values, wanted))


# ---- the models of this run (the `model` wildcard): electra_ds/pipeline/study.py ---------------------------
with open(settings.SCHEMA_PATH, encoding="utf-8") as _f:
    _SCHEMA = yaml.safe_load(_f)
try:
    MODELS = plan_models(config, _SCHEMA)
except UserError as _exc:
    raise WorkflowError(str(_exc))
PRETRAINED = [name for name, plan in MODELS.items() if plan["source"] == "pretrained"]
PRIMARY_MODEL = next(iter(MODELS))


def track(wildcards):
    """Options tagging a stage's MLflow run: results dir (default store) and wildcards."""
    items = ",".join(f"{k}={v}" for k, v in wildcards.items())
    return f"--results-dir {shlex.quote(R)}" + (f" --wildcards {shlex.quote(items)}" if items else "")


def finetune_data_args(wildcards):
    task = get_task(wildcards.task)
    if task.is_probe:
        return f"--data-dir {shlex.quote(LAYOUT.probes)}"
    if config["finetune"]["glue_dir"]:
        return f"--data-dir {shlex.quote(repo_path(config['finetune']['glue_dir']))}"
    return f"--hub-id {shlex.quote(config['finetune']['hub_id'])}"


def finetune_inputs(wildcards):
    inputs = {"model": LAYOUT.export_dir(wildcards.model)}
    if get_task(wildcards.task).is_probe:
        inputs["probes"] = LAYOUT.probes
    return inputs


for _task in config["finetune"]["tasks"]:
    get_task(_task)  # an unknown task name fails here, before any job runs
if any(get_task(t).is_probe for t in config["finetune"]["tasks"]) and not config["shards"]["heldout_fraction"]:
    raise WorkflowError("config field 'shards.heldout_fraction' is 0, but the probe tasks in finetune.tasks are built "
                        "from held-out documents. Fix: set shards.heldout_fraction (the demo uses 0.25), or fine-tune "
                        "GLUE tasks instead")



wildcard_constraints:
    task=r"[a-z0-9\-]+",
    seed=r"\d+",
    model="|".join(MODELS),

# ---- MLflow: one parent run per pipeline invocation; each job's run is its child ----------------
TRACKING_URI = tracking.tracking_uri_for(R, config["mlflow"]["tracking_uri"])


# One pipeline at a time per results directory (electra_ds/common/lock.py): taken when the pipeline starts (never
# for a dry run), released when it ends; a crashed run's lock is dropped by the OS. Only this (main) process
# holds it; jobs, local or SLURM, run under it.
RESULTS_LOCK = ResultsLock(R, checkout=workflow.basedir)


onstart:
    slurm_preflight()  # with the SLURM profile: a clear error before anything is submitted
    # job logs and benchmarks are written by the shell's `> {log}` and by Snakemake, which follow a link: none
    # may be one (a link planted at a log's name would have the job overwrite what it points at); nor may the
    # local MLflow store, its artifacts and spool, which MLflow and SQLite write through links
    for folder in (LAYOUT.logs, LAYOUT.benchmarks, LAYOUT.mlartifacts, LAYOUT.spool):
        _user_error(refuse_links_under, folder)
    for name in ("", "-journal", "-wal", "-shm"):  # SQLite's database and the files it keeps beside it
        _user_error(refuse_link, LAYOUT.mlflow_db + name)
    # creates R: an unwritable results_dir, or one another pipeline is using, stops here, before any job
    _user_error(RESULTS_LOCK.acquire, warn=logger.warning)
    try:
        _start_pipeline_run()
    except BaseException:
        RESULTS_LOCK.release()
        raise


onsuccess:
    try:
        tracking.end_pipeline_run(TRACKING_URI, os.environ.get(tracking.ENV_PARENT), ok=True)
    finally:
        RESULTS_LOCK.release()


onerror:
    try:
        tracking.end_pipeline_run(TRACKING_URI, os.environ.get(tracking.ENV_PARENT), ok=False)
    finally:
        RESULTS_LOCK.release()


def _start_pipeline_run():
    commit = tracking.git_commit(workflow.basedir)
    # a tracking server (http://) keeps artifacts in its own store (mlflow server --artifacts-destination): None
    parent = tracking.start_pipeline_run(
        TRACKING_URI, config["mlflow"]["experiment"], tracking.artifact_root_for(R, TRACKING_URI),
        run_name=f"pipeline-{CONFIG_HASH}",
        tags={**tracking.standard_tags(f"snakemake {workflow.main_snakefile}", commit),
              "electra_ds.config_hash": CONFIG_HASH, "electra_ds.git_commit": commit,
              "electra_ds.results_dir": os.path.abspath(R)},
        params={"config": json.dumps(config, sort_keys=True)})
    if config["mlflow"]["system_metrics"]:  # MLflow's own switch; the jobs' StageRun reads it
        os.environ[tracking.ENV_SYSTEM_METRICS] = "true"
    # lint "MLFLOW_TRACKING_URI ... not asserted with envvars": set here for the jobs, never required of the user
    os.environ["MLFLOW_TRACKING_URI"] = TRACKING_URI
    os.environ[tracking.ENV_EXPERIMENT] = config["mlflow"]["experiment"]
    os.environ[tracking.ENV_CONFIG_HASH] = CONFIG_HASH
    os.environ[tracking.ENV_GIT_COMMIT] = commit
    if parent:
        os.environ[tracking.ENV_PARENT] = parent


# ---- SLURM: checks before anything is submitted (see profiles/README.md) -------------------------
from electra_ds.pipeline import slurm_preflight as preflight


def _user_error(check, *args, **kwargs):
    try:
        return check(*args, **kwargs)
    except UserError as exc:
        raise WorkflowError(str(exc))


# A world size that does not divide the global batch stops the DAG here, locally and on SLURM.
WORLD_SIZE = _user_error(preflight.check_world_size, config["pretrain"]["global_batch_size"],
                         config["pretrain"]["micro_batch_size"], config["pretrain"]["nodes"],
                         config["pretrain"]["processes_per_node"], config["pretrain"]["gpus_per_node"])


def _gpus_per_node(res):
    if res.get("gres") and "gpu" in str(res.get("gres")):
        return preflight.gres_gpus(str(res.get("gres")))
    if res.get("gpu"):
        return -(-int(res.get("gpu")) // int(res.get("nodes") or 1))
    return 0


def slurm_preflight():
    """Under the SLURM executor: SLURM reachable, partitions exist, GPUs where GPUs are asked for."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name.removeprefix("snakemake-executor-plugin-") != "slurm":
        return
    jobs = [{"rule": job.rule.name, "partition": job.resources.get("slurm_partition"),
             "account": job.resources.get("slurm_account"), "gpus": _gpus_per_node(job.resources)}
            for job in workflow.dag.needrun_jobs()]
    _user_error(preflight.check_slurm_jobs, jobs)

