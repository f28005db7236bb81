"""``electra-ds <stage> ...``: one subcommand per pipeline stage.

Each stage module provides ``add_arguments(parser)`` and ``run(args, tracker)``. The command line adds
the options every stage shares (logging, MLflow tags), opens the stage's tracker
(:func:`electra_ds.tracking.open_tracker`: its MLflow run) and turns a
:class:`~electra_ds.common.errors.UserError` into one clear line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from electra_ds.common.errors import UserError
from electra_ds.common.settings import check_settings
from electra_ds.pipeline.constraints import check_stage_args
from electra_ds.stages import STAGES, module as stage_module
from electra_ds.tracking import open_tracker


def _wildcards(text: str) -> dict:
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electra-ds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for stage, spec in STAGES.items():
        module = stage_module(stage)
        p = sub.add_parser(stage, help=spec.help, description=spec.help,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        if spec.tracked:
            common = p.add_argument_group("tracking and logging")
            common.add_argument("--results-dir", default=".",
                                help="results directory (the default MLflow store is <results-dir>/mlflow.db)")
            common.add_argument("--tracking-uri", default=None,
                                help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in results)")
            common.add_argument("--rule", default=None, help="rule name tagged on the MLflow run (default: stage)")
            common.add_argument("--wildcards", default="", type=_wildcards,
                                help="comma-separated key=value wildcards tagged on the MLflow run")
            common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bars in job logs
    args = build_parser().parse_args(argv)
    stage = args.stage
    if not STAGES[stage].tracked:  # a tool: its own entry point, no MLflow run
        return getattr(args._module, STAGES[stage].entry)(args)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s {stage} %(levelname)s %(message)s", datefmt="%H:%M:%S")

    rank0 = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0
    try:
        check_settings(args, getattr(args._module, "SETTINGS", {}))  # ranges and choices, from the schema
        check_stage_args(stage, args)  # what holds between fields (heads | hidden size, seed range, ...)
        with open_tracker(args.rule or stage, results_dir=args.results_dir, tracking_uri=args.tracking_uri,
                          wildcards=args.wildcards, enabled=rank0) as tracker:
            args._module.run(args, tracker)
    except UserError as exc:
        if not getattr(exc, "quiet", False):  # quiet: another rank of the same run reports it (trainer.raise_together)
            print(f"electra-ds {stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
