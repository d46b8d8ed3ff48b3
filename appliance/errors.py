"""The two error types that cross module boundaries."""


class ConfigError(ValueError):
    """An invalid configuration value; `key` is the dotted TOML key (e.g. ``storage_scp.port``)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class DicomStatusError(Exception):
    """A refusal that the protocol adapter turns into exactly this DIMSE status; `why`, the reason
    its log line gives, goes back as the response's Error Comment (UL-05)."""

    def __init__(self, status: int, why: str):
        super().__init__(f"0x{status:04X}: {why}")
        self.status = status
        self.why = why
