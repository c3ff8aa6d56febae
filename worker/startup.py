"""What a worker says when it starts: configuration problems an operator must see at
once (a missing credential is otherwise only found when a request fails)."""

from __future__ import annotations

import importlib
from typing import Any

from celery.signals import worker_ready

from config.settings import get_settings
from worker.logs import get_logger
from worker.providers import adapter_class, supported_providers


def configuration_warnings() -> list[str]:
    """Every provider module's ``startup_warnings(settings)``, if it defines one."""
    settings = get_settings()
    warnings: list[str] = []
    for provider in supported_providers():
        module = importlib.import_module(adapter_class(provider).__module__)
        check = getattr(module, "startup_warnings", None)
        if check is not None:
            warnings.extend(check(settings))
    return warnings


@worker_ready.connect
def _warn_on_start(**_: Any) -> None:
    log = get_logger()
    for warning in configuration_warnings():
        log.warning("configuration", problem=warning)
