"""Prefetch: download what a run reads from the Hugging Face Hub, once, on a machine with internet.

Compute nodes of most clusters cannot reach the internet. With Hub sources in the config (a corpus source of
``type: hf``, GLUE tasks fine-tuned from ``finetune.hub_id`` rather than a local ``glue_dir``), this command,
run on the login node (the workflow's ``prefetch`` rule is a local rule), loads each of them once through
``datasets.load_dataset`` into the Hugging Face cache (``$HF_HOME``, or the config's ``hub.hf_home``). The corpus
and fine-tuning jobs then run with ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1`` and read that cache: ``datasets``
falls back to the cached copy of a Hub dataset when offline.

``electra-ds prefetch --configfile config/presets/electra-small.yaml`` fetches what that config needs;
``--marker`` writes a JSON record of what was fetched (the rule's output). Nothing to fetch is not an error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.hub import datasets_cache, hub_unreachable, offline_reason

log = logging.getLogger(__name__)

# -- what a config needs ----------------------------------------------------------------------------------

def plan(config: dict) -> list[dict]:
    """The Hub datasets a (validated, defaults filled) config reads: one item per corpus source that reads the Hub
    (its class's ``hub_dataset``: type ``hf``) and per GLUE task fine-tuned from the Hub (MNLI too when
    RTE/MRPC/STS-B start from it), each with the config field it comes from."""
    from electra_ds.data.sources import open_source
    from electra_ds.finetuning.glue import MNLI_INIT_TASKS, get_task

    items: list[dict] = []
    for i, src in enumerate(config.get("corpus", {}).get("sources") or []):
        field = f"corpus.sources[{i}]"
        dataset = open_source(src, field).hub_dataset()
        if dataset:
            items.append({"kind": "corpus", **dataset, "field": field})
    ft = config.get("finetune", {})
    if not ft.get("glue_dir"):
        tasks = [get_task(t) for t in ft.get("tasks") or []]
        names = [t.hub_config for t in tasks if not t.is_probe and t.hub_config]
        if ft.get("init_from_mnli") and set(MNLI_INIT_TASKS) & set(names):
            names.append("mnli")  # the MNLI job runs for them even when mnli is not in tasks
        hub_id = ft.get("hub_id") or "nyu-mll/glue"
        for name in dict.fromkeys(names):
            items.append({"kind": "glue", "id": hub_id, "config": name, "split": None, "revision": None,
                          "field": "finetune.hub_id"})
    return items


def load_config(path) -> dict:
    """A config file checked against the schema, with the defaults of the sections :func:`plan` reads."""
    import yaml

    from electra_ds.common import settings
    from electra_ds.pipeline.config import config_error

    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read the config ({exc})", path=path) from None
    problem = config_error(config, settings.SCHEMA_PATH)
    if problem:
        raise UserError(problem, path=path)
    out = dict(config)
    for section in ("corpus", "finetune", "hub"):
        out[section] = {**settings.default(settings.node("", section)), **(config.get(section) or {})}
    return out


# -- fetching ---------------------------------------------------------------------------------------------

def describe(item: dict) -> str:
    config = f" config {item['config']}" if item.get("config") else ""
    split = f" split {item['split']}" if item.get("split") else ""
    revision = f" revision {item['revision']}" if item.get("revision") else ""
    return f"{item['id']}{config}{split}{revision}"


def fetch(item: dict) -> dict:
    """Download and prepare one dataset into the ``datasets`` cache; return what was fetched (rows per split).
    A failure is a UserError naming the dataset, its config field and the fix."""
    import datasets

    try:
        if item["kind"] == "corpus":
            ds = datasets.load_dataset(item["id"], item.get("config"), split=item["split"],
                                       revision=item.get("revision"))
            rows = {item["split"]: len(ds)}
        else:  # every split of the task: fine-tuning reads train, dev and test
            ds = datasets.load_dataset(item["id"], item["config"])
            rows = {name: len(split) for name, split in ds.items()}
    except Exception as exc:  # network, authentication, a wrong name: all the user's environment or config
        raise UserError(f"prefetch of {describe(item)} from the Hugging Face Hub failed ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})", field=item["field"],
                        fix="run prefetch where huggingface.co is reachable (the login node), log in for gated "
                            "datasets (`hf auth login` or HF_TOKEN), and check the dataset's name, config, split "
                            "and revision") from None
    return {**item, "rows": rows}


def prefetch(items: list[dict]) -> list[dict]:
    if items:
        what = describe(items[0]) + (f" and {len(items) - 1} more" if len(items) > 1 else "")
        reason = offline_reason()
        if reason:
            raise UserError(f"{reason}, but prefetch downloads {what}", field=items[0]["field"],
                            fix="run prefetch without HF_HUB_OFFLINE/HF_DATASETS_OFFLINE, on a machine with internet")
        unreachable = hub_unreachable()  # a few seconds, not datasets' retries on a dead network
        if unreachable:
            raise UserError(f"{unreachable}, and prefetch downloads {what}", field=items[0]["field"],
                            fix="run prefetch where the Hub is reachable (the login node; HF_ENDPOINT names a mirror)")
    done = []
    for i, item in enumerate(items, 1):
        start = time.time()
        log.info("prefetch %d/%d: %s into %s", i, len(items), describe(item), datasets_cache())
        done.append(fetch(item))
        log.info("prefetch %d/%d: %s done in %.0f s (%s rows)", i, len(items), describe(item), time.time() - start,
                 done[-1]["rows"])
    return done


# -- the command ------------------------------------------------------------------------------------------

def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--configfile", help="a pipeline config (config/config.yaml or a preset): fetch what it reads")
    src.add_argument("--datasets", help="JSON list of datasets to fetch (the workflow's rule passes its plan)")
    p.add_argument("--hf-home", default=None,
                   help="Hugging Face cache folder (sets HF_HOME; default: the config's hub.hf_home, else $HF_HOME, "
                        "else ~/.cache/huggingface)")
    p.add_argument("--marker", default=None, help="write a JSON record of what was fetched here (atomically)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run_prefetch(args) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s prefetch %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.configfile:
            config = load_config(args.configfile)
            items = plan(config)
            hf_home = args.hf_home or config["hub"].get("hf_home")
        else:
            try:
                items = json.loads(args.datasets)
            except json.JSONDecodeError as exc:
                raise UserError(f"--datasets is not valid JSON ({exc})", field="--datasets") from None
            hf_home = args.hf_home
        if hf_home:
            os.environ["HF_HOME"] = str(Path(hf_home).expanduser().absolute())  # before datasets is imported
        done = prefetch(items)
    except UserError as exc:
        print(f"electra-ds prefetch: error: {exc}", file=sys.stderr)
        return 2
    if not items:
        log.info("nothing to prefetch: the config reads no Hugging Face Hub dataset")
    if args.marker:
        from electra_ds.common.fileio import write_json

        write_json(args.marker, {"datasets": done, "hf_home": os.environ.get("HF_HOME"),
                                 "datasets_cache": datasets_cache(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return 0
