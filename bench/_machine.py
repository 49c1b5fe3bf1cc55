"""What the benches print about the machine they ran on (no torch import: cli_startup times processes)."""

from __future__ import annotations

from cnnlab.threads import cpu_name  # noqa: F401  (the one reader of /proc/cpuinfo; imports no torch)
