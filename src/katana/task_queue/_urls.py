"""Broker URLs as they may be shown: with the password masked."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["masked_url"]


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
