"""What a config needs beyond its schema: constraints between fields, checked before the first job runs.

The schema (``schemas/config.schema.yaml``) checks each field alone: types, ranges (seeds 0 .. 2**32 - 1, the
range numpy and torch take), choices. What only holds between fields is checked here, each with the field named:

* the model: ``hidden_size`` divisible by ``num_heads`` (Hugging Face's ElectraConfig does not check it when an
  ``embedding_size`` is set: the first step then fails with a matmul shape error), for ``pretrain.model`` and for
  every model of ``models:``; the generator's shape as :func:`electra_ds.pretraining.shape.generator_dims` derives it;
* the data: ``corpus.max_chars`` not below ``corpus.min_chars`` (no document could pass both), ``probes.min_eval``
  not above ``probes.max_eval`` (the probes stage would always refuse), the LSH ``bands`` x ``rows`` within
  ``num_perm``, ``linear_probe.folds`` not above ``linear_probe.train_examples``;
* paths: ``~`` in a path field is expanded (never a literal ``./~`` folder in the checkout); a ``results_dir`` that
  is the filesystem root, the home directory or the checkout itself is refused (every stage writes folders there).

:func:`check_config` runs in the Snakefile after the schema (so ``snakemake -n`` refuses too);
:func:`check_stage_args` runs the same checks for a stage started by hand (``electra-ds <stage>``).
"""

from __future__ import annotations

import os
from pathlib import Path

from electra_ds.common.errors import UserError

SEED_MAX = 2 ** 32 - 1  # numpy's legacy seeding (np.random.seed) takes 0 .. 2**32 - 1


def check_model(model: dict, where: str = "pretrain.model") -> None:
    """The discriminator's and the generator's shapes are ones the attention layers can take (UserError)."""
    from electra_ds.pretraining.shape import ModelShape, generator_dims

    hidden, heads = int(model.get("hidden_size", 256)), int(model.get("num_heads", 4))
    if hidden % heads:
        raise UserError(f"num_heads {heads} does not divide hidden_size {hidden} (each head takes hidden_size / "
                        f"num_heads dimensions)", field=f"{where}.num_heads",
                        fix=f"a divisor of {hidden}, e.g. {_nearest_divisor(hidden, heads)}, or another hidden_size")
    shape = ModelShape(vocab_size=16, **{k: v for k, v in model.items() if k in ModelShape.__dataclass_fields__})
    g_hidden, g_heads, g_inter = generator_dims(shape)
    if g_hidden < 1 or g_inter < 1 or g_hidden % g_heads:
        raise UserError(f"the generator's shape (hidden {g_hidden}, {g_heads} heads) is not a valid one",
                        field=f"{where}.generator_fraction", fix="a larger generator_fraction or hidden_size")


def _nearest_divisor(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), -d))


def check_seed(value, field: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEED_MAX:
        raise UserError(f"seed {value!r} is outside 0 .. 2**32 - 1 (the range numpy and torch take)", field=field,
                        fix="a seed from 0 to 4294967295")


def check_results_dir(path: str, checkout=None, field: str = "results_dir") -> str:
    """``path`` with ``~`` expanded; UserError where every stage would write its folders into /, $HOME or the
    checkout itself."""
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):
        raise UserError(f"{path!r} starts with '~', which cannot be expanded here (no home directory known)",
                        field=field, fix="write the absolute path")
    resolved = Path(expanded).resolve()  # relative to the working directory, as the stages write it
    forbidden = {Path("/"): "the filesystem root", Path.home().resolve(): "your home directory"}
    if checkout is not None:
        forbidden[Path(checkout).resolve()] = "the checkout itself"
    if resolved in forbidden:
        raise UserError(f"{path!r} is {forbidden[resolved]}: every stage writes its folders (corpus/, shards/, "
                        "pretrain/, ...) directly there", field=field, fix="a folder of its own, e.g. results/run1")
    return expanded


