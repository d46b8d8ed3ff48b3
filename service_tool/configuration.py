"""Which configuration a command works with, and saying so (issue 22).

Without --config the tool uses the installed file, /etc/appliance/appliance.toml, and where
there is none the built-in defaults exactly as `appliance serve` without --config does:
relative paths against the working directory, so data in ./appliance-data, and the service
started in this directory is the one reached. A note on stderr says so.

A command that only reads the configuration (`reading`, `in_use`) goes on when the file does
not load, after a hand edit's typo, with the configuration of the running service started with
that file (found by its control socket: appliance/control/discovery.py), after a WARNING
naming each of the file's problems. A command that changes the file, puts it in force or
prepares the next start (`load`) refuses: it must not overwrite a file it could not read, nor
act on what the service would not accept.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config, data_dir, load_dict, load_or_defaults
from appliance.control.discovery import started_with
from appliance.errors import ConfigError

# Where the installed service reads its configuration (system/systemd/appliance.service).
DEFAULT_CONFIG = Path("/etc/appliance/appliance.toml")


def default_file() -> Path | None:
    """The installed file, or None where there is none: the built-in defaults."""
    try:
        DEFAULT_CONFIG.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return DEFAULT_CONFIG  # even when unreadable: loading it says why


def named(path: Path | None) -> str:
    return str(path.absolute()) if path is not None else "the built-in defaults"


@dataclass(frozen=True)
class InUse:
    config: Config
    file: Path | None  # None: the built-in defaults
    # Why the file does not load; `config` is then the running service's (pid `service_pid`).
    problems: tuple[ConfigError, ...] = ()
    service_pid: int | None = None

    @property
    def source(self) -> str:
        """Where `config` came from, for a heading or a status line."""
        if self.problems:
            return f"the running service (pid {self.service_pid}); {named(self.file)} does not load"
        return named(self.file)


def load(path: Path | None) -> Config | None:
    """The configuration in the file at `path` (None: the built-in defaults), or None after
    printing every problem: for commands that change the file or act on what it says."""
    used = in_use(path, fall_back=False)
    return announced(used).config if used else None


def reading(path: Path | None) -> Config | None:
    """As `load`, but a file that does not load is replaced by the running service's
    configuration when a service was started with it: for commands that only read."""
    used = in_use(path)
    return announced(used).config if used else None


def in_use(path: Path | None, fall_back: bool = True) -> InUse | None:
    """The configuration to use (see the module's docstring), or None after printing every
    problem of the file; the caller says which it is (`announced`, or in its own output)."""
    try:
        return InUse(load_or_defaults(path), path)
    except ConfigError as exc:
        used = _running(path, exc) if fall_back and path is not None else None
        if used is None:
            for problem in exc.problems:
                print(f"configuration invalid: {problem}", file=sys.stderr)
        return used


def announced(used: InUse) -> InUse:
    """`used`, after saying on stderr when it is not simply the file: the built-in defaults,
    or the running service's configuration in place of a file that does not load."""
    if used.file is None:
        print(f"note: no --config and no {DEFAULT_CONFIG}: using the built-in defaults, as 'appliance serve' "
              f"without --config does here: data in {data_dir(used.config)}", file=sys.stderr)
    for problem in used.problems:
        print(f"WARNING: {named(used.file)} does not load: {problem}", file=sys.stderr)
    if used.problems:
        print(f"WARNING: using the configuration the running service (pid {used.service_pid}) read from it "
              "before; it keeps running on it, but would not start with the file as it is ('service-tool config "
              "validate' lists what to fix)", file=sys.stderr)
    return used


def _running(path: Path, invalid: ConfigError) -> InUse | None:
    """The configuration of the service running with the file at `path`."""
    service = started_with(path)
    if service is None:
        return None
    try:
        config = load_dict(service.config, base_dir=str(service.base_dir))
    except ConfigError:
        return None  # a service of another version, with keys this tool does not know
    return InUse(config, path, invalid.problems, service.pid)
