"""Settings as dataclasses whose fields carry their help text; the CLI's flags are made from them.

A field declared with :func:`option` becomes ``--field-name`` (type and default from the dataclass, choices
when given); a boolean that defaults to true becomes ``--no-field-name``. So every default and every allowed
value is written once, next to the code that uses it.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields
from typing import Any, get_args, get_origin, get_type_hints


def option(default: Any, help: str, choices: tuple | None = None, group: str | None = None) -> Any:
    """A settings field with its help text (tuples/lists are copied per instance); fields of one ``group`` are
    listed together under that title in ``--help``."""
    metadata = {"help": help, "choices": choices, "group": group}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _parse_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parse_strings(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_options(parser: argparse.ArgumentParser, cls: type, only: list[str] | None = None,
                skip: tuple[str, ...] = ()) -> None:
    """Add a flag for each :func:`option` field of ``cls`` (all, or those named in ``only``); flags default to
    None so that :func:`given_options` returns only what the user set."""
    hints = get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    # grouped fields (inherited ones come first in a dataclass) after the command's own, in usage as in --help
    for f in sorted(fields(cls), key=lambda f: f.metadata.get("group") is not None):
        if "help" not in f.metadata or f.name in skip or (only is not None and f.name not in only):
            continue
        title = f.metadata.get("group")
        if title and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = groups[title] if title else parser
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        # argparse %-formats help strings: a literal % (e.g. "40%") must be doubled
        help_text = f"{f.metadata['help']} (default: {_shown(default)})".replace("%", "%%")
        if kind is bool:
            if default:
                target.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", default=None, help=help_text)
            else:
                target.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
            continue
        if type(None) in get_args(kind):  # X | None
            kind = next(a for a in get_args(kind) if a is not type(None))
            if kind is bool:  # unset: a preset decides; both flags given
                target.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
                target.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", default=None,
                                    help=f"the opposite of {flag} (default: {_shown(default)})")
                continue
        if get_origin(kind) in (tuple, list):
            parse, container = (_parse_ints if get_args(kind)[:1] == (int,) else _parse_strings), get_origin(kind)

            def convert(text: str, parse=parse, container=container):
                return container(parse(text))
        else:
            convert = {int: int, float: float, str: str}.get(kind, str)
        target.add_argument(flag, dest=f.name, type=convert, default=None, choices=f.metadata.get("choices"),
                            help=help_text)


def given_options(args: argparse.Namespace, cls: type) -> dict:
    """The :func:`option` fields of ``cls`` that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls)
            if getattr(args, f.name, None) is not None and "help" in f.metadata}


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)
