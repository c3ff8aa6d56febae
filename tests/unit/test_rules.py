"""``worker.providers.admissible``: the one test of a request against its provider's rules,
run by the producer before sending and by the worker before any call. Every provider's
rules, the worker agreeing with it case by case, and the README's table generated from
the same tables (fakeredis and a mock transport: fast, no processes; the real worker and
CLI are in tests/integration/test_rules_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import fakeredis
import httpx
import pytest

from config.settings import Settings
from worker import keys
from worker.contract import CancelRequest
from worker.delivery.pipeline import Finished, Pipeline
from worker.errors import NotReplayable, RuleViolation
from worker.journal.steps import Journal
from worker.ops import deadletters
from worker.providers import adapter_class, admissible, rulesdoc
from worker.providers.base import ProviderAdapter

UUID = "fe4291ca-d831-4760-96df-c9cb03b3cd95"
README = Path(__file__).resolve().parents[2] / "README.md"

#: (provider, action, fields beyond the defaults, the rule broken or None, the field at fault)
CASES: list[tuple[str, str, dict[str, Any], str | None, str | None]] = [
    ("idpass", "cancel", {"reference": UUID}, None, None),
    ("idpass", "cancel", {"reference": UUID.upper()}, None, None),
    ("idpass", "cancel", {"reference": "ref-1"}, "invalid_reference", "reference"),
    ("idpass", "cancel", {"reference": UUID + "0"}, "invalid_reference", "reference"),
    ("idpass", "delete", {"reference": UUID}, "action_not_supported", "action"),
    ("txcloud", "cancel", {}, None, None),
    ("txcloud", "delete", {}, "action_not_supported", "action"),
    ("gu1", "cancel", {"reason": "customer withdrew"}, None, None),
    ("gu1", "cancel", {"reason": " abcde "}, None, None),
    ("gu1", "cancel", {}, "reason_required", "reason"),
    ("gu1", "cancel", {"reason": "  abc  "}, "reason_required", "reason"),
    ("gu1", "delete", {"reason": "customer withdrew"}, "action_not_supported", "action"),
    ("jumio", "delete", {}, None, None),
    ("jumio", "delete", {"options": {"product": "document", "region": "sgp"}}, None, None),
    ("jumio", "delete", {"options": {"product": "nope"}}, "invalid_options", "options"),
    ("jumio", "delete", {"options": {"region": "mars"}}, "invalid_options", "options"),
    ("jumio", "delete", {"options": {"colour": "blue"}}, "invalid_options", "options"),
    ("jumio", "delete", {"reference": "r" * 37}, "invalid_reference", "reference"),
    ("jumio", "cancel", {}, "action_not_supported", "action"),
    ("onespan", "cancel", {}, None, None),
    ("onespan", "cancel", {"options": {"grace_period": 7}}, "invalid_options", "options"),
    ("onespan", "delete", {"options": {"grace_period": 7}}, None, None),
    ("onespan", "delete", {"options": {"grace_period": -1}}, "invalid_options", "options"),
    ("onespan", "delete", {"options": {"grace_period": "7"}}, "invalid_options", "options"),
]


def request(provider: str, action: str, **fields: Any) -> CancelRequest:
    return CancelRequest.model_validate({
        "request_id": "r-1", "provider": provider, "action": action, "reference": "ref-1",
        "requested_by": "tests", **fields})


def case_id(case: tuple[str, str, dict[str, Any], str | None, str | None]) -> str:
    provider, action, fields, code, _ = case
    return f"{provider}-{action}-{code or 'ok'}-{json.dumps(fields, sort_keys=True)}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_admissible_applies_each_providers_rules(
        case: tuple[str, str, dict[str, Any], str | None, str | None]) -> None:
    """Given a request that meets or breaks one of its provider's rules
    When admissible is asked
    Then it returns the rule to carry it out under, or raises naming the rule and field."""
    provider, action, fields, code, field = case
    req = request(provider, action, **fields)
    if code is None:
        rule = admissible(req)
        assert rule is adapter_class(provider).rules.actions[action]  # type: ignore[index]
        return
    with pytest.raises(RuleViolation) as refused:
        admissible(req)
    assert (refused.value.code, refused.value.field) == (code, field)
    assert provider in refused.value.message


@pytest.fixture
def pipeline(fake_redis: fakeredis.FakeRedis) -> Pipeline:
    """The worker's pipeline with the real adapters, each behind a transport that answers
    503: a request that gets past the rules is tried (and waits), never rejected."""
    settings = Settings(retry_max_attempts=3, retry_base_seconds=1, retry_cap_seconds=5,
                        jumio_user_agent="idv-cancel tests/1.0")
    down = httpx.MockTransport(lambda _: httpx.Response(503, json={}))
    adapters: dict[str, ProviderAdapter] = {}

    def adapter_for(provider: str, conf: Settings) -> ProviderAdapter:
        if provider not in adapters:
            adapters[provider] = adapter_class(provider)(conf, transport=down)
        return adapters[provider]

    return Pipeline(settings, Journal(fake_redis), adapters=adapter_for)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_the_worker_refuses_exactly_what_admissible_refuses(
        case: tuple[str, str, dict[str, Any], str | None, str | None],
        pipeline: Pipeline, fake_redis: fakeredis.FakeRedis) -> None:
    """Given the same request, delivered to the worker's pipeline
    Then it ends rejected with admissible's code when admissible refuses it, and is
    otherwise carried on to the provider (no rejection)."""
    provider, action, fields, code, _ = case
    message = request(provider, action, **fields).model_dump(mode="json")
    step = pipeline.handle([message], {}, "t-1")
    entries = cast("list[tuple[str, dict[str, str]]]", fake_redis.xrange("idvcancel:results"))
    events = [json.loads(fields["event"]) for _, fields in entries]
    if code is None:
        assert step != Finished("rejected")
        assert all(e["outcome"] != "rejected" for e in events)
    else:
        assert step == Finished("rejected")
        (event,) = events
        assert event["error"]["code"] == code and event["attempts"] == 0


def test_readme_table_is_the_rules_tables() -> None:
    """Given the README's table of what each provider requires
    Then it is the one the rules tables generate (regenerate with
    ``python -m worker.providers.rulesdoc --write README.md``)."""
    assert rulesdoc.between_markers(README.read_text(encoding="utf-8")) == rulesdoc.table()


def test_readme_table_names_every_rule() -> None:
    """Given the generated table / Then each rule a request must meet is in it."""
    table = rulesdoc.table()
    rows = {tuple(cell.strip() for cell in line.split(" | ")[:2]): line
            for line in table.splitlines()[2:]}
    assert "a UUID" in rows[("| `idpass`", "`cancel`")]
    assert "at least 5 characters" in rows[("| `gu1`", "`cancel`")]
    jumio = rows[("| `jumio`", "`delete`")]
    assert "at most 36 characters" in jumio
    assert "`product`: `scan` (default) \\| `authentication` \\| `document`" in jumio
    assert "`region`: `us` (default) \\| `eu` \\| `sgp`" in jumio
    assert "`grace_period`: integer ≥ 0" in rows[("| `onespan`", "`delete`")]
    assert "any option is refused" in rows[("| `onespan`", "`cancel`")]
    assert "no API" in rows[("| `txcloud`", "`delete`")]


def test_write_puts_the_table_between_the_markers(tmp_path: Path) -> None:
    """Given a file with an outdated table between the markers
    When the generator writes it (twice) / Then the table is replaced, the rest kept."""
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{rulesdoc.BEGIN}\n| old |\n{rulesdoc.END}\nrest\n")
    rulesdoc.main(["--write", str(path)])
    rulesdoc.main(["--write", str(path)])
    table = rulesdoc.table()
    assert path.read_text() == f"intro\n{rulesdoc.BEGIN}\n{table}\n{rulesdoc.END}\nrest\n"


def test_a_dead_letter_that_breaks_a_rule_now_is_not_replayed(
        fake_redis: fakeredis.FakeRedis) -> None:
    """Given a dead letter whose request breaks a rule (one tightened since it failed:
    a gu1 cancel without a reason)
    When it is replayed
    Then the replay is refused naming the rule, and nothing changed: no ledger reset,
    nothing sent, the entry kept for a person."""
    stored = request("gu1", "cancel").model_dump(mode="json")
    entry = json.dumps({"id": "r-1", "request": stored, "outcome": "failed"})
    fake_redis.hset(keys.DLQ, "r-1", entry)
    sent: list[Any] = []

    class Recorder:
        def submit(self, req: Any) -> str:
            sent.append(req)
            return "r-1"

    with pytest.raises(NotReplayable, match=r"reason_required"):
        deadletters.replay(fake_redis, Recorder(), "r-1")
    assert sent == [] and fake_redis.hget(keys.DLQ, "r-1") == entry
    assert not fake_redis.exists(keys.request_ledger("r-1"))
    assert fake_redis.xlen("idvcancel:audit") == 0
