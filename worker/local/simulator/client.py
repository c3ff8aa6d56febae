"""A small typed client for the simulator's ``/_sim/`` admin API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx


def most_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most recorded calls within any ``window`` seconds (a window may start at any
    moment, not only on a whole second): what a per-second rate limit is held to.

    Examples:
        >>> most_in_window([0.0, 0.5, 0.99, 1.0, 1.2])   # 0.5 .. 1.2
        4
    """
    ordered = sorted(times)
    best, low = 0, 0
    for high, t in enumerate(ordered):
        while t - ordered[low] >= window:
            low += 1
        best = max(best, high - low + 1)
    return best


class SimulatorError(RuntimeError):
    """The admin API refused a request (bad seed, unknown provider, invalid faults...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"simulator answered {status}: {message}")
        self.status = status


class SimulatorClient:
    """Seed sessions, read their state and the recorded calls, and script faults.

    Example:
        with SimulatorClient(sim.url) as client:
            client.seed("idpass", [{"reference": ref, "status": "opened"}])
            client.set_faults("idpass", fail_next=[503, 503])
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, "/_sim" + path, **kwargs)
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error"))
            except ValueError:
                message = response.text
            raise SimulatorError(response.status_code, message)
        return response.json()

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/health")
        return result

    def seed(
        self,
        provider: str,
        sessions: Iterable[Mapping[str, Any] | str],
        *,
        status: str | None = None,
    ) -> int:
        """Create (or overwrite) sessions; plain strings are references in ``status``
        (default: the provider's first cancellable status). Returns how many were created."""
        entries = [
            {"reference": s, "status": status} if isinstance(s, str) else dict(s)
            for s in sessions
        ]
        result = self._call("POST", "/sessions", json={"provider": provider, "sessions": entries})
        return int(result["created"])

    def session(self, provider: str, reference: str) -> dict[str, Any] | None:
        """The full session record, or None when it does not exist (or was deleted)."""
        try:
            result: dict[str, Any] = self._call(
                "GET", f"/sessions/{quote(provider, safe='')}/{quote(reference, safe='')}"
            )
        except SimulatorError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def status(self, provider: str, reference: str) -> str | None:
        session = self.session(provider, reference)
        return None if session is None else str(session["status"])

    def calls(
        self,
        provider: str | None = None,
        reference: str | None = None,
        *,
        effective: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Recorded provider calls, oldest first."""
        params = {"provider": provider, "reference": reference}
        query = {k: v for k, v in params.items() if v is not None}
        if effective is not None:
            query["effective"] = "true" if effective else "false"
        result: list[dict[str, Any]] = self._call("GET", "/calls", params=query)["calls"]
        return result

    def clear_calls(self) -> None:
        self._call("DELETE", "/calls")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def set_faults(self, provider: str, **faults: Any) -> dict[str, Any]:
        """Replace a provider's faults (``provider="all"`` for every one); no args clears them."""
        result: dict[str, Any] = self._call(
            "PUT", f"/faults/{quote(provider, safe='')}", json=faults
        )
        return result

    def script_reference(
        self, provider: str, reference: str, statuses: list[int], *, sticky: bool = False
    ) -> dict[str, Any]:
        """Make calls for one reference fail: with ``statuses`` in order, or (``sticky``)
        always with ``statuses[0]``. Other references are untouched."""
        current = self.faults(provider)
        if sticky:
            current["stuck_reference"] = {**current["stuck_reference"], reference: statuses[0]}
        else:
            current["fail_reference"] = {**current["fail_reference"], reference: statuses}
        return self.set_faults(provider, **current)

    def keep_active(self, provider: str, reference: str) -> dict[str, Any]:
        """Answer calls for ``reference`` as usual but never change its session: a cancel
        or delete gets its 200 and the session keeps showing as it was."""
        current = self.faults(provider)
        current["keep_active"] = [*current["keep_active"], reference]
        return self.set_faults(provider, **current)

    def faults(self, provider: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/faults/{quote(provider, safe='')}")
        return result

    def configure(
        self, *, autocreate: bool | None = None, max_calls: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if autocreate is not None:
            body["autocreate"] = autocreate
        if max_calls is not None:
            body["max_calls"] = max_calls
        result: dict[str, Any] = self._call("PUT", "/config", json=body)
        return result

    def reset(self) -> None:
        self._call("POST", "/reset")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
