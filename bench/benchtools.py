"""What the bench scripts share."""
from __future__ import annotations

from typing import Optional


def emit_table(table: str, out: Optional[str]) -> None:
    """Print a Markdown table and, with --out, write it to that file too."""
    print(table)
    if out:
        with open(out, 'w') as f:
            f.write(table + '\n')


def drone_list(n: int) -> str:
    """The config's drone list grown to n drones (drone1 the degraded requester, the others supporters), as a
    --set value."""
    items = ['{name: drone1, id: 1, role: requester, degraded: true}'] + [f'{{name: drone{i}, id: {i}}}'
                                                                           for i in range(2, n + 1)]
    return 'drones=[' + ', '.join(items) + ']'
