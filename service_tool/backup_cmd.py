"""`service-tool backup --full DIR` and `service-tool restore DIR`: the whole archive (MG-05).

The work is done in appliance/store/full_backup.py and restore.py; here are the progress lines
on stderr, the summary on stdout (or JSON) and the exit codes. The `backup` command itself, with
its index-only form, is registered in maintenance_cmd.py, which hands `--full` over to here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from service_tool.configuration import DEFAULT_CONFIG, load

EXIT_FAILED = 1  # refused or failed: DIR holds the previous backup, the box is as it was
EXIT_USAGE = 2
PROGRESS_SECONDS = 10  # a progress line at least this often, whatever --progress-every says
_LISTED = 10  # files named in a summary; --json has them all


def register(groups) -> None:
    command = groups.add_parser(
        "restore", help="rebuild a box from a whole-archive backup (service stopped)",
        description="Restore a backup made with `backup --full`: the configuration to the file --config names "
                    "(a different file there is kept as <name>.replaced-<UTC time>), the index and the stored "
                    "files into the data directory that configuration names (a PostgreSQL index: into its database, "
                    "which must hold no archive; the files into storage.store_dir), every file checked against the "
                    "backup's SHA-256 checksums. The service must be stopped, on every box that shares a PostgreSQL "
                    "index, and the data directory must hold no "
                    "archive (absent, empty, or as a new box's service left it). The TLS key and certificates are "
                    "not in a backup. Exit 0 when restored, 1 when refused or failed (nothing is left restored).")
    command.add_argument("directory", type=Path, metavar="DIR", help="the backup's directory")
    command.add_argument("--data-dir", type=Path, metavar="PATH",
                         help="restore into PATH instead, and have the written configuration name it")
    command.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_progress_option(command)
    command.set_defaults(run=run_restore)


def add_full_options(command: argparse.ArgumentParser) -> None:
    """`backup`'s options for the whole archive (maintenance_cmd.py registers `backup`)."""
    command.add_argument("--full", type=Path, metavar="DIR",
                         help="back up the whole archive (configuration, index, stored files) into directory DIR, "
                              "a mounted disk or share; only what DIR does not hold yet is copied")
    command.add_argument("--verify-all", action="store_true",
                         help="with --full: also read back every file DIR already holds and copy again any "
                              "that no longer matches its checksum (reads the whole backup)")
    add_progress_option(command)


def add_progress_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--progress-every", type=int, default=1000, metavar="N",
                         help=f"a progress line on stderr every N files (default: 1000), and at least every "
                              f"{PROGRESS_SECONDS} s")


class Lines:
    """Progress on stderr: what is to be done, then files and MB done every N files or
    PROGRESS_SECONDS seconds."""

    def __init__(self, command: str, every: int):
        self.command, self.every = command, max(every, 1)
        self.files = self.nbytes = 0
        self.last = time.monotonic()

    def begin(self, text: str, files: int, nbytes: int) -> None:
        self.files, self.nbytes = files, nbytes
        self._print(text)

    def advance(self, files: int, nbytes: int) -> None:
        if files % self.every == 0 or time.monotonic() - self.last >= PROGRESS_SECONDS:
            self._print(f"{files}/{self.files} files, {nbytes / 1e6:.0f}/{self.nbytes / 1e6:.0f} MB")

    def _print(self, text: str) -> None:
        print(f"{self.command}: {text}", file=sys.stderr, flush=True)
        self.last = time.monotonic()


def run_full(args: argparse.Namespace) -> int:
    # Imported here: peewee and the store take a while to import, which other commands need not pay.
    from appliance.store.backup import BackupFailed
    from appliance.store.full_backup import back_up

    if args.dest is not None:
        print("backup: DEST and --full DIR exclude each other", file=sys.stderr)
        return EXIT_USAGE
    if args.config is None:  # the built-in defaults: a backup holds the file a restore writes back
        print(f"backup refused: there is no configuration file to back up (no --config and no {DEFAULT_CONFIG}); "
              "start the service with --config FILE", file=sys.stderr)
        return EXIT_FAILED
    config = load(args.config)
    if config is None:
        return EXIT_FAILED
    try:
        summary = back_up(args.config, config, args.full, Lines("backup", args.progress_every), args.verify_all)
    except BackupFailed as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(asdict(summary), indent=2) if args.json else _backup_text(summary))
    return 0


