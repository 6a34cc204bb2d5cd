"""What the bench scripts write: their results files, with the run's environment, and their pages
under docs/. docs/benchmarks.md is shared, each script owning one ``## `` section of it: the
script's ``markdown(results)`` renders the section's body, ``write_section`` puts its heading on
top. A script with a page of its own rewrites the marked parts of it (``write_marked``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
INTRO = (
    "# Benchmarks\n\nMeasured numbers from the scripts in `bench/`; each section says which "
    "script wrote it and on what machine.\n"
)


def markdown_table(header: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines: ``header`` ("a | b | c") and its rule, then a line per row of cells."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(map(str, cells)) + " |"

    return [f"| {header} |", "|" + "---|" * len(header.split(" | ")), *map(line, rows)]


def write_section(heading: str, body: str, docs: Path = DOCS) -> None:
    """Replace the section that starts with ``heading`` by ``heading`` and ``body``, or append
    them; other sections stay as they are."""
    section = f"{heading}\n\n{body}"
    text = docs.read_text() if docs.exists() else INTRO
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text.rstrip("\n") + "\n")


def environment(versions: dict[str, str], **measured: Any) -> dict[str, Any]:
    """A results file's record of its run: when, on what machine, what the script ``measured``
    about it (threads, load averages) and the ``versions`` of the libraries that mattered."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        **measured,
        "versions": versions,
    }


def save_results(
    results: dict[str, Any], path: Path, heading: str, markdown: Callable[[dict[str, Any]], str], quick: bool
) -> None:
    """Write ``results`` to ``path`` as JSON first, then their section of docs/benchmarks.md
    unless ``quick`` (a smoke run leaves the committed numbers alone); says where they went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    if quick:
        where = "(quick run: committed results left alone)"
    else:
        write_section(heading, markdown(results))
        where = f"and the section of {DOCS.relative_to(ROOT)}"
    print(f"wrote {path.relative_to(ROOT)} {where}", flush=True)


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


def write_marked(doc: Path, marker: str, content: str, heading: str) -> None:
    """Put ``content`` between the ``<!-- marker -->`` and ``<!-- /marker -->`` lines of ``doc``,
    keeping the rest, and print it; a doc without them (or no doc yet) first gets ``heading`` and
    the pair."""
    opening, closing = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    text = doc.read_text() if doc.exists() else ""
    if opening not in text:
        text += f"{heading}\n\n{opening}\n{closing}\n"
    head, _, rest = text.partition(opening)
    _, _, tail = rest.partition(closing)
    doc.write_text(f"{head}{opening}\n{content}\n{closing}{tail}")
    print(content, flush=True)
