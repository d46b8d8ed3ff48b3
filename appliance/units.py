"""Numbers in words, for the service log and the service tool."""

from __future__ import annotations


def size(n: float) -> str:
    """Bytes in decimal units, as `df -H` and disk vendors count: "512 B", "104.9 MB"."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"
