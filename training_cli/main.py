"""Entry point of ``brainsynth-cli``.

Errors a user can act on (:class:`engine.errors.BrainSynthError`) are printed as one line on
stderr with exit status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from engine import __version__
from training_cli.commands import COMMAND_MODULES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainsynth-cli",
        description="Train, sample and evaluate 3-D brain MRI diffusion models (headless).",
    )
    parser.add_argument("--version", action="version", version=f"brainsynth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"training_cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"training_cli.commands.{name}":
                raise
            continue  # a subcommand not built yet
        module.register(subparsers)
    return parser


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def main(argv: Sequence[str] | None = None) -> int:
    from engine.errors import BrainSynthError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrainSynthError as exc:
        if args.debug:
            raise
        print(f"brainsynth-cli {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A full disk or a read-only folder met outside the engine's write helpers: the
        # environment, not a bug, so one line too.
        from engine.atomic import failure_reason

        if args.debug or exc.errno not in _WRITE_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"brainsynth-cli {args.command}: error: {where}{failure_reason(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"brainsynth-cli {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
