"""Is a web host reachable from here, the way a download would reach it: one TCP connection within a few seconds,
to the host or to the proxy a request to it goes through. The stages that download (a corpus URL, the Hugging Face
Hub) ask this first, so that a node without a network stops at once in one line instead of waiting on retries."""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """The proxy a request to ``host`` goes through (HTTPS_PROXY / HTTP_PROXY unless NO_PROXY lists the host, as
    urllib and requests pick it), or None for a direct connection."""
    from urllib.request import getproxies, proxy_bypass

    proxy = getproxies().get(scheme)
    if not proxy or proxy_bypass(host):
        return None
    url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return (url.hostname, url.port or (443 if url.scheme == "https" else 80)) if url.hostname else None


def reach_error(url: str, timeout: float = 3.0) -> str | None:
    """Why ``url``'s host cannot be reached now ("cannot reach HOST:PORT (<error>)", or "cannot reach the proxy P:Q for
    HOST (<error>)" behind a proxy), or None when a TCP connection opens within ``timeout`` seconds. An http URL
    defaults to port 80, anything else is taken as https (443)."""
    parsed = urlparse(url)
    scheme = "http" if parsed.scheme == "http" else "https"
    host, port = parsed.hostname, parsed.port or (80 if scheme == "http" else 443)
    proxy = proxy_for(scheme, host)
    target, what = (proxy, f"the proxy {proxy[0]}:{proxy[1]} for {host}") if proxy else ((host, port), f"{host}:{port}")
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        return f"cannot reach {what} ({exc})"
    return None
