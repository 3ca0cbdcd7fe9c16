"""Writing command results to stdout (the CLI's only place that prints)."""

from __future__ import annotations

import json
import sys
from typing import Any


def say(text: str = "") -> None:
    """One line for a person."""
    sys.stdout.write(text + "\n")


def emit_json(document: Any) -> None:
    """A machine-readable document."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")


def progress_line(text: str, *, machine: bool) -> None:
    """A progress line: on stdout for a person, on stderr when stdout carries JSON."""
    (sys.stderr if machine else sys.stdout).write(text + "\n")
