"""Provider adapters, one module each, and the registry that finds them by name.

Adding a provider means one adapter module (with its ``RULES`` table) and one line in
``_ADAPTERS``; nothing else changes.
"""

from __future__ import annotations

import functools
import importlib
import threading

from config.settings import Settings
from worker.providers.base import ProviderAdapter
from worker.providers.rules import ProviderRules

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
