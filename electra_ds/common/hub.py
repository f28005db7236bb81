"""The Hugging Face Hub seen from a job: whether it runs offline and where the datasets cache is, for the messages
of the stages that read Hub datasets (corpus, GLUE). ``electra-ds prefetch`` (pipeline.prefetch) fills that cache."""

from __future__ import annotations

import os

from electra_ds.common.net import reach_error

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# What a job that found nothing in the cache tells the user (corpus.py, glue.py).
PREFETCH_FIX = ("run `electra-ds prefetch --configfile <your config>` (or the workflow, whose prefetch rule does "
                "it) on a machine with internet, with the same HF_HOME as the jobs")


def offline_reason() -> str | None:
    """Which offline variable is set ("HF_HUB_OFFLINE is set"), or None."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    return None


def datasets_cache() -> str:
    """Where ``datasets`` keeps prepared datasets in this environment (for messages)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.environ["HF_DATASETS_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.join(home, "datasets")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub (``HF_ENDPOINT``, a mirror or a private Hub, when set) cannot be reached now ("cannot reach
    huggingface.co:443 (<error>)"), within ``timeout`` seconds, or None when a TCP connection opens: to the Hub, or
    to the proxy that requests to it go through (a cluster's login node often has only that). Every stage that
    downloads from the Hub asks this first, so that no stage waits on a network that is not there (prefetch, the
    corpus's Hub source, GLUE from the Hub)."""
    return reach_error(os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co", timeout=timeout)
