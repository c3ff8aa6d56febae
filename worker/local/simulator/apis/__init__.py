"""The five simulated provider APIs and the credentials they accept."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from worker.local.simulator.apis.base import ApiError, Outcome, ProviderAPI
from worker.local.simulator.apis.gu1 import Gu1API
from worker.local.simulator.apis.idpass import IdPassAPI
from worker.local.simulator.apis.jumio import JumioAPI
from worker.local.simulator.apis.onespan import OneSpanAPI
from worker.local.simulator.apis.txcloud import TxCloudAPI
from worker.local.simulator.store import Store

__all__ = ["PROVIDERS", "ApiError", "Credentials", "Outcome", "ProviderAPI", "build_apis"]

PROVIDERS = ("idpass", "txcloud", "gu1", "jumio", "onespan")


@dataclass(frozen=True)
class Credentials:
    """The credentials the simulator accepts (fake test values by default)."""

    idpass: str = "sim-idpass-token"
    txcloud: str = "txc_test_sim-txcloud-key"
    gu1: str = "gk_test_sim-gu1-key"
    jumio_token: str = "sim-jumio-token"  # noqa: S105 - a fake test credential
    jumio_secret: str = "sim-jumio-secret"  # noqa: S105 - a fake test credential
    onespan: str = "sim-onespan-jwt"
    onespan_tenant: str = "sim-tenant"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Credentials:
        """From ``{"idpass": tok, ..., "jumio": (token, secret), "onespan_tenant": t}``."""
        values: dict[str, str] = {}
        known = {f.name for f in fields(cls)}
        for key, value in (data or {}).items():
            if key == "jumio" and isinstance(value, tuple | list) and len(value) == 2:
                values["jumio_token"], values["jumio_secret"] = str(value[0]), str(value[1])
            elif key in known and isinstance(value, str):
                values[key] = value
            else:
                raise ValueError(f"unsupported credential entry {key!r}")
        return cls(**values)

    def env(self) -> dict[str, str]:
        """The ``IDVCANCEL_*`` credential variables for a worker talking to the simulator."""
        return {
            "IDVCANCEL_IDPASS_TOKEN": self.idpass,
            "IDVCANCEL_TXCLOUD_API_KEY": self.txcloud,
            "IDVCANCEL_GU1_API_KEY": self.gu1,
            "IDVCANCEL_JUMIO_API_TOKEN": self.jumio_token,
            "IDVCANCEL_JUMIO_API_SECRET": self.jumio_secret,
            "IDVCANCEL_ONESPAN_TOKEN": self.onespan,
            "IDVCANCEL_ONESPAN_TENANT": self.onespan_tenant,
        }


def build_apis(store: Store, credentials: Credentials) -> dict[str, ProviderAPI]:
    """One API object per provider name, in ``PROVIDERS`` order."""
    apis: list[ProviderAPI] = [
        IdPassAPI(store, credentials.idpass),
        TxCloudAPI(store, credentials.txcloud),
        Gu1API(store, credentials.gu1),
        JumioAPI(store, credentials.jumio_token, credentials.jumio_secret),
        OneSpanAPI(store, credentials.onespan, credentials.onespan_tenant),
    ]
    return {api.name: api for api in apis}