def expand_paths(config: dict) -> None:
    """``~`` expanded in place in every path field of the config (the shell does it for a path on a command line;
    for one in a config nothing did, and ``~/x`` became a folder named ``~`` in the checkout)."""
    def expand(section: dict, key: str) -> None:
        if isinstance(section.get(key), str):
            section[key] = os.path.expanduser(section[key])

    for source in config.get("corpus", {}).get("sources", []) or []:
        if isinstance(source.get("paths"), list):
            source["paths"] = [os.path.expanduser(p) if isinstance(p, str) else p for p in source["paths"]]
        expand(source, "cache_dir")
    expand(config.get("pretrain", {}), "ds_config")
    expand(config.get("finetune", {}), "glue_dir")
    expand(config.get("hub", {}), "hf_home")


def check_config(config: dict, checkout=None) -> None:
    """Every cross-field constraint of a schema-valid config (defaults filled); the first problem as a UserError.
    Path fields get ``~`` expanded in place."""
    config["results_dir"] = check_results_dir(config["results_dir"], checkout)
    expand_paths(config)
    check_model(config["pretrain"]["model"], "pretrain.model")
    for name, entry in (config.get("models") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("model"), dict):
            check_model({**config["pretrain"]["model"], **entry["model"]}, f"models.{name}.model")
    check_seed(config["seed"], "seed")
    for i, seed in enumerate(config["finetune"]["seeds"]):
        check_seed(seed, f"finetune.seeds[{i}]")
    check_seed(config["linear_probe"]["seed"], "linear_probe.seed")
    corpus = config["corpus"]
    if corpus["max_chars"] and corpus["max_chars"] < corpus["min_chars"]:
        raise UserError(f"max_chars {corpus['max_chars']} is below min_chars {corpus['min_chars']}: no document "
                        "can be kept", field="corpus.max_chars", fix="0 (no limit) or a value above min_chars")
    probes = config["probes"]
    if probes["min_eval"] > probes["max_eval"]:
        raise UserError(f"min_eval {probes['min_eval']} is above max_eval {probes['max_eval']}: the probes stage "
                        "takes at most max_eval examples and would always refuse", field="probes.min_eval",
                        fix="min_eval <= max_eval")
    dedup = config["dedup"]
    if (dedup["bands"] > 0) != (dedup["rows"] > 0) or dedup["bands"] * dedup["rows"] > dedup["num_perm"]:
        raise UserError(f"bands {dedup['bands']} x rows {dedup['rows']} do not fit num_perm {dedup['num_perm']}",
                        field="dedup.bands", fix="set both (bands * rows <= num_perm) or neither")
    lp = config["linear_probe"]
    if lp["folds"] > lp["train_examples"]:
        raise UserError(f"folds {lp['folds']} is above train_examples {lp['train_examples']}",
                        field="linear_probe.folds", fix="folds <= train_examples")


def check_stage_args(stage: str, args) -> None:
    """The same constraints for a stage run by hand, on the options it was given."""
    if stage == "pretrain" and isinstance(args.model, dict):
        check_model(args.model, "pretrain.model")
    if stage == "pretrain" and args.tokenizer_dir:  # the vocabulary given is the one the shards were made with
        from electra_ds.data.shard_format import check_tokenizer, read_index

        check_tokenizer(read_index(args.shards).get("tokenizer_sha256"), args.tokenizer_dir,
                        f"the shards in {args.shards}")
    if stage == "finetune" and args.seed is not None:
        check_seed(args.seed, "finetune.seeds")
    if stage == "linear-probe" and args.folds > args.train_examples:
        raise UserError(f"folds {args.folds} is above train_examples {args.train_examples}",
                        field="linear_probe.folds", fix="folds <= train_examples")
    if stage == "probes" and args.min_eval > args.max_eval:
        raise UserError(f"min_eval {args.min_eval} is above max_eval {args.max_eval}", field="probes.min_eval",
                        fix="min_eval <= max_eval")
