"""Sizes in words for the service log and `service-tool status`: decimal units, as `df -H` and
disk labels count."""

from __future__ import annotations


def size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"
