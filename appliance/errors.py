"""The two error types that cross module boundaries."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; `key` is the dotted TOML key (e.g. ``storage_scp.port``).

    The loader's error reads as the file's first problem, the one the service logs; `problems`
    holds every one of them, for `service-tool config validate`.
    """

    def __init__(self, key: str, message: str, problems: tuple[ConfigError, ...] = ()):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.problems = problems or (self,)


class DicomStatusError(Exception):
    """A refusal that the protocol adapter turns into exactly this DIMSE status; `why`, the reason
    its log line gives, goes back as the response's Error Comment (UL-05)."""

    def __init__(self, status: int, why: str):
        super().__init__(f"0x{status:04X}: {why}")
        self.status = status
        self.why = why
