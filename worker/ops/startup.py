"""What a worker says when it starts: configuration problems an operator must see at
once (a missing credential is otherwise only found when a request fails)."""

from __future__ import annotations

import functools
import importlib

import redis

from config.settings import get_settings
from worker import keys
from worker.logs import get_logger
from worker.metrics import serve
from worker.providers import adapter_class, supported_providers
from worker.redis_client import probe_client
from worker.runner.siblings import sibling_number


def configuration_warnings() -> list[str]:
    """Every provider module's ``startup_warnings(settings)``, if it defines one."""
    settings = get_settings()
    warnings: list[str] = []
    for provider in supported_providers():
        try:
            module = importlib.import_module(adapter_class(provider).__module__)
            check = getattr(module, "startup_warnings", None)
            if check is not None:
                warnings.extend(check(settings))
        except Exception as exc:  # noqa: BLE001 - one broken provider must not hide the rest
            warnings.append(f"{provider}: adapter failed to load ({type(exc).__name__})")
    return warnings


@functools.cache
def _probe_client() -> redis.Redis:
    """One client for health probes: no retries and a 1 s timeout, so that a probe
    answers "unhealthy" quickly instead of hanging while Redis is away."""
    return probe_client(get_settings().redis_url)


def _healthy() -> tuple[bool, str]:
    """Healthy when Redis (broker, ledger and journal) answers."""
    try:
        _probe_client().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, and says why
        return False, f"redis unreachable: {type(exc).__name__}"
    return True, "ok"


def _dead_letter_depth() -> int:

    return int(_probe_client().hlen(keys.DLQ))


def _start_releaser() -> None:
    """Publish parked requests again when they are due (``worker.triggers.release``).
    Its own Redis client, not the pipeline's: with ``-P prefork`` this runs in the parent,
    whose pipeline must stay unbuilt (children build theirs after the fork)."""
    from worker.triggers.release import start_releaser

    start_releaser(get_settings())


def on_ready() -> None:
    """Once the worker is ready (``worker.app`` calls it on Celery's ``worker_ready``):
    say what is misconfigured, start the releaser of parked requests, and serve
    ``/metrics`` and ``/healthz`` when asked (in the worker's first process only)."""
    log = get_logger()
    _start_releaser()
    for warning in configuration_warnings():
        log.warning("configuration", problem=warning)
    port = get_settings().metrics_port
    # One process of a worker serves them, counting all (worker.runner, worker.metrics).
    if port and sibling_number() is None:
        serve(port, _healthy, _dead_letter_depth)
        from worker.journal.attention import register_gauge

        register_gauge(_probe_client)
        from worker.contract import Outcome
        from worker.metrics import start_series
        from worker.ops import gauges

        gauges.register(_probe_client, supported_providers())
        start_series(supported_providers(), [o.value for o in Outcome])
        log.info("metrics", port=port, paths=["/metrics", "/healthz"])
