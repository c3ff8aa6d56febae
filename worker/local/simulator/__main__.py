"""``python -m worker.local.simulator --host 127.0.0.1 --port 8765 [--autocreate]
[--latency-ms N]``."""

from worker.local.simulator.server import main

raise SystemExit(main())
