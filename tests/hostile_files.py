"""Config file contents built to hurt a YAML loader, shared by the loader's tests and the reload tests."""

from __future__ import annotations


def merge_bomb(levels: int) -> str:
    """Each level merges the previous one twice: 2**levels keys if a loader expands it unbounded."""
    lines = ["l0: &l0 {a: 1, b: 2}"]
    lines += [f"l{i}: &l{i} {{<<: [*l{i - 1}, *l{i - 1}]}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"
