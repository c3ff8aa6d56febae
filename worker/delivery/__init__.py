"""One delivery of ``idvcancel.process``, in the order a request meets them: ``intake``
(what the message carried) → the ledger (``worker.journal.ledger``: what happened to
this request before) → the provider's rules (``worker.providers.rules``) → ``pipeline``
(at most one provider call, then the step), with ``retry`` (backoff) and ``records``
(audit drafts, result events, dead letters); ``runtime`` builds the per-process pipeline.

May import: ``config``, the ground modules of ``worker``, ``worker.journal``,
``worker.gate``, ``worker.providers``. Never Celery or ``tasks``.
"""
