"""Write the committed ``openapi.yaml`` from the app: ``python -m service.openapi_export``.

``tests/test_openapi.py`` fails when the file and the app disagree; run this after changing
a route, a schema or a problem type, and commit the result.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENAPI_YAML = ROOT / "openapi.yaml"


def document() -> dict[str, Any]:
    """The app's OpenAPI document; the settings are throwaway, as nothing in it depends on them."""
    from service.app import create_app
    from service.settings import Settings

    with tempfile.TemporaryDirectory() as data_dir:
        return create_app(Settings(data_dir=Path(data_dir), executor="local", database_url=None)).openapi()


def render(schema: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(schema, sort_keys=False, allow_unicode=True)


def main() -> int:
    OPENAPI_YAML.write_text(render(document()), encoding="utf-8")
    print(f"wrote {OPENAPI_YAML.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
