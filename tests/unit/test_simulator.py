"""The provider simulator: a real loopback server hit with httpx."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from worker.local.simulator import Simulator, SimulatorClient, SimulatorError

IDPASS_AUTH = {"Authorization": "Bearer sim-idpass-token"}
TXCLOUD_AUTH = {"Authorization": "Bearer txc_test_sim-txcloud-key"}
GU1_AUTH = {"Authorization": "Bearer gk_test_sim-gu1-key"}
ONESPAN_AUTH = {"Authorization": "Bearer sim-onespan-jwt"}
JUMIO_AUTH = ("sim-jumio-token", "sim-jumio-secret")
JUMIO_HEADERS = {"User-Agent": "Acme IdvCancel/1.0", "Accept": "application/json"}
REPO_ROOT = Path(__file__).resolve().parents[2]
REF = "fe4291ca-d831-4760-96df-c9cb03b3cd95"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


@pytest.fixture
def admin(sim: Simulator) -> Iterator[SimulatorClient]:
    with SimulatorClient(sim.url) as client:
        client.reset()
        yield client


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def base(sim: Simulator, name: str) -> str:
    return sim.base_urls()[f"IDVCANCEL_{name}"]


def idpass_cancel(sim: Simulator, http: httpx.Client, ref: str = REF) -> httpx.Response:
    return http.post(f"{base(sim, 'IDPASS_BASE_URL')}/idpass/cancel", json={"id": ref},
                     headers=IDPASS_AUTH)


# -- ID Pass ---------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "refunded"),
                         [("new", True), ("opened", True), ("in_progress", False)])
def test_idpass_cancel_refunds_only_before_verification_steps(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client, status: str, refunded: bool
) -> None:
    # Given a pass in a cancellable status
    admin.seed("idpass", [{"reference": REF, "status": status}])
    assert admin.session("idpass", REF)["fee_refundable"] is refunded  # type: ignore[index]
    # When it is cancelled
    response = idpass_cancel(sim, http)
    # Then it is cancelled, the refund flag follows the previous status, the call is effective
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["fee_refunded"] is refunded
    assert len(body["api_reference"]) == 36
    assert admin.status("idpass", REF) == "cancelled"
    [call] = admin.calls("idpass", REF)
    assert call["effective"] is True
    assert call["body"] == {"id": REF}
    assert call["headers"]["authorization"] == "Bearer sim-idpass-token"


@pytest.mark.parametrize("terminal", ["complete", "failed", "expired", "cancelled"])
def test_idpass_terminal_status_is_400_with_current_status(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client, terminal: str
) -> None:
    # Given a pass in a terminal status
    admin.seed("idpass", [{"reference": REF, "status": terminal}])
    # When it is cancelled
    response = idpass_cancel(sim, http)
    # Then 400 names the status, and nothing changed
    assert response.status_code == 400
    assert response.json()["status"] == terminal
    assert "error" in response.json()
    assert admin.calls("idpass", REF)[0]["effective"] is False


def test_idpass_errors_and_details(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    url = base(sim, "IDPASS_BASE_URL")
    # Given one opened pass
    admin.seed("idpass", [{"reference": REF, "status": "opened"}])
    # When calls are made with an unknown id, bad tokens and bad bodies
    unknown = idpass_cancel(sim, http, "00000000-0000-0000-0000-000000000000")
    no_token = http.post(f"{url}/idpass/cancel", json={"id": REF})
    bad_token = http.post(f"{url}/idpass/cancel", json={"id": REF},
                          headers={"Authorization": "Bearer nope"})
    bad_json = http.post(f"{url}/idpass/cancel", content=b"{not json", headers=IDPASS_AUTH)
    no_id = http.post(f"{url}/idpass/cancel", json={}, headers=IDPASS_AUTH)
    details = http.post(f"{url}/idpass/details", json={"id": REF}, headers=IDPASS_AUTH)
    # Then each gets its documented status and the read is not effective
    assert unknown.status_code == 404
    assert no_token.status_code == 401
    assert bad_token.status_code == 401
    assert bad_json.status_code == 400
    assert no_id.status_code == 400
    assert details.status_code == 200
    assert details.json() == {"id": REF, "status": "opened"}
    assert admin.status("idpass", REF) == "opened"
    assert not admin.calls("idpass", effective=True)


# -- TXCloud ---------------------------------------------------------------------------
def test_txcloud_cancel_pending_returns_verification_with_pii(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given a pending verification
    admin.seed("txcloud", ["ver_1"], status="pending")
    url = base(sim, "TXCLOUD_BASE_URL")
    # When it is cancelled (no body) and read back
    response = http.post(f"{url}/identity/verifications/ver_1/cancel", headers=TXCLOUD_AUTH)
    read = http.get(f"{url}/identity/verifications/ver_1", headers=TXCLOUD_AUTH)
    # Then the verification object comes back cancelled, with PII fields
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "ver_1"
    assert body["object"] == "identity.verification"
    assert body["status"] == "cancelled"
    assert 0 <= body["risk_score"] <= 1000
    assert body["extracted_data"]["document_number"] == "AE123456"
    assert body["extracted_data"]["date_of_birth"] == "1990-04-12"
    assert read.json()["status"] == "cancelled"
    assert [c["effective"] for c in admin.calls("txcloud", "ver_1")] == [True, False]


def test_txcloud_error_envelopes(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given a verified verification
    admin.seed("txcloud", [{"reference": "ver_2", "status": "verified"}])
    url = base(sim, "TXCLOUD_BASE_URL") + "/identity/verifications"
    # When it is cancelled, an unknown one is cancelled, and a bad key is used
    not_cancellable = http.post(f"{url}/ver_2/cancel", headers=TXCLOUD_AUTH)
    unknown = http.post(f"{url}/ver_nope/cancel", headers=TXCLOUD_AUTH)
    bad_key = http.post(f"{url}/ver_2/cancel", headers={"Authorization": "Bearer txc_live_x"})
    # Then each answer carries the error envelope
    assert not_cancellable.status_code == 400
    error = not_cancellable.json()["error"]
    assert error["code"] == "verification_not_cancellable"
    assert error["type"] == "validation_error"
    assert error["request_id"].startswith("req_")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    assert bad_key.status_code == 401
    assert bad_key.json()["error"]["type"] == "authentication_error"


def test_txcloud_rate_limit_and_server_error(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given a pending verification and a scripted 429 then 500
    admin.seed("txcloud", ["ver_3"])
    admin.set_faults("txcloud", fail_next=[429, 500], retry_after=7)
    url = f"{base(sim, 'TXCLOUD_BASE_URL')}/identity/verifications/ver_3/cancel"
    # When it is cancelled three times
    limited, broken, ok = (http.post(url, headers=TXCLOUD_AUTH) for _ in range(3))
    # Then 429 has Retry-After in header and body, 500 is api_error, the third succeeds
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.json()["retry_after"] == 7
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert broken.status_code == 500
    assert broken.json()["error"]["type"] == "api_error"
    assert ok.status_code == 200
    assert [c["fault"] for c in admin.calls("txcloud")] == ["fail_next", "fail_next", None]


# -- gu1 -------------------------------------------------------------------------------
def gu1_cancel(sim: Simulator, http: httpx.Client, ref: str, reason: str) -> httpx.Response:
    url = f"{base(sim, 'GU1_BASE_URL')}/api/kyc/validations/{ref}/cancel"
    return http.request("DELETE", url, json={"reason": reason}, headers=GU1_AUTH)


@pytest.mark.parametrize("status", ["pending", "in_progress", "in_review"])
def test_gu1_delete_with_body_cancels(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client, status: str
) -> None:
    # Given a cancellable validation
    admin.seed("gu1", [{"reference": "val_1", "status": status}])
    # When a DELETE with a JSON reason is sent
    response = gu1_cancel(sim, http, "val_1", "customer abandoned the application")
    # Then the validation is cancelled, not current, and the body reached the server
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["isCurrent"] is False
    [call] = admin.calls("gu1", "val_1")
    assert call["method"] == "DELETE"
    assert call["body"] == {"reason": "customer abandoned the application"}
    read = http.get(f"{base(sim, 'GU1_BASE_URL')}/api/kyc/validations/val_1", headers=GU1_AUTH)
    assert read.json()["status"] == "cancelled"


def test_gu1_errors(sim: Simulator, admin: SimulatorClient, http: httpx.Client) -> None:
    # Given an approved and a pending validation
    admin.seed("gu1", [{"reference": "val_a", "status": "approved"}, {"reference": "val_p"}])
    # When cancelling with a short reason, an approved one, an unknown one, no body
    short = gu1_cancel(sim, http, "val_p", " abc ")
    approved = gu1_cancel(sim, http, "val_a", "duplicate validation")
    unknown = gu1_cancel(sim, http, "val_x", "duplicate validation")
    url = f"{base(sim, 'GU1_BASE_URL')}/api/kyc/validations/val_p/cancel"
    no_body = http.delete(url, headers=GU1_AUTH)
    # Then 400 invalid reason, 400 invalid status, 404, 400
    assert short.status_code == 400
    assert "invalid reason" in short.json()["error"]
    assert approved.status_code == 400
    assert "invalid status" in approved.json()["error"]
    assert unknown.status_code == 404
    assert no_body.status_code == 400
    assert admin.status("gu1", "val_p") == "pending"


# -- Jumio -----------------------------------------------------------------------------
def test_jumio_delete_removes_the_scan(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given a DONE scan in the EU
    admin.seed("jumio", [{"reference": REF, "status": "DONE", "product": "scans", "region": "eu"}])
    url = f"{base(sim, 'JUMIO_BASE_URL_EU')}/api/netverify/v2/scans/{REF}"
    # When it is read, deleted, then read and deleted again
    before = http.get(url, auth=JUMIO_AUTH, headers=JUMIO_HEADERS)
    deleted = http.delete(url, auth=JUMIO_AUTH, headers=JUMIO_HEADERS)
    after = http.get(url, auth=JUMIO_AUTH, headers=JUMIO_HEADERS)
    again = http.delete(url, auth=JUMIO_AUTH, headers=JUMIO_HEADERS)
    # Then 200 (empty body) once, 404 afterwards, one effective call
    assert before.json()["status"] == "DONE"
    assert deleted.status_code == 200
    assert deleted.content == b""
    assert after.status_code == 404
    assert again.status_code == 404
    assert admin.status("jumio", REF) is None
    assert len(admin.calls("jumio", REF, effective=True)) == 1


@pytest.mark.parametrize("agent", [None, "", "python-httpx/0.28.1", "curl/8.5.0",
                                   "python-requests/2.32"])
def test_jumio_requires_a_business_user_agent(
    sim: Simulator, admin: SimulatorClient, agent: str | None
) -> None:
    # Given a scan, and a client whose User-Agent is missing or generic
    admin.seed("jumio", [REF])
    url = f"{base(sim, 'JUMIO_BASE_URL_US')}/api/netverify/v2/scans/{REF}"
    with httpx.Client(timeout=10) as client:
        if agent is None:
            del client.headers["User-Agent"]
        else:
            client.headers["User-Agent"] = agent
        # When the scan is deleted
        response = client.delete(url, auth=JUMIO_AUTH, headers={"Accept": "application/json"})
    # Then 403 and the scan is still there
    assert response.status_code == 403
    assert response.json() == {"title": "Forbidden", "status": 403}
    assert admin.status("jumio", REF) == "PENDING"


def test_jumio_errors(sim: Simulator, admin: SimulatorClient, http: httpx.Client) -> None:
    # Given a document in SGP and a scan in the US
    admin.seed("jumio", [{"reference": "doc-1", "product": "documents", "region": "sgp"},
                         {"reference": "scan-1", "product": "scans", "region": "us"}])
    api = "/api/netverify/v2"

    def delete(base_name: str, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("auth", JUMIO_AUTH)
        return http.delete(base(sim, base_name) + api + path, headers=JUMIO_HEADERS, **kw)

    # When deleting with bad credentials, a long ref, on wrong bases, and a 429
    bad_auth = delete("JUMIO_BASE_URL_US", "/scans/scan-1", auth=("x", "y"))
    too_long = delete("JUMIO_BASE_URL_US", "/scans/" + "a" * 37)
    wrong_product_base = delete("JUMIO_BASE_URL_SGP", "/documents/doc-1")
    wrong_region = delete("JUMIO_BASE_URL_EU", "/scans/scan-1")
    admin.set_faults("jumio", fail_next=[429])
    limited = delete("JUMIO_RETRIEVAL_BASE_URL_SGP", "/documents/doc-1")
    ok = delete("JUMIO_RETRIEVAL_BASE_URL_SGP", "/documents/doc-1")
    # Then 401, 400, 404, 404, 429 with Jumio's body, and finally 200
    assert bad_auth.status_code == 401
    assert too_long.status_code == 400
    assert wrong_product_base.status_code == 404
    assert wrong_region.status_code == 404
    assert limited.status_code == 429
    assert limited.json() == {"title": "Too Many Requests", "status": 429,
                              "detail": "Request limit exceeded"}
    assert ok.status_code == 200
    assert admin.status("jumio", "scan-1") == "PENDING"


# -- OneSpan ---------------------------------------------------------------------------
def test_onespan_cancel_and_errors(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given a new and a completed transaction
    admin.seed("onespan", [{"reference": "tx-new", "status": "new"},
                           {"reference": "tx-done", "status": "completed"}])
    url = base(sim, "ONESPAN_BASE_URL") + "/api/transaction"
    cancel = {"trigger": "transaction_cancelled"}
    # When cancelling each, an unknown one, with a wrong trigger and with a bad token
    wrong_trigger = http.put(f"{url}/tx-new/event", json={"trigger": "x"}, headers=ONESPAN_AUTH)
    ok = http.put(f"{url}/tx-new/event", json=cancel, headers=ONESPAN_AUTH)
    done = http.put(f"{url}/tx-done/event", json=cancel, headers=ONESPAN_AUTH)
    unknown = http.put(f"{url}/tx-x/event", json=cancel, headers=ONESPAN_AUTH)
    bad_token = http.put(f"{url}/tx-new/event", json=cancel,
                         headers={"Authorization": "Bearer no"})
    read = http.get(f"{url}/tx-new", headers=ONESPAN_AUTH)
    # Then the whole transaction comes back cancelled; errors carry a message
    assert wrong_trigger.status_code == 400
    assert ok.status_code == 200
    assert ok.json()["id"] == "tx-new"
    assert ok.json()["status"] == "cancelled"
    assert done.status_code == 400
    assert "message" in done.json()
    assert unknown.status_code == 404
    assert bad_token.status_code == 401
    assert read.json()["status"] == "cancelled"


def test_onespan_mark_for_erasure_partial_success(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given two transactions, one already marked for erasure
    admin.seed("onespan", [{"reference": "tx-1", "status": "cancelled"},
                           {"reference": "tx-2", "status": "marked_for_erasure"}])
    url = base(sim, "ONESPAN_BASE_URL") + "/api/transactions/mark-for-erasure"
    headers = {**ONESPAN_AUTH, "X-Tenant": "sim-tenant"}
    body = {"grace_period": 0, "transaction_ids": ["tx-1", "tx-2", "tx-3"]}
    # When all three (one unknown) are marked
    response = http.post(url, json=body, headers=headers)
    # Then each gets its own result and only tx-1 changed
    assert response.status_code == 200
    assert response.json()["results"] == [
        {"transaction_id": "tx-1", "marking_event": "Transaction Erase Request - Accepted"},
        {"transaction_id": "tx-2", "error": "Transaction already marked for erasure"},
        {"transaction_id": "tx-3", "error": "Transaction not found"},
    ]
    assert admin.status("onespan", "tx-1") == "marked_for_erasure"
    assert [c["reference"] for c in admin.calls("onespan", effective=True)] == ["tx-1"]
    # And the one HTTP request is recorded once per transaction, under one request id
    calls = admin.calls("onespan")
    assert [c["reference"] for c in calls] == ["tx-1", "tx-2", "tx-3"]
    assert len({c["request_id"] for c in calls}) == 1


@pytest.mark.parametrize(
    ("tenant", "body", "expected"),
    [
        (None, {"grace_period": 0, "transaction_ids": ["tx-1"]}, 403),
        ("other", {"grace_period": 0, "transaction_ids": ["tx-1"]}, 403),
        ("sim-tenant", {"grace_period": 0, "transaction_ids": []}, 400),
        ("sim-tenant", {"grace_period": 0, "transaction_ids": [f"t{i}" for i in range(501)]}, 400),
        ("sim-tenant", {"grace_period": -1, "transaction_ids": ["tx-1"]}, 400),
    ],
)
def test_onespan_mark_for_erasure_rejections(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client,
    *, tenant: str | None, body: dict[str, Any], expected: int,
) -> None:
    # Given a transaction
    admin.seed("onespan", ["tx-1"])
    headers = dict(ONESPAN_AUTH) | ({"X-Tenant": tenant} if tenant else {})
    # When an erasure request has a bad tenant or a bad body
    url = base(sim, "ONESPAN_BASE_URL") + "/api/transactions/mark-for-erasure"
    response = http.post(url, json=body, headers=headers)
    # Then it is refused and nothing is marked
    assert response.status_code == expected
    assert admin.status("onespan", "tx-1") == "new"


# -- faults ----------------------------------------------------------------------------
def test_fail_next_sequence_then_success(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given three scripted 503s
    admin.seed("idpass", [REF])
    admin.set_faults("idpass", fail_next=[503, 503, 503])
    # When the pass is cancelled four times
    statuses = [idpass_cancel(sim, http).status_code for _ in range(4)]
    # Then three 503s, then success; faulted calls are recorded but not effective
    assert statuses == [503, 503, 503, 200]
    calls = admin.calls("idpass", REF)
    assert [c["effective"] for c in calls] == [False, False, False, True]
    assert admin.faults("idpass")["fail_next"] == []


def test_retry_after_header_on_429(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given one scripted 429 with Retry-After 3
    admin.seed("idpass", [REF])
    admin.set_faults("idpass", fail_next=[429], retry_after=3)
    # When the pass is cancelled
    response = idpass_cancel(sim, http)
    # Then 429 carries Retry-After and the pass is untouched
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert admin.status("idpass", REF) == "new"


def test_down_and_error_rate_spare_the_admin_api(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given idpass down and gu1 failing every call with 502
    admin.seed("idpass", [REF])
    admin.set_faults("idpass", down=True)
    admin.set_faults("gu1", error_rate=1.0, error_statuses=[502])
    # When calls are made
    down = idpass_cancel(sim, http)
    flaky = gu1_cancel(sim, http, "val_1", "abandoned application")
    # Then both fail, and the admin API still answers
    assert down.status_code == 503
    assert flaky.status_code == 502
    assert admin.health()["ok"] is True
    assert admin.status("idpass", REF) == "new"


def test_bad_fault_settings_are_refused(admin: SimulatorClient) -> None:
    # Given / When faults with an unknown key or out-of-range value / Then 400
    with pytest.raises(SimulatorError):
        admin.set_faults("idpass", bogus=1)
    with pytest.raises(SimulatorError):
        admin.set_faults("idpass", error_rate=2)
    with pytest.raises(SimulatorError):
        admin.set_faults("nowhere", down=True)


@pytest.mark.parametrize("mode", ["504", "close"])
def test_timeout_next_hangs_then_answers_504_or_closes(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client, mode: str
) -> None:
    # Given one hanging call of 0.3 s that is applied before the hang
    admin.seed("idpass", [REF])
    admin.set_faults("idpass", timeout_next=1, hang_seconds=0.3, timeout_mode=mode,
                     apply_on_timeout=True)
    started = time.monotonic()
    # When the pass is cancelled
    if mode == "504":
        assert idpass_cancel(sim, http).status_code == 504
    else:
        with pytest.raises(httpx.TransportError):
            idpass_cancel(sim, http)
    # Then the answer came after the hang, yet the cancel took effect
    assert time.monotonic() - started >= 0.3
    assert admin.status("idpass", REF) == "cancelled"
    assert idpass_cancel(sim, http).status_code == 400


def test_latency_does_not_serialize_requests(
    sim: Simulator, admin: SimulatorClient
) -> None:
    # Given 200 ms latency on TXCloud and 20 pending verifications
    refs = [f"ver_{i}" for i in range(20)]
    admin.seed("txcloud", refs)
    admin.set_faults("txcloud", latency_ms=200)
    url = base(sim, "TXCLOUD_BASE_URL") + "/identity/verifications/{}/cancel"
    limits = httpx.Limits(max_connections=50)
    with httpx.Client(timeout=10, limits=limits) as client, ThreadPoolExecutor(20) as pool:
        started = time.monotonic()
        # When all are cancelled in parallel
        codes = list(pool.map(lambda r: client.post(url.format(r), headers=TXCLOUD_AUTH)
                              .status_code, refs))
        elapsed = time.monotonic() - started
    # Then all succeed, together in well under the serial 4 s
    assert codes == [200] * 20
    assert 0.2 <= elapsed < 1.5
    assert admin.stats()["providers"]["txcloud"]["effective"] == 20


# -- admin -----------------------------------------------------------------------------
def test_autocreate_and_reset(sim: Simulator, admin: SimulatorClient, http: httpx.Client) -> None:
    # Given autocreate switched on at run time
    admin.configure(autocreate=True)
    jumio = f"{base(sim, 'JUMIO_BASE_URL_US')}/api/netverify/v2/scans/auto-1"
    # When unknown references are cancelled twice, and a Jumio scan deleted twice
    first, second = idpass_cancel(sim, http, "auto"), idpass_cancel(sim, http, "auto")
    deletes = [http.delete(jumio, auth=JUMIO_AUTH, headers=JUMIO_HEADERS) for _ in range(2)]
    # Then the first acts on a fresh session, the repeat sees its terminal state
    assert first.json()["fee_refunded"] is True
    assert second.status_code == 400
    assert [d.status_code for d in deletes] == [200, 404]
    # And reset forgets everything, including autocreate
    admin.reset()
    assert admin.calls() == []
    assert admin.status("idpass", "auto") is None
    assert idpass_cancel(sim, http, "auto").status_code == 404


def test_seed_validation(admin: SimulatorClient) -> None:
    # Given / When seeding an unknown status, provider or jumio region / Then 400 or 404
    with pytest.raises(SimulatorError):
        admin.seed("idpass", [{"reference": "x", "status": "bogus"}])
    with pytest.raises(SimulatorError):
        admin.seed("nope", ["x"])
    with pytest.raises(SimulatorError):
        admin.seed("jumio", [{"reference": "x", "region": "mars"}])
    assert admin.seed("jumio", [{"reference": "x", "status": "done"}]) == 1
    assert admin.status("jumio", "x") == "DONE"


def test_server_writes_nothing_to_stdout_or_stderr(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given a session
    admin.seed("idpass", [REF])
    # When calls with secrets and bodies go through, including a faulted one
    admin.set_faults("idpass", fail_next=[500])
    idpass_cancel(sim, http)
    idpass_cancel(sim, http)
    # Then nothing was printed
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_module_entry_point_prints_url_and_env_then_stops_on_sigterm() -> None:
    # Given the simulator started as a module on a free port
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.local.simulator", "--port", "0", "--autocreate",
         "--latency-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        timer = threading.Timer(10, proc.kill)
        timer.start()
        line = proc.stdout.readline()
        timer.cancel()
        info = json.loads(line)
        # When it is asked for its health, then sent SIGTERM
        assert httpx.get(info["url"] + "/_sim/health").json()["autocreate"] is True
        assert info["env"]["IDVCANCEL_IDPASS_TOKEN"] == "sim-idpass-token"
        assert info["env"]["IDVCANCEL_JUMIO_RETRIEVAL_BASE_URL_EU"].endswith("/retrieval-eu")
        proc.send_signal(signal.SIGTERM)
        # Then it exits cleanly
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stats_flag_references_changed_twice_and_max_calls_trims(
    sim: Simulator, admin: SimulatorClient, http: httpx.Client
) -> None:
    # Given a pass cancelled, re-seeded and cancelled again (a duplicate side effect)
    admin.seed("idpass", [REF])
    idpass_cancel(sim, http)
    admin.seed("idpass", [REF])
    idpass_cancel(sim, http)
    # When the stats are read and the call log is capped at one entry
    stats = admin.stats()
    admin.configure(max_calls=1)
    # Then the duplicate is reported and only the newest call is kept
    assert stats["duplicate_effective"] == [{"provider": "idpass", "reference": REF, "count": 2}]
    assert stats["providers"]["idpass"]["effective"] == 2
    assert [c["seq"] for c in admin.calls()] == [2]


def test_env_form_prints_every_setting_a_worker_needs_as_shell_exports() -> None:
    # Given the simulator started as a module with --env
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.local.simulator", "--port", "0", "--env"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        timer = threading.Timer(10, proc.kill)
        timer.start()
        comment = proc.stdout.readline()
        with Simulator() as local:  # as many lines as URLs and credentials, + the User-Agent
            count = len(local.env()) + 1
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(count)]
        timer.cancel()
        # When a shell evals those lines and prints its environment
        assert all(line.startswith("export IDVCANCEL_") for line in lines), lines
        script = "\n".join(lines)
        shown = subprocess.run(["sh", "-c", script + "\nenv"], capture_output=True,
                               text=True, check=True, timeout=10).stdout
        env = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        # Then every base URL, every credential and the Jumio User-Agent are set
        url = comment.split("listens on ")[1].split(";")[0]
        assert env["IDVCANCEL_IDPASS_BASE_URL"] == url + "/idpass-api"
        assert env["IDVCANCEL_JUMIO_RETRIEVAL_BASE_URL_SGP"] == url + "/jumio/retrieval-sgp"
        assert env["IDVCANCEL_JUMIO_USER_AGENT"] == "idv-cancel local (simulator)"
        for name in ("IDVCANCEL_IDPASS_TOKEN", "IDVCANCEL_TXCLOUD_API_KEY",
                     "IDVCANCEL_GU1_API_KEY", "IDVCANCEL_JUMIO_API_TOKEN",
                     "IDVCANCEL_JUMIO_API_SECRET", "IDVCANCEL_ONESPAN_TOKEN",
                     "IDVCANCEL_ONESPAN_TENANT", "IDVCANCEL_ONESPAN_BASE_URL"):
            assert env.get(name), name
    finally:
        proc.kill()
        proc.wait()
