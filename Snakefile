# electra-ds: raw text -> ELECTRA pretraining -> GLUE (or offline probe) scores.
#
#   corpus -> dedup -> vocab -> shards -> pretrain -> export -> finetune (task x seed) -> evaluate
#                         \-> probes (offline default: tasks from held-out documents) -/
#                                                      export -> linear_probe (frozen features, per model) -/
#
# Each rule is one shell line calling `electra-ds <stage>`; electra_ds/stages.py names the module of each stage.

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from electra_ds.pipeline.config import config_error
from electra_ds.pipeline.constraints import check_config
from electra_ds.common.errors import UserError
from electra_ds.common.settings import SCHEMA_PATH

min_version("9.0")


# The offline default, unless --configfile names another config (a preset is complete on its own,
# it is not merged into the default).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



# The schema ships inside the package (electra_ds/schemas/config.schema.yaml): one copy for the workflow and
# the `electra-ds` stages, installed or not.
if problem := config_error(config, SCHEMA_PATH):
    raise WorkflowError(problem)
validate(config, str(SCHEMA_PATH))  # fills the schema's defaults
# What the schema cannot say (heads dividing the hidden size, results_dir not / or the checkout, ~ expanded, ...):
# electra_ds/pipeline/constraints.py, before any rule or job exists.
try:
    check_config(config, checkout=workflow.basedir)
except UserError as _exc:
    raise WorkflowError(f"config {_exc}")


include: "workflow/rules/common.smk"
include: "workflow/rules/hub.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/linear_probe.smk"
include: "workflow/rules/glue.smk"


# Rules that take seconds, or need the internet, run where Snakemake runs (the login node under SLURM), not as
# cluster jobs: the Hub prefetch (workflow/rules/hub.smk), the upload of an export, the evaluation tables.
localrules:
    prefetch,
    push_to_hub,
    evaluate,


rule all:
    input:
        LAYOUT.evaluate_json,
        LAYOUT.evaluate_md,
        PUSH_FILES,  # export.push_to_hub: the exports uploaded to the Hub (none by default)
    default_target: True
