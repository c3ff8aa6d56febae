"""The contract's names that the configuration needs too: the queue, the task, the
providers. ``worker.contract`` re-exports them with the rest of the contract; they live
here because ``config`` is the ground floor and imports nothing from ``worker``.
"""

from __future__ import annotations

from typing import Literal

TASK_NAME = "idvcancel.process"
QUEUE = "idvcancel"

ProviderName = Literal["idpass", "txcloud", "gu1", "jumio", "onespan"]
PROVIDERS: tuple[ProviderName, ...] = ("idpass", "txcloud", "gu1", "jumio", "onespan")
