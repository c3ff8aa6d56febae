"""Where provider calls go out and what they trust, from the standard environment
variables, as curl and requests read them: an egress proxy (``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``ALL_PROXY``, with ``NO_PROXY``) and the CA certificates TLS is verified
against (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, certifi's bundle when neither is set, as
httpx does). ``worker.providers.transport`` reads them once, when it is built.
"""

from __future__ import annotations

import base64
import os
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import certifi

#: ``NO_PROXY`` matching as urllib.request does it, against the proxies read once (the
#: function is public in CPython, only missing from typeshed).
_bypass: Callable[[str, dict[str, str]], bool] = (
    urllib.request.proxy_bypass_environment)  # type: ignore[attr-defined]


def tls_context() -> ssl.SSLContext:
    """Verifying TLS context: ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else certifi's."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    if capath:
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


@dataclass(frozen=True)
class Proxy:
    """An egress proxy from ``HTTPS_PROXY`` and friends.

    Examples:
        >>> proxy = Proxy.parse("http://svc%40corp:s3cret@egress:3128", "HTTPS_PROXY")
        >>> proxy.host, proxy.port, proxy.headers["Proxy-Authorization"]
        ('egress', 3128, 'Basic c3ZjQGNvcnA6czNjcmV0')
        >>> Proxy.parse("socks5://egress:1080", "HTTPS_PROXY")
        Traceback (most recent call last):
        ValueError: HTTPS_PROXY is not an http:// proxy URL (socks5://...)
    """

    host: str
    port: int
    headers: dict[str, str]

    @classmethod
    def parse(cls, url: str, variable: str) -> Proxy:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        try:
            port = parts.port or 80
        except ValueError:
            port = 0
        if parts.scheme != "http" or not parts.hostname or not port:
            raise ValueError(f"{variable} is not an http:// proxy URL ({parts.scheme}://...)")
        headers = {}
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Proxy-Authorization"] = f"Basic {base64.b64encode(user.encode()).decode()}"
        return cls(parts.hostname, port, headers)


class Egress:
    """The proxies of the environment when built, and which one each route takes.
    ValueError naming the variable for a proxy URL that cannot be used."""

    def __init__(self) -> None:
        # urllib.request's reading of the variables: either case, lower case winning.
        self._urls = urllib.request.getproxies_environment()
        self._proxies = {scheme: Proxy.parse(url, f"{scheme.upper()}_PROXY")
                         for scheme in ("http", "https", "all")
                         if (url := self._urls.get(scheme))}
        self._routes: dict[tuple[str, str, int], Proxy | None] = {}

    def proxy_for(self, route: tuple[str, str, int]) -> Proxy | None:
        """The proxy a (scheme, host, port) goes through, None when direct (cached)."""
        try:
            return self._routes[route]
        except KeyError:
            scheme, host, port = route
            proxy = self._proxies.get(scheme) or self._proxies.get("all")
            if proxy and _bypass(f"{host}:{port}", self._urls):
                proxy = None
            self._routes[route] = proxy
            return proxy
