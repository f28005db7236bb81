"""Push: upload an exported model to the Hugging Face Hub (config ``export.push_to_hub``).

The workflow's ``push_to_hub`` rule runs this on the machine Snakemake runs on (a local rule: the login node of a
cluster, which reaches the internet) once the export exists; by hand::

    electra-ds push --export-dir results/electra-small-owt/export/electra \\
        --push-to-hub '{"repo_id": "me/electra-small-owt", "private": true}'

The discriminator goes to the repo's root (``AutoModelForPreTraining.from_pretrained(repo_id)``), the generator to
``generator/``; the model cards the export wrote are the repos' README. Implemented by
:func:`electra_ds.pretraining.export.push_to_hub` (``HfApi().create_repo`` + ``upload_folder``).
"""

from __future__ import annotations

import logging

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import write_json
from electra_ds.common.settings import add_settings

log = logging.getLogger(__name__)

SETTINGS = {"export": ("push_to_hub",)}


def add_arguments(p) -> None:
    p.add_argument("--export-dir", required=True, help="an export stage's output folder (discriminator/, generator/)")
    p.add_argument("--output", default=None, help="write a JSON record of the push here (the rule's output)")
    add_settings(p, SETTINGS)


def run(args, tracker) -> None:
    from electra_ds.pretraining.export import push_to_hub

    target = args.push_to_hub or {}
    repo_id = target.get("repo_id")
    if not repo_id:
        raise UserError("no repo to push to", field="export.push_to_hub.repo_id",
                        fix='set it, e.g. --push-to-hub \'{"repo_id": "me/my-electra"}\'')
    private = bool(target.get("private", True))
    url = push_to_hub(args.export_dir, repo_id, private)
    log.info("pushed %s to %s (%s)", args.export_dir, url, "private" if private else "public")
    tracker.log_params({"repo_id": repo_id, "private": private})
    tracker.set_tags({"hub_url": url})
    if args.output:
        write_json(args.output, {"repo_id": repo_id, "private": private, "url": url,
                                 "export_dir": str(args.export_dir)})
