"""Poison input: malformed messages of every kind, interleaved with valid requests.

The contract: the worker never crashes or stalls (valid requests all complete), and each
malformed message ends in exactly one ``rejected`` result: with its ``request_id`` when
one can be read, else with ``request_id: null``, its task id, and a dead-letter entry.

The bulk run is property-based: Hypothesis generates the malformed messages in-process
(fields of the wrong type, missing, unknown, too long, unknown providers, ids that are
not short strings, wrong task arguments, bodies Celery cannot decode, ...), then they
are all sent at once with the valid ones shuffled in. ``POISON_SEED`` replays a run.
The cases Hypothesis found (or that we wrote) that break the contract are pinned
below as explicit tests, each named for the bug it once showed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.integration.harness import send_process, send_raw
from tests.reliability.conftest import RelStack, wait_until
from worker.delivery import intake

FIELDS = ("request_id", "provider", "action", "reference", "reason", "source",
          "requested_by", "options")
ENUMS = {
    "provider": {"idpass", "txcloud", "gu1", "jumio", "onespan"},
    "action": {"cancel", "delete"},
    "source": {"api", "sweep", "supersede", "manual"},
}
MALFORMED = 1800
VALID = 200
MEGABYTE = 1024 * 1024

text = st.text(max_size=40)  # Hypothesis' default alphabet has no lone surrogates
scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=3),
    max_leaves=8,
)


def template() -> dict[str, Any]:
    return {"request_id": "", "provider": "idpass", "action": "cancel",
            "reference": str(uuid.uuid4()), "requested_by": "poison-tests"}


def task_headers(task_id: str, task: str = "idvcancel.process") -> dict[str, Any]:
    """Celery protocol-2 headers, as a producer in another language would write them."""
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
            "parent_id": None, "group": None, "argsrepr": "", "kwargsrepr": "",
            "origin": "poison-tests", "retries": 0, "eta": None, "expires": None,
            "timelimit": [None, None], "shadow": None, "ignore_result": False}


def protocol2(args: Any, kwargs: Any = None, embed: Any = None) -> bytes:
    body = [args, {} if kwargs is None else kwargs,
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
            if embed is None else embed]
    return json.dumps(body).encode()


def _parses(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


@dataclass
class Poison:
    """One malformed message, before it is made unique and sent."""

    kind: str
    request: dict[str, Any] | None = None  # gets a unique request_id when readable
    readable: bool = False
    as_json_string: bool = False
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    task_name: str = "idvcancel.process"
    raw: bytes | None = None
    content_type: str = "application/json"
    with_headers: bool = False
    # filled in when sent
    request_id: str | None = None
    task_ids: set[str] = field(default_factory=set)
    must_reject: bool = True


@st.composite
def field_poison(draw: st.DrawFn) -> Poison:
    request = template()
    how = draw(st.sampled_from(["wrong_type", "missing", "unknown_field", "bad_value",
                                "too_long", "empty"]))
    if how == "wrong_type":
        name = draw(st.sampled_from([f for f in FIELDS if f != "request_id"]))
        request[name] = draw(json_values.filter(
            lambda v: not isinstance(v, str) and not (name == "reason" and v is None)
            and not (name == "options" and isinstance(v, dict))))
    elif how == "missing":
        name = draw(st.sampled_from(["provider", "action", "reference", "requested_by"]))
        del request[name]
    elif how == "unknown_field":
        name = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in FIELDS))
        request[name] = draw(json_values)
    elif how == "bad_value":  # unknown providers, actions, sources
        name = draw(st.sampled_from(sorted(ENUMS)))
        request[name] = draw(text.filter(lambda v: v not in ENUMS[name]))
    elif how == "too_long":
        name, limit = draw(st.sampled_from([("reference", 256), ("requested_by", 256),
                                            ("reason", 1000)]))
        request[name] = "x" * draw(st.integers(limit + 1, limit + 4000))
    else:
        name = draw(st.sampled_from(["reference", "requested_by"]))
        request[name] = ""
    return Poison(f"field:{how}", request=request, readable=True,
                  as_json_string=draw(st.booleans()))


@st.composite
def id_poison(draw: st.DrawFn) -> Poison:
    request = template()
    bad = draw(st.one_of(
        st.integers(), st.floats(), st.booleans(), st.none(), st.just(""),
        st.text(min_size=129, max_size=300), st.lists(text, max_size=3),
        st.dictionaries(text, text, max_size=2), st.just(...)))
    if bad is ...:
        del request["request_id"]
        kind = "id:missing"
    else:
        request["request_id"] = bad
        kind = f"id:{type(bad).__name__}" if bad != "" else "id:empty"
    return Poison(kind, args=[request])


@st.composite
def args_poison(draw: st.DrawFn) -> Poison:
    request = {**template(), "request_id": f"args-{uuid.uuid4().hex}"}
    how = draw(st.sampled_from(["no_args", "extra_args", "kwargs_only", "args_and_kwargs",
                                "not_an_object", "string_not_json", "json_not_object",
                                "unknown_task"]))
    kwarg_names = st.text(min_size=1, max_size=12).filter(lambda k: k != "self")
    if how == "no_args":
        return Poison(how, args=[])
    if how == "extra_args":
        return Poison(how, args=[request, *draw(st.lists(json_values, min_size=1, max_size=3))])
    if how == "kwargs_only":
        return Poison(how, args=[], kwargs={"request": request})
    if how == "args_and_kwargs":
        return Poison(how, args=[request], kwargs=draw(
            st.dictionaries(kwarg_names, json_values, min_size=1, max_size=3)))
    if how == "not_an_object":
        return Poison(how, args=[draw(json_values.filter(
            lambda v: not isinstance(v, dict | str)))])
    if how == "string_not_json":
        return Poison(how, args=[draw(text.filter(lambda s: not _parses(s)))])
    if how == "json_not_object":
        return Poison(how, args=[json.dumps(draw(json_values.filter(
            lambda v: not isinstance(v, dict))))])
    name = draw(st.from_regex(r"idvcancel\.[a-z_]{1,12}", fullmatch=True).filter(
        lambda n: n not in {"idvcancel.process", "idvcancel.sweep", "idvcancel.track"}))
    return Poison("unknown_task", args=[request], task_name=name)


@st.composite
def raw_poison(draw: st.DrawFn) -> Poison:
    how = draw(st.sampled_from(["invalid_utf8", "not_json", "json_without_task", "pickle",
                                "yaml", "protocol1_bad_args", "protocol2_bad_args"]))
    headers = draw(st.booleans())
    if how == "invalid_utf8":
        return Poison(how, raw=b"\xff\xfe" + draw(st.binary(max_size=100)),
                      with_headers=headers)
    if how == "not_json":
        return Poison(how, raw=(draw(text) + " }{ ").encode(), with_headers=headers)
    if how == "json_without_task":
        return Poison(how, raw=json.dumps({"x": draw(json_values)}).encode(),
                      with_headers=headers)
    if how == "pickle":  # a content type the worker does not accept
        return Poison(how, raw=pickle.dumps([[draw(json_values)], {}, {}]),
                      content_type="application/x-python-serialize", with_headers=True)
    if how == "yaml":
        return Poison(how, raw=draw(text).encode(), content_type="application/x-yaml",
                      with_headers=True)
    if how == "protocol1_bad_args":
        body = {"task": "idvcancel.process", "args": draw(st.lists(json_values, max_size=3)),
                "kwargs": {}}
        return Poison(how, raw=json.dumps(body).encode())
    # args that are not a list but are iterable (null, numbers and booleans are pinned
    # as explicit shapes below)
    args = draw(json_values.filter(lambda v: isinstance(v, dict | str)))
    return Poison(how, raw=protocol2(args), with_headers=True)


poison = st.one_of(field_poison(), id_poison(), args_poison(), raw_poison())


def generate(count: int, run_seed: int) -> list[Poison]:
    """``count`` malformed messages drawn by Hypothesis (generation only, no shrinking:
    the assertions run on the whole batch once it has been sent)."""
    found: list[Poison] = []

    @seed(run_seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(poison)
    def collect(item: Poison) -> None:
        found.append(item)

    collect()
    return found


def huge() -> list[Poison]:
    """One megabyte where it hurts most."""
    blob = "A" * MEGABYTE
    cases = []
    for name in ("reason", "reference", "requested_by", "provider", "an_unknown_field"):
        cases.append(Poison(f"huge:{name}", request={**template(), name: blob},
                            readable=True))
    cases.append(Poison("huge:request_id", args=[{**template(), "request_id": blob}]))
    cases.append(Poison("huge:string_argument", args=["{" + blob]))
    cases.append(Poison("huge:raw_body", raw=("{" + blob).encode(), with_headers=True))
    return cases


def send(rel: RelStack, item: Poison, number: int) -> None:
    """Make ``item`` unique (its own request id or body) and send it."""
    nonce = f"{number}-{uuid.uuid4().hex}"
    if item.request is not None:
        item.request["request_id"] = f"poison-{nonce}"
        item.request_id = item.request["request_id"]
        arg: Any = json.dumps(item.request) if item.as_json_string else item.request
        item.args = [arg]
        parsed = intake.parse(item.args, {}, "check")
        item.must_reject = parsed.error is not None
    if item.raw is None:
        assert item.args is not None
        task_id = send_process(rel.redis_url, None, task_name=item.task_name,
                               args=item.args, kwargs=item.kwargs)
        item.task_ids = {task_id}
        return
    body = item.raw + (f" #{nonce}".encode() if item.content_type != "application/json"
                       or not _parses_bytes(item.raw) else b"")
    if item.kind == "json_without_task":
        body = json.dumps({**json.loads(item.raw), "nonce": nonce}).encode()
    if item.kind == "protocol1_bad_args":
        body = json.dumps({**json.loads(item.raw), "id": f"p1-{nonce}"}).encode()
        item.task_ids = {f"p1-{nonce}"}
    headers: dict[str, Any] = {}
    if item.with_headers:
        task_id = f"raw-test-{nonce}"
        headers = task_headers(task_id) if item.kind in (
            "pickle", "yaml", "protocol2_bad_args", "huge:raw_body") else {"id": task_id}
        item.task_ids.add(task_id)
    item.task_ids.add("raw-" + hashlib.sha256(body).hexdigest()[:32])
    send_raw(rel.redis_url, body, content_type=item.content_type, headers=headers)


def _parses_bytes(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


@pytest.mark.slow
def test_thousands_of_malformed_messages_among_valid_ones_are_each_answered_once(
        rel: RelStack) -> None:
    run_seed = int(os.environ.get("POISON_SEED", random.randrange(2**32)))
    print(f"\nPOISON_SEED={run_seed}")
    # Given a worker, thousands of malformed messages and valid requests, shuffled
    worker = rel.start_worker(concurrency=16)
    pid = worker.pid
    malformed = generate(MALFORMED, run_seed) + huge()
    valid = rel.seeded_requests(VALID, prefix="valid")
    batch: list[Poison | dict[str, Any]] = [*malformed, *valid]
    random.Random(run_seed).shuffle(batch)
    # When everything is sent at once, valid requests interleaved with the poison
    for number, item in enumerate(batch):
        if isinstance(item, Poison):
            send(rel, item, number)
        else:
            rel.producer.submit(item)
    readable = [p for p in malformed if p.request_id is not None]
    anonymous = [p for p in malformed if p.request_id is None]
    # Then every valid request completes, and every readable poison is answered once
    ids = [r["request_id"] for r in valid] + [p.request_id for p in readable if p.request_id]
    results = rel.wait_results(ids, timeout=80, settle=0)
    assert {results[r["request_id"]]["outcome"] for r in valid} == {"cancelled"}
    wrongly_accepted = [(p.kind, results[p.request_id]["outcome"]) for p in readable
                        if p.request_id and p.must_reject
                        and results[p.request_id]["outcome"] != "rejected"]
    assert not wrongly_accepted, wrongly_accepted[:10]
    # and every message without a readable id gets one rejected result with its task id
    def unanswered() -> list[Poison]:
        seen = Counter(e["task_id"] for e in rel.grouped().get(None, []))
        return [p for p in anonymous if sum(seen[t] for t in p.task_ids) != 1]

    try:
        wait_until(lambda: not unanswered(), 40, "one result for each id-less message")
    except AssertionError:
        left = unanswered()
        raise AssertionError(f"{len(left)} id-less messages without exactly one result: "
                             f"{Counter(p.kind for p in left)}") from None
    nulls = rel.grouped().get(None, [])
    assert len(nulls) == len(anonymous), "an id-less result that matches no message"
    assert {e["outcome"] for e in nulls} == {"rejected"}
    dead = set(rel.redis.hkeys("idvcancel:dlq"))
    assert {f"task:{e['task_id']}" for e in nulls} <= dead
    # and the worker never crashed or stalled
    assert worker.is_running() and worker.pid == pid
    assert "Unrecoverable error" not in worker.log_text()
    records = rel.assert_chain_intact()
    kinds = Counter(p.kind.split(":")[0] if ":" in p.kind else p.kind for p in malformed)
    codes = Counter(e["error"]["code"] for e in rel.events() if e["outcome"] == "rejected")
    print(f"poison: {len(malformed)} malformed ({len(readable)} with a readable id, "
          f"{len(anonymous)} without: {len(nulls)} null-id results, {len(dead)} dead letters)"
          f" + {VALID} valid (all cancelled); kinds {dict(kinds)}; rejected by code "
          f"{dict(codes)}; {records} audit records, chain intact; worker pid unchanged")


# -- the protocol-level shapes, one at a time ------------------------------------------

SHAPES = [
    pytest.param("args_not_a_list", protocol2({"a": 1}), {}, id="args_not_a_list"),
    pytest.param("pickle_body", pickle.dumps([[1], {}, {}]), {
        "content_type": "application/x-python-serialize"}, id="pickle_body"),
    pytest.param("unknown_task", protocol2([]), {"task": "idvcancel.nope"}, id="unknown_task"),
    pytest.param("task_header_not_a_string", protocol2([]), {"task": 5},
                 id="task_header_not_a_string"),
    pytest.param("bad_eta_header", protocol2([{"request_id": "x"}]), {"eta": "not a date"},
                 id="bad_eta_header"),
    pytest.param("body_is_an_object", b'{"a": 1}', {}, id="body_is_an_object"),
    pytest.param("body_is_a_number", b"5", {}, id="body_is_a_number"),
    pytest.param("body_is_null", b"null", {}, id="body_is_null"),
    pytest.param("body_is_a_short_list", b'[["x"]]', {}, id="body_is_a_short_list"),
    pytest.param("bad_timelimit_header", protocol2([]), {"timelimit": "x"},
                 id="bad_timelimit_header"),
    pytest.param("args_is_null", protocol2(None), {}, id="args_is_null",
                 marks=pytest.mark.slow),
    pytest.param("args_is_a_number", protocol2(5), {}, id="args_is_a_number",
                 marks=pytest.mark.slow),
    pytest.param("kwargs_not_a_mapping", b"[[], [1], {}]", {}, id="kwargs_not_a_mapping",
                 marks=pytest.mark.slow),
    pytest.param("embed_not_a_mapping", b"[[], {}, 5]", {}, id="embed_not_a_mapping",
                 marks=pytest.mark.slow),
]


def _one_poison_then_a_valid_request(rel: RelStack, send_poison: Any,
                                     task_id: str) -> None:
    # Given a running worker
    worker = rel.start_worker(concurrency=4)
    # When the poison is sent, then a valid request
    send_poison()
    (valid,) = rel.seeded_requests(1)
    rel.producer.submit(valid)

    def settled() -> bool:
        if not worker.is_running():
            return True
        answered = any(e["task_id"] == task_id for e in rel.events())
        return answered and valid["request_id"] in {e["request_id"] for e in rel.events()}

    wait_until(settled, 20, "the poison answered and the valid request done")
    # Then the worker is still running, the poison has one rejected result and a dead
    # letter, and the valid request is cancelled
    assert worker.is_running(), f"the worker died (exit {worker.returncode})"
    poison_events = [e for e in rel.events() if e["task_id"] == task_id]
    assert len(poison_events) == 1 and poison_events[0]["outcome"] == "rejected"
    assert poison_events[0]["request_id"] is None
    assert rel.redis.hexists("idvcancel:dlq", f"task:{task_id}")
    assert rel.wait_results([valid["request_id"]], 30)[valid["request_id"]][
        "outcome"] == "cancelled"


@pytest.mark.parametrize(("name", "body", "options"), SHAPES)
def test_task_message_of_any_shape_is_rejected_and_the_worker_goes_on(
    rel: RelStack, name: str, body: bytes, options: dict[str, Any],
) -> None:
    # Given a task message of this shape (the steps are in the helper)
    task_id = f"shape-{name}-{uuid.uuid4().hex[:8]}"
    options = dict(options)
    content_type = options.pop("content_type", "application/json")
    headers = {**task_headers(task_id), **options}

    def send_poison() -> None:
        send_raw(rel.redis_url, body, content_type=content_type, headers=headers)

    # When it is sent to a running worker, then a valid request
    # Then it is rejected, dead-lettered, and the valid request still completes
    _one_poison_then_a_valid_request(rel, send_poison, task_id)


@pytest.mark.slow
def test_a_keyword_argument_named_self_is_answered_and_the_worker_goes_on(
        rel: RelStack) -> None:
    # Given a running worker
    worker = rel.start_worker(concurrency=4)
    # When a task message passes a keyword argument named "self" (it would collide with
    # the bound task's own first argument)
    task_id = send_process(rel.redis_url, None, args=[], kwargs={"self": 1})
    # Then it gets a result, and the worker is still running
    wait_until(lambda: any(e["task_id"] == task_id for e in rel.events()), 20,
               "a result for the message")
    assert worker.is_running()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["reason", "request_id", "requested_by"])
def test_a_lone_surrogate_in_a_field_is_answered_not_lost(rel: RelStack, where: str) -> None:
    # Given a running worker
    rel.start_worker(concurrency=4, IDVCANCEL_RETRY_BASE_SECONDS="0.05")
    # When a request carrying a lone surrogate (not encodable as UTF-8) in a field is sent
    request = {**template(), "request_id": f"sur-{uuid.uuid4().hex[:8]}"}
    request[where] = "bad \ud800 value"
    task_id = send_process(rel.redis_url, request)
    # Then it gets a result: answered, not lost
    wait_until(lambda: any(e["task_id"] == task_id for e in rel.events()), 15,
               "a result for the message with a lone surrogate")


@pytest.mark.slow
def test_id_less_protocol1_messages_are_each_answered(rel: RelStack) -> None:
    # Given a running worker
    rel.start_worker(concurrency=4)
    # When three protocol-1 messages without a task id are sent
    bodies = [{"task": "idvcancel.process", "args": [n], "kwargs": {}} for n in (1, 2, 3)]
    for body in bodies:
        send_raw(rel.redis_url, json.dumps(body).encode())
    # Then each gets a result, none refused as a conflict with another's request id
    wait_until(lambda: len(rel.grouped().get(None, [])) >= 3, 15, "three results")
    codes = [e["error"]["code"] for e in rel.grouped()[None]]
    assert "request_id_conflict" not in codes
