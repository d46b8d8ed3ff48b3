"""`service-tool study list|show|delete|edit`: what the archive holds, and corrections by service staff (MG-01..MG-03).

`delete` and `edit` are done by the running service, over the control socket
(appliance/control/studies.py says why); `list` and `show` ask it too, and read a stopped
box's index themselves. Exit 0 when done, 1 when refused, not found or failed.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import sys

from appliance.config import data_dir
from appliance.control import socket_path
from appliance.control.client import NotRunning, ask
from appliance.units import size
from service_tool.configuration import reading

EXIT_FAILED = 1
_LONG = 3600.0  # a deletion of a large study is bounded by the disk, not by a fixed wait


def register(groups) -> None:
    group = groups.add_parser("study", help="list, show, delete or edit the studies the archive holds",
                              description="Find, show, remove and correct studies (service staff, MG-01..MG-03).")
    commands = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    listing = commands.add_parser(
        "list", help="the studies, filtered", description=(
            "List the studies with patient, study date, modalities, series, instances, size and when they were "
            "received. Filters match as C-FIND does: wildcards * and ? in --patient-id and --name (case-insensitive), "
            "a date or range YYYYMMDD-YYYYMMDD in --date and --received (received dates in UTC)."))
    listing.add_argument("--patient-id", default="", metavar="ID")
    listing.add_argument("--name", default="", metavar="PATTERN", help="patient's name, e.g. 'DOE^J*'")
    listing.add_argument("--date", default="", metavar="RANGE", help="study date or range")
    listing.add_argument("--received", default="", metavar="RANGE", help="date or range an instance was received on")
    listing.add_argument("--json", action="store_true", help="print a JSON list of studies")
    listing.set_defaults(run=run_list)

    show = commands.add_parser("show", help="one study: its series and its edit history",
                               description="Show one study, its series and every edit made to it.")
    show.add_argument("study", metavar="STUDY_UID")
    _patient_option(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(run=run_show)

    delete = commands.add_parser(
        "delete", help="remove a study, one of its series or one instance, files and index together",
        description="Remove a study (or one series or instance of it) from the archive through the running "
                    "service: index rows and files go together, durably, and the space is freed. Asks for "
                    "confirmation unless --yes. Logged and audited.")
    delete.add_argument("study", metavar="STUDY_UID")
    _patient_option(delete)
    part = delete.add_mutually_exclusive_group()
    part.add_argument("--series", default="", metavar="SERIES_UID", help="only this series of the study")
    part.add_argument("--instance", default="", metavar="SOP_INSTANCE_UID", help="only this instance of the study")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(run=run_delete)

    edit = commands.add_parser(
        "edit", help="correct a study's demographics in the index (files are never changed)",
        description="Change values in the index through the running service: C-FIND answers with them at once "
                    "and every later export carries them; stored files are never modified. Editable: "
                    "PatientName, PatientID, PatientBirthDate, PatientSex (the patient's: every study of the "
                    "patient shows them; a new PatientID moves the study to that patient), AccessionNumber, "
                    "StudyDescription, ReferringPhysicianName. Each edit is kept and shown by 'study show'.")
    edit.add_argument("study", metavar="STUDY_UID")
    _patient_option(edit)
    edit.add_argument("--set", dest="changes", action="append", required=True, metavar="KEYWORD=VALUE",
                      type=_assignment, help="a value to set (repeat for several)")
    edit.set_defaults(run=run_edit)


def _patient_option(command) -> None:
    command.add_argument("--patient-id", default="", metavar="ID",
                         help="the study of this patient, when its UID is filed under several "
                              "(storage_scp.hierarchy_conflict keep)")


def _assignment(text: str) -> tuple[str, str]:
    keyword, equals, value = text.partition("=")
    if not equals or not keyword.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEYWORD=VALUE")
    return keyword.strip(), value


def _operator() -> str:
    """Who asks, for the log and the audit trail: the login behind sudo, else this user."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _ask(config, command: str, **arguments) -> dict | None:
    """The service's answer, None when no service answers (said on stderr by the caller)."""
    try:
        return ask(socket_path(config), command, timeout=_LONG, **arguments)
    except NotRunning:
        return None


def _offline(config, command: str, **arguments) -> dict:
    """`list` and `show` on a stopped box: the same catalog, over the index read only."""
    from peewee import PeeweeException

    from appliance.store import catalog
    from appliance.store.db import read_only

    try:
        with read_only(config.index.url, data_dir(config)):
            if command == "study_list":
                return {"ok": True, "studies": catalog.list_studies(**arguments["filters"])}
            return {"ok": True, "study": catalog.show_study(arguments["study"], arguments["patient_id"])}
    except (catalog.NotFound, catalog.Ambiguous, catalog.BadFilter) as exc:
        return {"ok": False, "error": str(exc)}
    except (OSError, PeeweeException) as exc:
        return {"ok": False, "error": f"cannot read the index: {exc}"}


def _read(args, command: str, **arguments) -> dict | None:
    config = reading(args.config)
    if config is None:
        return None
    answer = _ask(config, command, **arguments)
    return answer if answer is not None else _offline(config, command, **arguments)


