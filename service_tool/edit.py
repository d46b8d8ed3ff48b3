"""How every editing command changes the configuration (TL-04).

The file is parsed with tomlkit, so the installer's comments and order survive; the change is
validated by the daemon's own loader and written atomically (`appliance.config.write`); an
invalid result is refused naming the key, and the file is left as it was. Then the running
service is asked to reload over its control socket. If it refuses (e.g. a new port is taken),
the previous file is put back, so the file always says what the box runs. A file that does not
load is refused as it is, never replaced, and so are the built-in defaults: there is no file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from appliance.config import Config, load_file
from appliance.config.model import calling_allow_list
from appliance.config.write import validated
from appliance.durable import write_text
from appliance.control import socket_path
from appliance.control.client import NotRunning, ask
from appliance.errors import ConfigError
from service_tool import privileged_port
from service_tool.configuration import DEFAULT_CONFIG

EXIT_REFUSED = 1
EXIT_USAGE = 2


class Refused(Exception):
    """The command's arguments cannot be applied (an unknown title, a duplicate): nothing written."""


def table(document, name: str):
    """The document's `[name]` table, created when the file does not have it yet."""
    if name not in document:
        separate(document)
        document[name] = tomlkit.table()
    return document[name]


def separate(document) -> None:
    """A blank line before a table about to be appended, as an installer would write it."""
    text = document.as_string()
    if text and not text.endswith("\n\n"):
        document.add(tomlkit.nl())


@dataclass(frozen=True)
class Written:
    """An edit on disk: the configuration before (what the service runs) and after."""

    running: Config
    old_text: str
    new: Config


def write(path: Path | None, mutate: Callable[[tomlkit.TOMLDocument], str]) -> tuple[Written, str]:
    """Apply `mutate` (returns a one-line description of the change) to the file at `path` and
    write it; raises ConfigError or Refused with the file untouched. A new listening port below
    1024 is made possible first, or refused (privileged_port.py)."""
    if path is None:
        raise Refused(f"there is no configuration file to change: no --config and no {DEFAULT_CONFIG}, so the "
                      "built-in defaults apply; write a file and start the service with --config FILE")
    running = load_file(path)
    old_text = path.read_text(encoding="utf-8")
    document = tomlkit.parse(old_text)
    described = mutate(document)
    text, new = validated(path, document)
    if refusal := privileged_port.prepare(running, new):
        raise Refused(refusal)
    write_text(path, text)
    return Written(running, old_text, new), described


def unchanged(path: Path | None) -> str:
    return f"{path} is unchanged" if path is not None else "nothing was written"


def put_back(path: Path, written: Written) -> None:
    write_text(path, written.old_text)


def change(path: Path, mutate: Callable[[tomlkit.TOMLDocument], str]) -> int:
    """The whole edit: write, say what changed, have the running service reload."""
    try:
        written, described = write(path, mutate)
    except (ConfigError, Refused) as exc:
        print(f"refused: {exc}; {unchanged(path)}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{described}; saved to {path}")
    for line in allow_list_changes(written.running, written.new):
        print(line)
    return reload_service(path, written)


def allow_list_changes(old: Config, new: Config) -> list[str]:
    """Say when an edit changes who may associate with an SCP AE: a remote AE's `store` flag, for
    one, turns STORAGE-SCP's allow-list on for every other calling AE too."""
    lines = []
    for name, section in (("STORAGE-SCP", "storage_scp"), ("QUERY-RETRIEVE-SCP", "query_retrieve_scp")):
        before, after = calling_allow_list(old, section), calling_allow_list(new, section)
        if before != after:
            lines.append(f"note: {name} now accepts calling AEs: {', '.join(after) or 'any'} "
                         f"(was: {', '.join(before) or 'any'})")
    return lines


def reload_service(path: Path, written: Written) -> int:
    """Ask the running service to reload; put the old file back if it refuses."""
    try:
        answer = ask(socket_path(written.running), "reload")
    except NotRunning:
        print("the service is not running; it will use the new configuration when it starts")
        return 0
    except PermissionError as exc:
        print(f"cannot reach the service ({exc.strerror}: {exc.filename}); run as root or a member of the "
              f"service's group, or reload it with 'systemctl reload appliance'", file=sys.stderr)
        return EXIT_REFUSED
    if answer.get("ok"):
        print("the service reloaded the configuration")
        return 0
    put_back(path, written)
    print(f"the service refused the new configuration: {answer.get('error')}; {path} is restored",
          file=sys.stderr)
    return EXIT_REFUSED
