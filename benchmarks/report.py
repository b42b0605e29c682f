"""What every benchmark does with its results: print them and optionally keep them."""

from __future__ import annotations

import json
from typing import Any


def emit(report: dict[str, Any], path: str | None) -> dict[str, Any]:
    """Print the report as JSON on stdout and write it to ``path`` when given."""
    print(json.dumps(report, indent=1))
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    return report
