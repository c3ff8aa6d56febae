"""OneSpan: its rules table, options, its cancel 400 and 200s, each transaction's erasure
result, and the batching of deletes (httpx MockTransport).

What every adapter does alike (the request, 401/403/404/429/5xx, transport failures,
missing credentials, the status read) is in test_provider_contract.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from config.settings import Settings
from worker.contract import ActionName, CancelRequest, Outcome
from worker.errors import RuleViolation
from worker.providers import errors
from worker.providers.base import ProviderAnswer
from worker.providers.onespan import (
    MARKED,
    RULES,
    OneSpanAdapter,
    mark_for_erasure,
    parse_erasure_results,
)
from worker.providers.rules import check

REF = "968c1ceb-7508-4a92-aef7-3661b01ffcab"
OTHER = "6cca2f64-2781-49fc-85de-f80361581969"
CANCEL = RULES.actions["cancel"]
DELETE = RULES.actions["delete"]
ACCEPTED = "Transaction Erase Request - Accepted"
Handler = Callable[[httpx.Request], httpx.Response]


def request(**change: object) -> CancelRequest:
    base = {"request_id": "r", "provider": "onespan", "action": "cancel", "reference": REF,
            "requested_by": "t"}
    return CancelRequest.model_validate({**base, **change})


def adapter(handler: Handler, tenant: str = "acme") -> OneSpanAdapter:
    config = Settings(onespan_base_url="http://onespan.test/prefix",
                      onespan_token="jwt", onespan_tenant=tenant)
    return OneSpanAdapter(config, transport=httpx.MockTransport(handler))


def recorder(status: int = 200, **response: Any) -> tuple[list[httpx.Request], Handler]:
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(status, **response)

    return seen, handle


def erasure_answer(*entries: dict[str, str], status: int = 200) -> Handler:
    return recorder(status, json={"message": "m", "transactions": list(entries)})[1]


# -- rules ---------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "cancellable", "deletable"), [
    ("new", True, False),
    ("post_processing", True, False),
    ("workflow_in_progress", True, False),
    ("completed", False, True),
    ("cancelled", False, True),
    ("expired", False, True),
    ("error", False, True),
    ("workflow_completed", False, True),
    ("autosigned", False, True),
    ("vaulted", False, True),
])
def test_rules_table(status: str, cancellable: bool, deletable: bool) -> None:
    assert status in RULES.statuses
    assert RULES.is_actionable("cancel", status) is cancellable
    assert RULES.is_actionable("delete", status) is deletable


def test_rules_table_shape() -> None:
    assert len(RULES.statuses) == 10
    assert CANCEL.outcome is Outcome.CANCELLED and CANCEL.done_status == "cancelled"
    assert DELETE.outcome is Outcome.DELETED and DELETE.done_status == MARKED
    assert check(request(), RULES) is CANCEL
    assert check(request(action="delete"), RULES) is DELETE


# -- options ---------------------------------------------------------------------------
@pytest.mark.parametrize(("action", "options", "field"), [
    ("delete", {"grace_period": -1}, "options.grace_period"),
    ("delete", {"grace_period": "7"}, "options.grace_period"),
    ("delete", {"grace_period": True}, "options.grace_period"),
    ("delete", {"grace_period": 1.5}, "options.grace_period"),
    ("delete", {"grace": 7}, "options.grace"),
    ("cancel", {"grace_period": 7}, "options.grace_period"),
])
def test_bad_options_are_refused_before_any_call(
    action: ActionName, options: dict[str, object], field: str
) -> None:
    seen, handle = recorder()
    onespan = adapter(handle)
    # When the rules table is checked (pipeline and producer) / Then it names the field
    with pytest.raises(RuleViolation, match=field) as info:
        check(request(action=action, options=options), RULES)
    assert info.value.code == "invalid_options"
    # And execute, should it be reached anyway, rejects without a call
    with pytest.raises(errors.ProviderRejected, match=field) as rejected:
        onespan.execute(request(action=action, options=options), RULES.actions[action])
    assert rejected.value.code == "invalid_options"
    assert seen == []


def test_good_options_pass_validation() -> None:
    """Given a cancel without options and deletes with none, 0 or 30 days of grace
    Then the table admits each."""
    assert check(request(), RULES) is CANCEL
    for options in ({}, {"grace_period": 0}, {"grace_period": 30}):
        assert check(request(action="delete", options=options), RULES) is DELETE


# -- cancel ------------------------------------------------------------------------------
def test_cancel_needs_no_tenant_and_sends_none() -> None:
    # Given no tenant configured / When a cancel is executed / Then it is made, without
    seen, handle = recorder(200, json={"status": "cancelled"})
    assert adapter(handle, tenant="").execute(request(), CANCEL).outcome is Outcome.CANCELLED
    (sent,) = seen
    assert "x-tenant" not in sent.headers


def test_cancel_answered_200_with_another_status_is_rejected() -> None:
    _, handle = recorder(200, json={"id": REF, "status": "completed"})
    with pytest.raises(errors.ProviderRejected) as info:
        adapter(handle).execute(request(), CANCEL)
    assert info.value.code == "unexpected_status" and info.value.provider_status == "completed"


@pytest.mark.parametrize(("body", "provider_status"), [
    ({"message": "Transaction in status completed cannot be cancelled"}, "completed"),
    ({"message": "bad", "status": "expired"}, "expired"),
    ({"message": "bad", "status": 400}, None),
    ({"message": "Invalid status surprise"}, None),
    ({}, None),
])
def test_cancel_400_is_not_cancellable(body: dict[str, object], provider_status: str | None
                                       ) -> None:
    # Given a 400 to a well-formed cancel / Then the state forbids it, status kept if named
    _, handle = recorder(400, json=body)
    with pytest.raises(errors.NotCancellable) as info:
        adapter(handle).execute(request(), CANCEL)
    assert info.value.http_status == 400
    assert info.value.provider_status == provider_status


# -- delete (mark for erasure) -------------------------------------------------------------
def test_delete_sends_the_requested_grace_period() -> None:
    # Given a provider that accepts the erasure
    seen, handle = recorder(
        200, json={"transactions": [{"transaction_id": REF, "marking_event": ACCEPTED}]})
    # When a delete with a 14-day grace period is executed
    answer = adapter(handle).execute(
        request(action="delete", options={"grace_period": 14}), DELETE)
    # Then the erasure call carries that grace period for the one id
    assert json.loads(seen[0].content) == {"grace_period": 14, "transaction_ids": [REF]}
    assert answer == ProviderAnswer(Outcome.DELETED, 200, MARKED)


@pytest.mark.parametrize("entry", [
    {"marking_event": ACCEPTED, "message": "The transaction has been accepted ..."},
    {"error": "Transaction already marked for erasure"},
    {"marking_event": "Transaction Erase Request - Already marked for erasure"},
])
def test_accepted_or_already_marked_is_deleted(entry: dict[str, str]) -> None:
    handle = erasure_answer({"transaction_id": REF, **entry}, status=202)
    answer = adapter(handle).execute(request(action="delete"), DELETE)
    assert answer == ProviderAnswer(Outcome.DELETED, 202, MARKED)


@pytest.mark.parametrize(("entry", "error_type", "code"), [
    ({"error": "Transaction not found"}, errors.NotFound, "not_found"),
    ({"marking_event": "Transaction Erase Request - Transaction Not Found",
      "message": "This transaction doesn't exist, therefore cannot be marked for erasure."},
     errors.NotFound, "not_found"),
    ({"marking_event": "Transaction Erase Request - Transaction currently active",
      "message": "Failed to mark for erasure, the transaction was active"},
     errors.ProviderRejected, "transaction_active"),
    ({"marking_event": "Transaction Erase Request - ID field error", "message": ""},
     errors.ProviderRejected, "invalid_reference"),
    ({"marking_event": "Transaction Erase Request - Fail", "message": "Storage locked"},
     errors.ProviderRejected, "erasure_refused"),
    ({"marking_event": "Transaction Erase Request - Not accepted"},
     errors.ProviderRejected, "erasure_refused"),
    ({"marking_event": "Transaction Erase Request - Transaction inactive"},
     errors.ProviderRejected, "erasure_refused"),
    ({}, errors.ProviderRejected, "erasure_refused"),
])
def test_refused_erasures_are_classified(
    entry: dict[str, str], error_type: type[errors.ProviderError], code: str
) -> None:
    handle = erasure_answer({"transaction_id": REF, **entry}, status=207)
    with pytest.raises(error_type) as info:
        adapter(handle).execute(request(action="delete"), DELETE)
    assert info.value.code == code and info.value.http_status == 207
    for text in entry.values():
        assert text in info.value.message


def test_erasure_answer_without_our_id_is_transient() -> None:
    # Given an answer about another transaction only (marking again is safe)
    handle = erasure_answer({"transaction_id": OTHER, "marking_event": ACCEPTED})
    with pytest.raises(errors.TransientError) as info:
        adapter(handle).execute(request(action="delete"), DELETE)
    assert info.value.code == "erasure_result_missing"


def test_erasure_404_is_the_endpoints_not_the_transactions() -> None:
    # Given a 404 to the mark-for-erasure call itself (a wrong base URL, not an unknown id)
    _, handle = recorder(404, json={"message": "no such route"})
    # When a delete is executed / Then it is rejected for a person, not "not found"
    with pytest.raises(errors.ProviderRejected) as info:
        adapter(handle).execute(request(action="delete"), DELETE)
    assert type(info.value) is errors.ProviderRejected
    assert info.value.code == "endpoint_not_found" and info.value.http_status == 404


def test_mark_for_erasure_reads_each_transactions_result() -> None:
    # Given a batch where the provider accepts some transactions and not others
    ids = [REF, OTHER, "gone", "busy", "silent", REF]
    seen, handle = recorder(207, json={
        "message": "Some of the transactions could be marked for erasure others couldn't.",
        "transactions": [
            {"transaction_id": REF, "marking_event": ACCEPTED},
            {"transaction_id": OTHER, "error": "Transaction already marked for erasure"},
            {"transaction_id": "gone",
             "marking_event": "Transaction Erase Request - Transaction Not Found"},
            {"transaction_id": "busy",
             "marking_event": "Transaction Erase Request - Transaction currently active"},
            "garbage",
        ],
    })
    # When they are marked in one call
    results = mark_for_erasure(adapter(handle), ids, grace_period=25)
    # Then one call carried each distinct id once, and each id has its own result
    (sent,) = seen
    assert json.loads(sent.content) == {
        "grace_period": 25, "transaction_ids": [REF, OTHER, "gone", "busy", "silent"]}
    assert list(results) == [REF, OTHER, "gone", "busy", "silent"]
    assert results[REF] == ProviderAnswer(Outcome.DELETED, 207, MARKED)
    assert results[OTHER] == ProviderAnswer(Outcome.DELETED, 207, MARKED)
    assert isinstance(results["gone"], errors.NotFound)
    assert isinstance(results["busy"], errors.ProviderRejected)
    assert results["busy"].code == "transaction_active"
    assert isinstance(results["silent"], errors.TransientError)


def test_simulator_shaped_results_are_read_too() -> None:
    results = parse_erasure_results({"results": [
        {"transaction_id": REF, "marking_event": ACCEPTED},
        {"transaction_id": OTHER, "error": "Transaction not found"},
    ]}, [REF, OTHER], 200)
    assert results[REF] == ProviderAnswer(Outcome.DELETED, 200, MARKED)
    assert isinstance(results[OTHER], errors.NotFound)


@pytest.mark.parametrize(("ids", "grace"), [([], 0), ([f"t{i}" for i in range(501)], 0),
                                              ([REF], -1)])
def test_mark_for_erasure_refuses_bad_batches_without_a_call(ids: list[str], grace: int
                                                             ) -> None:
    seen, handle = recorder()
    with pytest.raises(ValueError, match=r"grace_period|1 to 500"):
        mark_for_erasure(adapter(handle), ids, grace)
    assert seen == []


# -- batched deletes -----------------------------------------------------------------------
def batching_adapter(handler: Handler, window_ms: float) -> OneSpanAdapter:
    config = Settings(onespan_base_url="http://onespan.test/prefix", onespan_token="jwt",
                      onespan_tenant="acme", onespan_batch_window_ms=window_ms)
    return OneSpanAdapter(config, transport=httpx.MockTransport(handler))


def erasing_provider() -> tuple[list[dict[str, Any]], Handler]:
    """A provider answering each id of each erasure call: ids starting with "gone" are
    not found, the others accepted. Records each call's JSON body."""
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def handle(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        with lock:
            bodies.append(body)
        return httpx.Response(200, json={"results": [
            {"transaction_id": tid, "error": "Transaction not found"} if tid.startswith("gone")
            else {"transaction_id": tid, "marking_event": ACCEPTED}
            for tid in body["transaction_ids"]
        ]})

    return bodies, handle


def delete_together(
    onespan: OneSpanAdapter, references: list[str], grace: Callable[[int], int] = lambda _: 0
) -> list[ProviderAnswer | BaseException]:
    """Execute one delete per reference, each from its own thread, released at once."""
    outcomes: list[ProviderAnswer | BaseException] = [RuntimeError("never ran")] * len(
        references)
    barrier = threading.Barrier(len(references))

    def run(index: int, reference: str) -> None:
        delete = request(request_id=f"r-{index}", action="delete", reference=reference,
                         options={"grace_period": grace(index)})
        barrier.wait()
        try:
            outcomes[index] = onespan.execute(delete, DELETE)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i, ref)) for i, ref in enumerate(references)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a delete was left waiting"
    return outcomes


