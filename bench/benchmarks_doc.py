"""docs/benchmarks.md is shared by the bench scripts: each owns one ``## `` section of it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
INTRO = (
    "# Benchmarks\n\nMeasured numbers from the scripts in `bench/`; each section says which "
    "script wrote it and on what machine.\n"
)


def write_section(heading: str, section: str, docs: Path = DOCS) -> None:
    """Replace the section that starts with ``heading``, or append it; others stay as they are."""
    text = docs.read_text() if docs.exists() else INTRO
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text.rstrip("\n") + "\n")


def add_render_only(parser: argparse.ArgumentParser, results: Path) -> None:
    parser.add_argument(
        "--render-only",
        action="store_true",
        help=f"rewrite the docs section from {results.name} without measuring",
    )


def render_only(heading: str, results: Path, markdown: Callable[[dict[str, Any]], str]) -> int:
    """Rewrite the script's docs section from its saved results; the exit code."""
    write_section(heading, markdown(json.loads(results.read_text())))
    print(f"rewrote {DOCS.name} from {results.name}", flush=True)
    return 0
