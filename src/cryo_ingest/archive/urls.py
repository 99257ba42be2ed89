"""Which catalog URLs cryo-ingest opens, and their secrets registered: a module of its own, so that both the
package (which imports the catalog module lazily) and that module use it without an import cycle."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import register_secret_url

SCHEMES = ("sqlite", "postgresql", "postgres", "rest+https", "rest+http")  # and "glue", which is not a URL


def catalog_url(url: str) -> str:
    """A catalog URL pyiceberg can open, its credentials registered for redaction like an RPC key's."""
    url = url.strip()
    scheme = urlsplit(url).scheme.lower() if "://" in url else url.lower()
    if scheme != "glue" and (scheme not in SCHEMES or not url.partition("://")[2]):
        # not echoed: it may hold a password
        raise ValueError("catalog must be sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB, rest+https://HOST/PATH or glue")
    parts = urlsplit(url)
    if parts.username or parts.password or parts.query:
        register_secret_url(url)
    return url