def test_concurrent_deletes_share_one_erasure_call() -> None:
    # Given 30 deletes on 30 threads, a third of them for unknown transactions
    bodies, handle = erasing_provider()
    onespan = batching_adapter(handle, window_ms=300)
    references = [f"gone-{i}" if i % 3 == 0 else f"tx-{i}" for i in range(30)]
    # When they are executed at once
    outcomes = delete_together(onespan, references)
    # Then one HTTP call carried all 30 ids
    (body,) = bodies
    assert body["grace_period"] == 0
    assert sorted(body["transaction_ids"]) == sorted(references)
    # And each delete got its own transaction's result
    for reference, outcome in zip(references, outcomes, strict=True):
        if reference.startswith("gone"):
            assert isinstance(outcome, errors.NotFound) and outcome.http_status == 200
        else:
            assert outcome == ProviderAnswer(Outcome.DELETED, 200, MARKED)


def test_more_than_500_concurrent_deletes_are_split_into_calls_of_at_most_500() -> None:
    # Given 510 deletes at once
    bodies, handle = erasing_provider()
    onespan = batching_adapter(handle, window_ms=1000)
    references = [f"tx-{i}" for i in range(510)]
    # When they are executed / Then two calls, of 500 ids and of 10, and every one deleted
    outcomes = delete_together(onespan, references)
    assert sorted(len(body["transaction_ids"]) for body in bodies) == [10, 500]
    sent = [tid for body in bodies for tid in body["transaction_ids"]]
    assert sorted(sent) == sorted(references)
    assert all(o == ProviderAnswer(Outcome.DELETED, 200, MARKED) for o in outcomes)


