"""The control socket's study commands: list, show, delete, edit (MG-01..MG-03).

Deletions and edits are made by the running service only, so that they share the index's
write lock and row caches with the C-STORE pipeline, and so that each is logged and audited
(AU-01) where every other change to the archive is. Listing and showing need no service:
the tool reads a stopped box's index itself (`appliance.store.db.read_only`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance import audit
from appliance.store import catalog, deletion, edits
from appliance.store.db import Index
from appliance.store.files import StorageArea

log = logging.getLogger("appliance.store")


def study_commands(index: Index, area: StorageArea, forget_cached_rows: Callable[[], None],
                   space_freed: Callable[[], None]) -> dict:
    """Control commands (name -> callable(request) -> answer) for the daemon's control server;
    `space_freed` is called after a deletion (the disk watermarks look again, MG-04)."""

    def listing(request: dict) -> dict:
        with index.db.connection_context():
            return {"ok": True, "studies": catalog.list_studies(**request.get("filters", {}))}

    def show(request: dict) -> dict:
        with index.db.connection_context():
            return {"ok": True, "study": catalog.show_study(request["study"], request.get("patient_id", ""))}

    def delete(request: dict) -> dict:
        operator = request.get("operator", "")
        with index.db.connection_context():
            deleted = deletion.delete(index, area, request["study"], request.get("series", ""),
                                      request.get("instance", ""), forget_cached_rows, request.get("patient_id", ""))
        space_freed()
        log.info("%s, asked by %s", deleted.describe(), operator or "an unknown operator")
        audit.studies_deleted(audit.Patient(deleted.patient_id, deleted.patient_name),
                              (audit.Study(deleted.study_instance_uid, tuple(deleted.sop_classes.items()),
                                          deleted.accession_number, deleted.study_description),), operator)
        return {"ok": True, "deleted": vars(deleted)}

    def edit(request: dict) -> dict:
        operator = request.get("operator", "")
        with index.db.connection_context():
            result = edits.edit(index, request["study"], request["changes"], operator, forget_cached_rows,
                                request.get("patient_id", ""))
        for change in result["changes"]:
            log.info("study %s edited by %s: %s %r -> %r", result["study_instance_uid"],
                     operator or "an unknown operator", change["keyword"], change["old_value"], change["new_value"])
        if result["changes"]:
            audit.patient_record_changed(audit.Patient(result["patient_id"], result["patient_name"]), operator)
        return {"ok": True, "edit": result}

    return {name: _answering_refusals(command) for name, command in
            (("study_list", listing), ("study_show", show), ("study_delete", delete), ("study_edit", edit))}


def _answering_refusals(command: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """What the operator asked for that cannot be done is an answer, not a service error."""
    def answer(request: dict) -> dict:
        try:
            return command(request)
        except catalog.NotFound as exc:
            return {"ok": False, "not_found": True, "error": str(exc)}
        except (catalog.BadFilter, catalog.Ambiguous, edits.BadEdit) as exc:
            return {"ok": False, "error": str(exc)}
    return answer
