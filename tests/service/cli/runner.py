"""Run the ``rtinjury`` command line as a user does: a real process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping


def rtinjury(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=dict(env) if env is not None else None,
    )