def run_list(args) -> int:
    filters = {"patient_id": args.patient_id, "name": args.name, "date": args.date, "received": args.received}
    answer = _read(args, "study_list", filters={k: v for k, v in filters.items() if v})
    if not _succeeded(answer):
        return EXIT_FAILED
    studies = answer["studies"]
    if args.json:
        print(json.dumps(studies, indent=2))
        return 0
    rows = [("STUDY DATE", "PATIENT ID", "PATIENT NAME", "MOD", "SERIES", "INSTANCES", "SIZE", "LAST RECEIVED",
             "STUDY INSTANCE UID")]
    rows += [(s["study_date"] or "-", s["patient_id"], s["patient_name"], ",".join(s["modalities"]) or "-",
              str(s["series_count"]), str(s["instances"]), size(s["bytes"]), _minute(s["last_received"]),
              s["study_instance_uid"]) for s in studies]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    total = sum(s["instances"] for s in studies)
    print(f"{len(studies)} {'study' if len(studies) == 1 else 'studies'}, {total} instances, "
          f"{size(sum(s['bytes'] for s in studies))}")
    return 0


def _minute(iso: str | None) -> str:
    """An index time (UTC) as the box's local time to the minute, with its offset."""
    if not iso:
        return "-"
    return datetime.datetime.fromisoformat(iso).astimezone().isoformat(timespec="minutes")


def run_show(args) -> int:
    answer = _read(args, "study_show", study=args.study, patient_id=args.patient_id)
    if not _succeeded(answer):
        return EXIT_FAILED
    study = answer["study"]
    if args.json:
        print(json.dumps(study, indent=2))
    else:
        print("\n".join(_study_text(study)))
    return 0


def _study_text(s: dict) -> list[str]:
    sex = "" if s["patient_sex"] == "U" else f", sex {s['patient_sex']}"
    born = f", born {s['patient_birth_date']}" if s["patient_birth_date"] else ""
    lines = [f"study {s['study_instance_uid']}",
             f"  patient      {s['patient_name'] or '(no name)'} (ID {s['patient_id']}{born}{sex})",
             f"  date         {s['study_date']} {s['study_time']}".rstrip(),
             f"  accession    {s['accession_number']}",
             f"  description  {s['study_description']}",
             f"  referring    {s['referring_physician']}",
             f"  holds        {s['instances']} instances in {s['series_count']} series, {size(s['bytes'])}",
             f"  received     {s['first_received']} .. {s['last_received']}",
             "  series:"]
    for series in s["series"]:
        lines.append(f"    {series['series_instance_uid']}  #{series['series_number'] or '-'} "
                     f"{series['modality'] or '-'}  {series['series_description']!r}  "
                     f"{series['instances']} instances, {size(series['bytes'])}")
    lines.append("  edits:" if s["edits"] else "  edits:       none")
    for e in s["edits"]:
        by = f" (by {e['operator']})" if e["operator"] else ""
        lines.append(f"    {e['edited_at']}  {e['keyword']}  {e['old_value']!r} -> {e['new_value']!r}{by}")
    return lines


def run_delete(args) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_FAILED
    what = (f"series {args.series} of study {args.study}" if args.series else
            f"instance {args.instance} of study {args.study}" if args.instance else f"study {args.study}")
    if not args.yes:
        shown = _ask(config, "study_show", study=args.study, patient_id=args.patient_id)
        if shown is None:
            return _not_running("study delete")
        if not _succeeded(shown):
            return EXIT_FAILED
        s = shown["study"]
        print(f"{what}: patient {s['patient_name']!r} (ID {s['patient_id']}), study date {s['study_date'] or '-'}, "
              f"the study holds {s['instances']} instances ({size(s['bytes'])})")
        if not _confirmed(f"delete {what} from the archive for good? [y/N] "):
            print("nothing deleted", file=sys.stderr)
            return EXIT_FAILED
    answer = _ask(config, "study_delete", study=args.study, series=args.series, instance=args.instance,
                  patient_id=args.patient_id, operator=_operator())
    if answer is None:
        return _not_running("study delete")
    if not _succeeded(answer):
        return EXIT_FAILED
    d = answer["deleted"]
    gone = "the study" if d["study_removed"] else what
    print(f"deleted {gone}: {d['instances']} instances, {d['series_removed']} series removed, "
          f"{size(d['bytes'])} freed ({d['seconds']} s)")
    return 0


def _confirmed(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def run_edit(args) -> int:
    config = reading(args.config)
    if config is None:
        return EXIT_FAILED
    answer = _ask(config, "study_edit", study=args.study, changes=dict(args.changes), patient_id=args.patient_id,
                  operator=_operator())
    if answer is None:
        return _not_running("study edit")
    if not _succeeded(answer):
        return EXIT_FAILED
    result = answer["edit"]
    if not result["changes"]:
        print(f"study {args.study}: nothing changed (the index holds these values already)")
        return 0
    for change in result["changes"]:
        print(f"{change['keyword']}: {change['old_value']!r} -> {change['new_value']!r}")
    patient_level = {"PatientName", "PatientBirthDate", "PatientSex"} & {c["keyword"] for c in result["changes"]}
    if patient_level and result["other_studies"]:
        print(f"{', '.join(sorted(patient_level))} belong to patient {result['patient_id']}: "
              f"{result['other_studies']} other studies of that patient show the new values too")
    print(f"study {args.study} edited; stored files are unchanged, C-FIND and exports use the new values")
    return 0


def _not_running(command: str) -> int:
    print(f"{command} refused: the service is not running; it is done by the service so that files and index "
          f"change together (start it: systemctl start appliance)", file=sys.stderr)
    return EXIT_FAILED


def _succeeded(answer: dict | None) -> bool:
    if answer is None:
        return False  # reading() said why
    if not answer.get("ok"):
        print(f"refused: {answer.get('error')}", file=sys.stderr)
        return False
    return True
