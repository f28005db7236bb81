"""The models of one pipeline run: ``models:`` in the config, planned before any job starts.

Each entry of ``models`` is one model of the DAG (the ``model`` wildcard): it shares the data
stages and the fine-tuning tasks and seeds, and differs from the ``pretrain:`` section only in the fields it
names. ``source: scratch`` is the same architecture with random weights (no pretraining), the
baseline that tells whether pretraining taught the encoder anything. ``finetune:`` in an entry changes that
model's fine-tuning recipe (learning rate, layer decay, epochs, warmup, weight decay, batch size): models that
start from different weights need not share their best learning rate (docs/study.md measures it)::

    models:
      electra: {}                       # pretrain: as configured
      mlm: {objective: mlm}             # BERT-style masked LM on the same backbone
      scratch: {source: scratch, finetune: {learning_rate: 3.0e-4}}   # random initialisation

With ``pretrain.equal_flops: true`` every pretrained model gets the pretraining FLOPs of the first
one (its ``max_steps`` sets the budget): the others' ``max_steps`` are derived with
:func:`electra_ds.pretraining.shape.pretraining_flops`, the one formula the summaries print.
"""

from __future__ import annotations

import copy
import re

import jsonschema

from electra_ds.common.errors import UserError
from electra_ds.finetuning.finetune import MODEL_RECIPE_FIELDS
from electra_ds.pretraining.shape import ModelShape, check_uniform_generator, pretraining_flops

SOURCES = ("pretrained", "scratch")
# Fields that shape the job rather than the model: one value for every model (set them in pretrain:).
JOB_FIELDS = ("nodes", "processes_per_node", "gpus_per_node", "threads", "mem_mb", "runtime", "launcher", "device",
              "equal_flops")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def plan_models(config: dict, schema: dict) -> dict:
    """``{name: {"source", "pretrain": merged section, "finetune": merged section, "flops": pretraining FLOPs (0 for
    scratch)}}``."""
    pretrain_schema = schema["properties"]["pretrain"]
    fields = pretrain_schema["properties"]
    plans = {}
    for name, entry in config["models"].items():
        if not _NAME.match(name):
            raise UserError(f"model name {name!r} may only hold letters, digits, '_' and '-'", field=f"models.{name}")
        entry = dict(entry or {})
        source = entry.pop("source", "pretrained")
        finetune = _finetune_recipe(name, entry.pop("finetune", None), config["finetune"],
                                    schema["properties"]["finetune"])
        for key in entry:
            if key not in fields:
                raise UserError(f"{key!r} is not a pretrain field", field=f"models.{name}.{key}",
                                fix=f"use one of: {', '.join(sorted(set(fields) - set(JOB_FIELDS)))}")
            if key in JOB_FIELDS:
                raise UserError(f"{key!r} sets the job, not the model, and is the same for every model",
                                field=f"models.{name}.{key}", fix=f"set it once as pretrain.{key}")
        merged = copy.deepcopy(config["pretrain"])
        for key, value in entry.items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) and key == "model" else value
        try:
            jsonschema.validate(merged, pretrain_schema)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            raise UserError(exc.message, field=f"models.{name}.{where}") from None
        try:
            check_uniform_generator(merged["uniform_generator"], merged["objective"], merged["embedding_sharing"])
        except ValueError as exc:
            raise UserError(str(exc), field=f"models.{name}.uniform_generator") from None
        plans[name] = {"source": source, "pretrain": merged, "finetune": finetune, "flops": 0.0}

    pretrained = [n for n, p in plans.items() if p["source"] == "pretrained"]
    seq_len, vocab = config["shards"]["max_seq_len"], config["vocab"]["vocab_size"]

    def flops(p: dict, steps: int) -> float:
        shape = ModelShape(vocab_size=vocab, **p["model"])
        return pretraining_flops(shape, seq_len, steps, p["global_batch_size"], p["objective"], p["mask_prob"],
                                 p["uniform_generator"])

    budget = None
    for name in pretrained:
        p = plans[name]["pretrain"]
        if config["pretrain"]["equal_flops"]:
            if budget is None:
                budget = flops(p, p["max_steps"])
            else:
                p["max_steps"] = max(1, round(budget / flops(p, 1)))
        plans[name]["flops"] = flops(p, p["max_steps"])
    return plans


def _finetune_recipe(name: str, overrides, base: dict, finetune_schema: dict) -> dict:
    """The finetune section with the model's own recipe fields (``models.<name>.finetune``, a mapping: the schema
    checks that before planning) in place."""
    if overrides is None:
        return dict(base)
    where = f"models.{name}.finetune"
    for key, value in overrides.items():
        if key not in MODEL_RECIPE_FIELDS:
            raise UserError(f"{key!r} is not a fine-tuning field a model may change", field=f"{where}.{key}",
                            fix=f"use one of: {', '.join(MODEL_RECIPE_FIELDS)} (tasks, seeds, data and the job are "
                                "set once in finetune:)")
        try:
            jsonschema.validate(value, finetune_schema["properties"][key])
        except jsonschema.ValidationError as exc:
            raise UserError(exc.message, field=f"{where}.{key}") from None
    return {**base, **overrides}
