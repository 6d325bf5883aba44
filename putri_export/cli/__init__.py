"""The ``putri-export`` command line: one entry point, one subcommand per job.

``parser.py`` builds the flags (settings flags from the settings dataclasses through ``options.add_options``:
defaults and choices are written once, beside the code that uses them); ``commands.py`` does the work; ``main``
turns every failure into one line and an exit code.
"""

from __future__ import annotations

import os
import sys

from ..errors import PutriError
from .parser import build_parser


def _quiet_libraries() -> None:
    """Our own progress bars and messages only; library chatter hides the one line that matters."""
    try:
        import datasets
        import transformers
    except ImportError:  # benchmark-only install on a device
        return

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        code = args.func(args)
    except PutriError as e:
        print(f"putri-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("putri-export: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, missing paths: the system's own words and the path
        if os.environ.get("PUTRI_EXPORT_DEBUG"):
            raise
        print(f"putri-export: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 2
    except Exception as e:  # an unexpected failure: one line, traceback on request
        if os.environ.get("PUTRI_EXPORT_DEBUG"):
            raise
        print(f"putri-export: internal error: {type(e).__name__}: {e} (set PUTRI_EXPORT_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
    return code or 0


__all__ = ["build_parser", "main"]
