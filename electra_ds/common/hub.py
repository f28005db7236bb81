"""The Hugging Face Hub seen from a job: whether it runs offline and where the datasets cache is, for the messages
of the stages that read Hub datasets (corpus, GLUE). ``electra-ds prefetch`` (pipeline.prefetch) fills that cache."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

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


def hub_endpoint() -> tuple[str, str, int]:
    """The Hub as ``huggingface_hub`` and ``datasets`` reach it, (scheme, host, port): ``HF_ENDPOINT`` (a mirror or a
    private Hub) when set, else https://huggingface.co:443."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co")
    scheme = "http" if url.scheme == "http" else "https"
    return scheme, url.hostname or "huggingface.co", url.port or (80 if scheme == "http" else 443)


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """The proxy a request to ``host`` goes through (HTTPS_PROXY / HTTP_PROXY unless NO_PROXY lists the host, as
    requests, which huggingface_hub uses, picks it), or None for a direct connection."""
    from urllib.request import getproxies, proxy_bypass

    proxy = getproxies().get(scheme)
    if not proxy or proxy_bypass(host):
        return None
    url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return (url.hostname, url.port or (443 if url.scheme == "https" else 80)) if url.hostname else None


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached now ("cannot reach huggingface.co:443 (<error>)"), within ``timeout`` seconds, or
    None when a TCP connection opens: to the Hub, or to the proxy that requests to it go through (a cluster's login
    node often has only that). Every stage that downloads from the Hub asks this first, so that no stage waits on a
    network that is not there (prefetch, the corpus's Hub source, GLUE from the Hub)."""
    scheme, host, port = hub_endpoint()
    proxy = _proxy_for(scheme, host)
    target, what = (proxy, f"the proxy {proxy[0]}:{proxy[1]} for {host}") if proxy else ((host, port), f"{host}:{port}")
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        return f"cannot reach {what} ({exc})"
    return None
