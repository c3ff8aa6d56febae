"""Forgery: with signing on, only messages signed by a trusted key are carried out."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.integration.conftest import Stack, seed
from tests.integration.harness import send_process, send_raw

#: Run on the Redis broker and on RabbitMQ (tests/integration/conftest.py).
BOTH_BROKERS = True

REPO = Path(__file__).resolve().parents[2]


def make_identity(folder: Path, name: str) -> tuple[Path, Path]:
    """A private key and a self-signed certificate, as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def signed_producer_code(stack: Stack, request: dict[str, object]) -> str:
    """A signing producer runs in its own process: setup_security is process-wide."""
    return (
        "import json\n"
        "from config.settings import Settings\n"
        "from worker.broker.producer import Producer\n"
        f"p = Producer({stack.redis_url!r}, Settings())\n"
        f"p.submit(json.loads({json.dumps(json.dumps(request))}))\n"
    )


def test_signed_messages_run_and_forged_ones_are_refused_on_the_record(
        stack: Stack, tmp_path: Path) -> None:
    # Given workers that accept only messages signed by a trusted certificate
    store = tmp_path / "trusted"
    store.mkdir()
    key, cert = make_identity(store, "producer")
    signing = {"IDVCANCEL_SIGNING_KEY": str(key), "IDVCANCEL_SIGNING_CERTIFICATE": str(cert),
               "IDVCANCEL_SIGNING_CERT_STORE": str(store / "*.pem")}
    stack.workers[0].stop()
    stack.start_worker(concurrency=16, **signing)
    # When a signed request, an unsigned one and a tampered signed one arrive
    signed = stack.request()
    seed(stack, "idpass", signed["reference"], "new")
    code = signed_producer_code(stack, signed)
    subprocess.run([sys.executable, "-c", code], env={**stack.env, **signing}, check=True,
                   cwd=REPO, timeout=60)
    unsigned = stack.request()
    seed(stack, "idpass", unsigned["reference"], "new")
    send_process(stack.broker_url, unsigned)
    body = json.dumps({"body": "tampered", "signer": "x", "signature": "AAAA"}).encode()
    send_raw(stack.broker_url, body, content_type="application/data",
             content_encoding="utf-8", headers={"id": "forged-1", "task": "idvcancel.process"})
    # Then the signed one is cancelled
    assert stack.result(signed["request_id"])["outcome"] == "cancelled"
    # And the others are refused: rejected, audited, dead-lettered, never called
    refused = stack.wait_events(lambda e: e["request_id"] is None, count=2)
    assert {e["outcome"] for e in refused} == {"rejected"}
    assert stack.provider_calls("idpass", unsigned["reference"]) == []
    assert stack.redis.hlen("idvcancel:dlq") == 2
    assert sum(r["step"] == "rejected" for r in stack.audit()) == 2
    stack.assert_chain_intact()
    # And the signed one, done, has left the intake index
    assert stack.redis.zscore("idvcancel:intake", signed["request_id"]) is None


def test_the_reconciler_pushes_signed_copies(stack: Stack, tmp_path: Path) -> None:
    # Given workers that accept only signed messages, and a request whose producer died
    # between its index entry and its send (an entry with no message), long ago
    store = tmp_path / "trusted"
    store.mkdir()
    key, cert = make_identity(store, "producer")
    signing = {"IDVCANCEL_SIGNING_KEY": str(key), "IDVCANCEL_SIGNING_CERTIFICATE": str(cert),
               "IDVCANCEL_SIGNING_CERT_STORE": str(store / "*.pem")}
    stack.workers[0].stop()
    stack.start_worker(concurrency=16, **signing)
    orphan = stack.request()
    seed(stack, "idpass", orphan["reference"], "new")
    stack.redis.zadd("idvcancel:intake", {orphan["request_id"]: 1_000_000_000})
    stack.redis.hset("idvcancel:intake:requests", orphan["request_id"], json.dumps(orphan))
    # When a reconcile run (with the signing settings, as the worker's own task has) runs
    code = (
        "from config.settings import Settings\n"
        "from worker.broker.producer import Producer\n"
        "from worker.triggers.reconcile import run_reconcile\n"
        "from worker.redis_client import redis_client\n"
        "s = Settings()\n"
        "print(run_reconcile(redis_client(s.redis_url), s,"
        " sender=Producer(s.redis_url, s)).resubmitted)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**stack.env, **signing},
                         check=True, cwd=REPO, timeout=60, capture_output=True, text=True)
    # Then it pushed a signed copy, which the workers accept and carry out
    assert out.stdout.splitlines()[-1] == repr([orphan["request_id"]])  # after the log lines
    assert stack.result(orphan["request_id"])["outcome"] == "cancelled"
    assert [r["step"] for r in stack.audit(orphan["request_id"])] == [
        "resubmitted", "received", "attempt", "completed"]
    assert stack.redis.zcard("idvcancel:intake") == 0