def _backup_text(s) -> str:
    """`s`: full_backup.Summary."""
    lines = [f"full backup {s.generation} in {s.directory}: {s.files} stored files ({s.bytes / 1e6:.0f} MB) of "
             f"{s.instances} instances in {s.studies} studies; {s.copied} copied ({s.copied_bytes / 1e6:.0f} MB), "
             f"{s.skipped} already there; {s.seconds} s, {s.mb_per_s} MB/s"]
    if s.removed:
        lines.append(f"{s.removed} files of earlier backups removed (their instances were deleted)")
    if s.deleted_during:
        lines.append(f"{s.deleted_during} instance deleted during the backup is not in it" if s.deleted_during == 1
                     else f"{s.deleted_during} instances deleted during the backup are not in it")
    lines += _listed(s.recopied, "copies in the backup no longer matched their checksum and were copied again")
    lines += _listed(s.changed, "stored files are not what an earlier backup copied (stored files never change: "
                                "the archive's copy may be damaged; the backup holds it as it is now)", "WARNING: ")
    lines += _listed(s.lost, "stored files are missing although the index names them: lost from the archive, "
                             "not in the backup", "WARNING: ")
    lines += _listed(s.not_removed, "files the backup no longer needs could not be removed", "WARNING: ")
    if s.same_disk:
        lines.append(f"WARNING: {s.directory} is on the data directory's disk: this backup does not survive the loss "
                     "of that disk (is the backup disk or share mounted?)")
    return "\n".join(lines)


def _listed(names: list[str], what: str, prefix: str = "") -> list[str]:
    if not names:
        return []
    return [f"{prefix}{len(names)} {what}:"] + [f"  {name}" for name in names[:_LISTED]] + (
        [f"  ... and {len(names) - _LISTED} more (--json lists them all)"] if len(names) > _LISTED else [])


def run_restore(args: argparse.Namespace) -> int:
    from appliance.config import load_file, tls_path
    from appliance.store.restore import Incomplete, Refused, restore
    from appliance.tls.certificates import tls_use

    config_file = args.config or DEFAULT_CONFIG  # written by the restore, also where there is none yet
    try:
        summary = restore(args.directory, config_file, Lines("restore", args.progress_every), args.data_dir)
    except Refused as exc:
        print(f"restore refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Incomplete as exc:
        print(f"restore failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    config = load_file(config_file)
    missing = [str(path) for path in (tls_path(config, key) for key in ("certificate", "key", "ca_bundle"))
               if not path.exists()]
    tls = {"used": bool(tls_use(config)), "missing": missing}
    print(json.dumps({**asdict(summary), "tls": tls}, indent=2) if args.json else _restore_text(summary, tls))
    return 0


def _restore_text(s, tls: dict) -> str:
    """`s`: restore.Summary."""
    where = ("given with --data-dir; the configuration now names it" if s.data_dir_given
             else "the one the configuration names")
    lines = [f"restored backup {s.generation} of {s.host} (made {s.made}) from {s.directory}: {s.files} stored files "
             f"({s.bytes / 1e6:.0f} MB) of {s.instances} instances in {s.studies} studies, every checksum verified; "
             f"{s.seconds} s, {s.mb_per_s} MB/s",
             f"data directory: {s.data_dir} ({where}{'; made by this restore' if s.data_dir_created else ''})",
             f"configuration: {s.config}" + (f" (the file that was there is kept as {s.config_replaced})"
                                              if s.config_replaced else "")]
    note = ("not restored: the TLS private key and certificates, which a backup never holds; import the certificate "
            "and CA bundle again (service-tool tls import-cert, tls import-ca) or make a new key (service-tool tls "
            "key, tls csr)")
    if tls["used"] and tls["missing"]:
        note += f". The configuration uses TLS and these files are missing: {', '.join(tls['missing'])}"
    return "\n".join(lines + [note])
