"""DSN helpers for tests."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def with_database(dsn: str, name: str) -> str:
    """The same server, another database (works for socket and TCP DSNs)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
