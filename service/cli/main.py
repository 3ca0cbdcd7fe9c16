"""The ``rtinjury`` command line: one entry point, one sub-command per job.

Bad input ends as one line on stderr and a non-zero exit status, never a traceback; heavy
imports happen inside the sub-command that needs them so that ``rtinjury --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import SettingsError

from models.errors import ModelError
from service.cli import (
    audit_cmd,
    demo_cmd,
    evaluate_cmd,
    export_onnx_cmd,
    inspect_cmd,
    keys_cmd,
    node_cmd,
    register_cmd,
    run_cmd,
    serve_cmd,
    synth_cmd,
    train_cmd,
    worker_cmd,
)
from worker.errors import InputError
from worker.logs import install_phi_filter

EXIT_INPUT_ERROR = 2
EXIT_INTERNAL_ERROR = 70
EXIT_INTERRUPTED = 130

log = logging.getLogger("rtinjury")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="rtinjury",
        description="Find and measure radiotherapy-induced normal-tissue injuries in DICOM-RT data.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_cmd.register(commands)
    run_cmd.register(commands)
    synth_cmd.register(commands)
    inspect_cmd.register(commands)
    register_cmd.register(commands)
    export_onnx_cmd.register(commands)
    train_cmd.register(commands)
    evaluate_cmd.register(commands)
    worker_cmd.register(commands)
    serve_cmd.register(commands)
    keys_cmd.register(commands)
    node_cmd.register(commands)
    audit_cmd.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # No patient names, ids or raw UIDs in any line this process logs (worker.logs).
    install_phi_filter()
    try:
        return int(args.handler(args))
    except (InputError, ModelError) as exc:
        _fail(f"error: {exc.message}")
        return EXIT_INPUT_ERROR
    except ValidationError as exc:
        if not exc.title.endswith("Settings"):  # not the environment's: one of ours
            return _internal_error(exc, args.debug)
        _fail(f"error: invalid setting: {settings_problems(exc)}")
        return EXIT_INPUT_ERROR
    except SettingsError as exc:  # a complex setting (a JSON list …) that does not even parse
        _fail(f"error: invalid setting: {exc}")
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _internal_error(exc, args.debug)


def _internal_error(exc: Exception, debug: bool) -> int:
    if debug:
        raise exc
    log.debug("internal error", exc_info=True)
    _fail(f"internal error ({type(exc).__name__}); run with --debug for details")
    return EXIT_INTERNAL_ERROR


def settings_problems(error: ValidationError) -> str:
    """Each bad setting by its environment name and pydantic's reason; never its value (a database
    URL or a key hash can be a secret)."""
    problems = []
    for item in error.errors():
        # The variable is the first part of the location (the rest is inside its JSON value).
        where = f"RTINJURY_{str(item['loc'][0]).upper()}" if item["loc"] else "the settings"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def _fail(message: str) -> None:
    sys.stderr.write(f"rtinjury: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
