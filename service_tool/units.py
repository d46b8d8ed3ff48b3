"""Numbers as the service tool prints them."""

from __future__ import annotations


def size(n: float) -> str:
    """Bytes in decimal units, as `df -H` and disk vendors count: "512 B", "104.9 MB"."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