def test_deletes_with_other_grace_periods_go_in_other_calls() -> None:
    bodies, handle = erasing_provider()
    onespan = batching_adapter(handle, window_ms=300)
    references = [f"tx-{i}" for i in range(10)]
    # When deletes with grace periods 0 and 14 arrive together
    outcomes = delete_together(onespan, references, grace=lambda i: 14 if i % 2 else 0)
    # Then one call per grace period, each carrying its own deletes' ids
    by_grace = {body["grace_period"]: sorted(body["transaction_ids"]) for body in bodies}
    assert by_grace == {0: sorted(references[0::2]), 14: sorted(references[1::2])}
    assert all(isinstance(o, ProviderAnswer) for o in outcomes)


def test_two_deletes_of_one_transaction_both_get_its_result() -> None:
    # Given two request ids for one transaction, and another transaction
    bodies, handle = erasing_provider()
    onespan = batching_adapter(handle, window_ms=300)
    # When they are executed together / Then the id is sent once and both are deleted
    outcomes = delete_together(onespan, [REF, REF, OTHER])
    (body,) = bodies
    assert sorted(body["transaction_ids"]) == sorted([REF, OTHER])
    assert outcomes == [ProviderAnswer(Outcome.DELETED, 200, MARKED)] * 3


@pytest.mark.parametrize(("status", "error_type"), [
    (401, errors.Unauthorized), (429, errors.RateLimited), (503, errors.ProviderServerError),
])
def test_a_failed_erasure_call_is_every_batched_deletes_error(
    status: int, error_type: type[errors.ProviderError]
) -> None:
    # Given a provider failing the call as a whole
    seen, handle = recorder(status, json={"message": "nope"})
    onespan = batching_adapter(handle, window_ms=300)
    # When 12 deletes share one call / Then each raises the call's error as its own
    outcomes = delete_together(onespan, [f"tx-{i}" for i in range(12)])
    assert len(seen) == 1
    for outcome in outcomes:
        assert isinstance(outcome, error_type)
        assert outcome.http_status == status and outcome.message == "nope"


