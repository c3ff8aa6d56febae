"""Provider adapters, one module each, and the registry that finds them by name.

Adding a provider means one adapter module (with its ``RULES`` table) and one line in
``_ADAPTERS``; nothing else changes.
"""

from __future__ import annotations

import functools
import importlib
import threading

from config.settings import Settings
from worker.contract import CancelRequest
from worker.errors import RuleViolation
from worker.providers.base import ProviderAdapter
from worker.providers.rules import ActionRule, ProviderRules, check

#: provider name → "module:class"
_ADAPTERS: dict[str, str] = {
    "idpass": "worker.providers.idpass:IdPassAdapter",
    "txcloud": "worker.providers.txcloud:TxCloudAdapter",
    "gu1": "worker.providers.gu1:Gu1Adapter",
    "jumio": "worker.providers.jumio:JumioAdapter",
    "onespan": "worker.providers.onespan:OneSpanAdapter",
}

_lock = threading.Lock()
_instances: dict[str, ProviderAdapter] = {}


@functools.cache
def adapter_class(provider: str) -> type[ProviderAdapter]:
    """The adapter class for ``provider``; KeyError for an unknown name."""
    module, _, name = _ADAPTERS[provider].partition(":")
    cls: type[ProviderAdapter] = getattr(importlib.import_module(module), name)
    return cls


def rules_for(provider: str) -> ProviderRules:
    return adapter_class(provider).rules


def admissible(request: CancelRequest) -> ActionRule:
    """The rule the request is carried out under, or ``RuleViolation`` (its ``code`` the
    rule's: ``action_not_supported``, ``invalid_reference``, ``reason_required``,
    ``invalid_options``, ``provider_not_supported``).

    Exactly the worker's test before a call (``check`` against the provider's table), for
    a producer to refuse before sending what the worker would end ``rejected``.

    Examples:
        >>> admissible(CancelRequest(request_id="r-1", provider="gu1", action="cancel",
        ...     reference="v-1", requested_by="ops"))
        Traceback (most recent call last):
        ...
        worker.errors.RuleViolation: gu1 requires a reason of at least 5 characters to cancel
    """
    try:
        rules = rules_for(request.provider)
    except KeyError:
        raise RuleViolation("provider_not_supported",
                            f"no adapter for provider {request.provider}", "provider") from None
    return check(request, rules)


def supported_providers() -> list[str]:
    return list(_ADAPTERS)


def get_adapter(provider: str, settings: Settings) -> ProviderAdapter:
    """The process-wide adapter for ``provider`` (one pooled transport each)."""
    with _lock:
        adapter = _instances.get(provider)
        if adapter is None or adapter.settings is not settings:
            adapter = adapter_class(provider)(settings)
            _instances[provider] = adapter
        return adapter


def close_all() -> None:
    with _lock:
        for adapter in _instances.values():
            adapter.close()
        _instances.clear()
