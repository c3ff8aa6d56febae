"""Integration tests: a real Redis server, real Celery worker processes."""