class Interrupted(BaseException):
    """Stops the thread making the call without an answer (not an Exception)."""


def test_deletes_whose_batch_got_no_answer_are_retried() -> None:
    # Given a call that never answers: the thread making it is stopped
    def stop(_: httpx.Request) -> httpx.Response:
        raise Interrupted

    onespan = batching_adapter(stop, window_ms=300)
    # When 5 deletes share that call
    outcomes = delete_together(onespan, [f"tx-{i}" for i in range(5)])
    # Then no delete is left waiting: the others get a transient error (retried)
    transient = [o for o in outcomes if isinstance(o, errors.TransientError)]
    assert len(transient) == 4
    assert all(o.code == "erasure_batch_failed" for o in transient)
    assert sum(isinstance(o, Interrupted) for o in outcomes) == 1


def test_window_zero_sends_one_call_per_delete() -> None:
    bodies, handle = erasing_provider()
    onespan = batching_adapter(handle, window_ms=0)
    references = [f"tx-{i}" for i in range(8)]
    outcomes = delete_together(onespan, references)
    assert sorted(body["transaction_ids"] for body in bodies) == sorted([r] for r in references)
    assert all(o == ProviderAnswer(Outcome.DELETED, 200, MARKED) for o in outcomes)


def test_concurrent_cancels_are_not_batched() -> None:
    seen, handle = recorder(200, json={"status": "cancelled"})
    onespan = batching_adapter(handle, window_ms=300)
    barrier = threading.Barrier(6)
    answers: list[ProviderAnswer] = []

    def cancel(index: int) -> None:
        barrier.wait()
        answers.append(onespan.execute(request(reference=f"tx-{index}"), CANCEL))

    threads = [threading.Thread(target=cancel, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(seen) == 6 and len(answers) == 6
    assert sorted(str(req.url).split("/")[-2] for req in seen) == [f"tx-{i}" for i in range(6)]


def test_the_batch_window_setting_defaults_to_50_ms() -> None:
    assert Settings().onespan_batch_window_ms == 50
    assert adapter(recorder()[1]).erasures.window == 0.05
