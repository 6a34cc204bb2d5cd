"""docs/benchmarks.md is shared by the bench scripts: each owns one ``## `` section of it."""

from __future__ import annotations

from pathlib import Path

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
