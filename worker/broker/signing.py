"""Optional message signing with Celery's own ``auth`` serializer.

When ``IDVCANCEL_SIGNING_KEY``, ``IDVCANCEL_SIGNING_CERTIFICATE`` and
``IDVCANCEL_SIGNING_CERT_STORE`` are set, every message is signed (SHA-256, the sender's
private key) and a worker accepts only messages whose signature verifies against a
certificate in the store. An unsigned or tampered message is refused: it ends
``rejected`` with an audit record and a dead letter (``worker.broker.consumer``). Signing is
not encryption: bodies stay readable in Redis.
"""

from __future__ import annotations

from celery import Celery

from config.settings import Settings


def signing_enabled(settings: Settings) -> bool:
    return bool(settings.signing_key and settings.signing_certificate
                and settings.signing_cert_store)


def configure_signing(app: Celery, settings: Settings) -> bool:
    """Switch ``app`` to signed messages if configured; returns whether it did."""
    if not signing_enabled(settings):
        return False
    app.conf.update(
        security_key=settings.signing_key,
        security_key_password=(settings.signing_key_password.get_secret_value().encode()
                               or None),
        security_certificate=settings.signing_certificate,
        security_cert_store=settings.signing_cert_store,
        security_digest="sha256",
        task_serializer="auth",
        event_serializer="auth",
        accept_content=["auth"],
    )
    # "auth" wraps JSON; every other serializer (pickle, yaml, msgpack) is disabled.
    app.setup_security(allowed_serializers={"json"}, serializer="json")
    return True
