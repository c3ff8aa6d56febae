"""The rules tables as the README's table of what a request must meet, per provider
and action: the README shows the rules the code checks, never a copy that drifts.

``python -m worker.providers.rulesdoc`` prints the table; ``--write README.md`` puts it
between the file's ``<!-- rules:begin -->`` and ``<!-- rules:end -->`` lines.
``tests/unit/test_rules.py`` fails while the README's table differs from this one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from worker.contract import ActionName
from worker.providers import rules_for, supported_providers
from worker.providers.rules import ActionRule

BEGIN = "<!-- rules:begin -->"
END = "<!-- rules:end -->"
_HEADER = ("| provider | action | reference | reason | options |\n"
           "|---|---|---|---|---|")


def _reference(rule: ActionRule) -> str:
    parts = []
    if rule.reference_pattern is not None:
        parts.append(rule.reference_format or f"matches `{rule.reference_pattern.pattern}`")
    if rule.reference_max_length is not None:
        parts.append(f"at most {rule.reference_max_length} characters")
    return "; ".join(parts) or "any"


def _reason(rule: ActionRule) -> str:
    if rule.reason_min_length:
        return f"**required**: at least {rule.reason_min_length} characters once trimmed"
    return "optional"


def _option(name: str, schema: dict[str, Any]) -> str:
    """One option's rule from its JSON Schema: its values, or its type and bounds."""
    default = schema.get("default")
    if "enum" in schema:
        values = " \\| ".join(f"`{value}`" + (" (default)" if value == default else "")
                              for value in schema["enum"])
        return f"`{name}`: {values}"
    text = f"`{name}`: {schema.get('type', 'any')}"
    if "minimum" in schema:
        text += f" ≥ {schema['minimum']}"
    if "description" in schema:
        text += f" ({schema['description']})"
    if "default" in schema:
        text += f", default `{default}`"
    return text


def _options(model: type[BaseModel] | None) -> str:
    if model is None:
        return "not read"
    properties: dict[str, dict[str, Any]] = model.model_json_schema().get("properties", {})
    if not properties:
        return "none: any option is refused"
    return "; ".join(_option(name, schema) for name, schema in properties.items())


def table() -> str:
    """The Markdown table: one row per provider and action, in the registry's order."""
    rows = [_HEADER]
    for provider in supported_providers():
        rules = rules_for(provider)
        for action in get_args(ActionName):
            rule = rules.actions.get(action)
            if rule is None:
                rows.append(f"| `{provider}` | `{action}` | no API: refused"
                            " (`action_not_supported`) | | |")
                continue
            rows.append(f"| `{provider}` | `{action}` | {_reference(rule)} | {_reason(rule)}"
                        f" | {_options(rule.options)} |")
    return "\n".join(rows)


def _span(text: str) -> tuple[int, int]:
    """Where the text between the markers starts and ends; ValueError without them."""
    start = text.index(BEGIN) + len(BEGIN)
    return start, text.index(END, start)


def between_markers(text: str) -> str:
    """What ``text`` holds between the markers (stripped)."""
    start, end = _span(text)
    return text[start:end].strip()


def write(path: Path) -> None:
    """Replace what is between the markers of ``path`` with ``table()``."""
    text = path.read_text(encoding="utf-8")
    start, end = _span(text)
    path.write_text(f"{text[:start]}\n{table()}\n{text[end:]}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.providers.rulesdoc",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help="rewrite the table between the markers of FILE")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(table() + "\n")
    else:
        write(args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
