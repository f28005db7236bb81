#!/usr/bin/env bash
# Snakemake runs this once, inside the new conda environment of electra-ds.yaml, from the directory snakemake runs
# in: the electra-ds checkout (where the Snakefile is). It installs this checkout's package, whose dependencies the
# environment file already holds.
set -euo pipefail
if ! grep -q '^name = "electra-ds"' pyproject.toml 2>/dev/null; then
    echo "electra-ds.post-deploy.sh: run snakemake from the electra-ds checkout (no electra-ds pyproject.toml in $PWD)" >&2
    exit 2
fi
python -m pip install --no-deps --editable .
