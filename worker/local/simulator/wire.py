"""The simulator's own request and response values, independent of ``http.server``."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SimRequest:
    """One HTTP request as the provider APIs and the admin API see it.

    ``headers`` keys are lower-case. ``sub_path`` is the path below the provider's
    mount prefix and ``mount`` names the mount (for Jumio: ``us``, ``retrieval-eu``...).
    """

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""
    sub_path: str = ""
    mount: str = ""
    json_ok: bool = field(init=False, default=False)
    json_body: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.raw.strip():
            try:
                self.json_body = json.loads(self.raw)
                self.json_ok = True
            except ValueError:
                self.json_body = None

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def body_for_record(self) -> Any:
        """Parsed JSON when the body is JSON, the raw text otherwise, None when empty."""
        if self.json_ok:
            return self.json_body
        return self.text if self.raw else None

    def json_object(self) -> dict[str, Any] | None:
        """The body when it is a JSON object, else None."""
        return self.json_body if isinstance(self.json_body, dict) else None

    def bearer(self) -> str | None:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def basic(self) -> tuple[str, str] | None:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None


@dataclass
class SimResponse:
    """An answer: a JSON body (None for an empty body), extra headers, or a dropped connection."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented credential with the configured one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
