"""Every Lua script idv-cancel runs lives in ``worker/lua/``, each headed by the keys and
arguments it takes. This loads a script's text from the package once per process and
registers it once per Redis client (``EVALSHA`` from then on; redis-py loads it again by
itself after a Redis restart empties the script cache).

Examples:
    >>> source("transition").startswith("--[[ transition.lua")
    True
"""

from __future__ import annotations

import functools
import threading
import weakref
from importlib import resources

import redis
from redis.commands.core import Script

_lock = threading.Lock()
_registered: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = (
    weakref.WeakKeyDictionary())


@functools.cache
def source(name: str) -> str:
    """The text of ``worker/lua/<name>.lua``."""
    return resources.files("worker").joinpath(f"lua/{name}.lua").read_text()


def script(client: redis.Redis, name: str) -> Script:
    """``worker/lua/<name>.lua`` registered with ``client`` (once per client)."""
    with _lock:
        scripts = _registered.setdefault(client, {})
        found = scripts.get(name)
        if found is None:
            found = scripts[name] = client.register_script(source(name))
        return found
