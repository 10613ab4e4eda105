"""What the bench scripts share."""
from __future__ import annotations

from typing import Optional


def emit_table(table: str, out: Optional[str]) -> None:
    """Print a Markdown table and, with --out, write it to that file too."""
    print(table)
    if out:
        with open(out, 'w') as f:
            f.write(table + '\n')
