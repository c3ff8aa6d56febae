"""The import path ``worker.tracking`` that the README documented before the packages:
kept so that existing callers go on working. New code imports from ``worker``
(``from worker import track``); the code lives in ``worker.triggers.tracking``."""

from worker.errors import InvalidSession
from worker.triggers.tracking import TrackedSession, track, validate_session

__all__ = ["InvalidSession", "TrackedSession", "track", "validate_session"]
