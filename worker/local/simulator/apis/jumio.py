"""Jumio Netverify v2 delete API: scans, authentications (netverify hosts), documents (retrieval).

Six mounts, one per host: ``/jumio/{us,eu,sgp}`` and ``/jumio/retrieval-{us,eu,sgp}``.
A session lives on exactly one of them (its product and region).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from worker.local.simulator.apis.base import SEGMENT, ApiError, Outcome, ProviderAPI, match
from worker.local.simulator.store import Session, Store
from worker.local.simulator.wire import SimRequest, SimResponse, same_secret

REGIONS = ("us", "eu", "sgp")
PRODUCTS = ("scans", "authentications", "documents")
RETRIEVAL_PRODUCTS = ("documents",)
PRODUCT_ALIASES = {
    "scan": "scans", "id_verification": "scans", "idv": "scans", "netverify": "scans",
    "authentication": "authentications", "auth": "authentications",
    "document": "documents", "document_verification": "documents", "dv": "documents",
}
REGION_ALIASES = {"lon": "eu", "emea": "eu", "amer": "us", "apac": "sgp", "sg": "sgp"}
PATH = rf"/api/netverify/v2/({'|'.join(PRODUCTS)})/{SEGMENT}"
MAX_REFERENCE = 36
GENERIC_AGENTS = ("python-httpx", "python-requests", "curl", "python-urllib", "wget")
ACCEPTABLE = ("application/json", "*/*", "application/*")


class JumioAPI(ProviderAPI):
    name = "jumio"
    statuses = ("PENDING", "DONE", "FAILED")
    cancellable = ("PENDING", "DONE", "FAILED")
    mounts: ClassVar[Mapping[str, str]] = {
        f"/jumio/{prefix}{region}": f"{prefix}{region}"
        for prefix in ("", "retrieval-") for region in REGIONS
    }

    def __init__(self, store: Store, token: str, secret: str) -> None:
        super().__init__(store)
        self.token = token
        self.secret = secret

    def references(self, req: SimRequest) -> list[str]:
        found = match(PATH, req.sub_path)
        return [found[1]] if found else []

    def route(self, req: SimRequest) -> Outcome:
        found = match(PATH, req.sub_path)
        retrieval = req.mount.startswith("retrieval-")
        if found is None or (found[0] in RETRIEVAL_PRODUCTS) != retrieval:
            raise ApiError(404, "Not Found")
        if req.method not in ("GET", "DELETE"):
            raise ApiError(405, "Method Not Allowed")
        self.check_headers(req)
        product, reference = found
        if len(reference) > MAX_REFERENCE:
            raise ApiError(400, f"transactionReference longer than {MAX_REFERENCE} characters")
        region = req.mount.removeprefix("retrieval-")
        session = self.lookup(reference, product, region)
        if session.product != product or session.region != region:
            raise ApiError(404, "Not Found")
        if req.method == "GET":
            body = {"timestamp": "2024-01-02T03:04:05.000Z", "scanReference": reference,
                    "status": session.status}
            return Outcome(SimResponse(200, body))
        self.store.remove(self.name, reference)
        return Outcome(SimResponse(200, None), frozenset({reference}))

    def check_headers(self, req: SimRequest) -> None:
        agent = req.headers.get("user-agent", "").strip()
        if not agent or agent.lower().startswith(GENERIC_AGENTS):
            raise ApiError(403, "Forbidden")
        credentials = req.basic()
        if credentials is None or not (
            same_secret(credentials[0], self.token) and same_secret(credentials[1], self.secret)
        ):
            raise ApiError(401, "Unauthorized")
        accept = req.headers.get("accept", "*/*")
        if not any(kind in accept for kind in ACCEPTABLE):
            raise ApiError(406, "Not Acceptable")

    def error_body(
        self, status: int, message: str, retry_after: int | None, extra: Mapping[str, Any]
    ) -> Any:
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = message
        if status == 429:
            return {"title": "Too Many Requests", "status": 429, "detail": "Request limit exceeded"}
        body: dict[str, Any] = {"title": title, "status": status}
        if message != title:
            body["detail"] = message
        return body

    def normalize_status(self, status: str) -> str:
        return super().normalize_status(status.upper())

    def make_session(self, entry: Mapping[str, Any]) -> Session:
        session = super().make_session(entry)
        product = str(entry.get("product") or "scans").lower()
        region = str(entry.get("region") or "us").lower()
        session.product = PRODUCT_ALIASES.get(product, product)
        session.region = REGION_ALIASES.get(region, region)
        if session.product not in PRODUCTS:
            raise ValueError(f"unknown jumio product {product!r}; expected one of {PRODUCTS}")
        if session.region not in REGIONS:
            raise ValueError(f"unknown jumio region {region!r}; expected one of {REGIONS}")
        return session
