"""The STORAGE-SCP AE specification: Storage Commitment reports over a new association, the
accepted contexts, and storage and Storage Commitment behaviour as configured."""

from __future__ import annotations

from appliance.commitment import COMMITTABLE_CLASSES
from appliance.config.model import Config
from appliance.codes import status, uids
from appliance.dicom import contexts
from appliance.store import ingest
from service_tool.render import Block, BulletList, Heading, Paragraph, Table
from service_tool.statement.association import accepted_contexts, association_policies, rejections
from service_tool.statement.common import (CONTEXT_HEADER, SCP, code, context_rows, in_bytes, limit_text,
                                           listed, ports_text, retries, returned_statuses, seconds, sop_class_table,
                                           status_table, uid_name)


def _watermarks(config: Config) -> str:
    """MG-04: which disk watermarks are on, as a sentence."""
    levels = [f"below {percent} % as {name} (storage.{key})"
              for name, key in (("a warning", "warn_free_percent"), ("an alert", "alert_free_percent"))
              if (percent := getattr(config.storage, key))]
    if not levels:
        return "Free disk space is not watched (storage.warn_free_percent and storage.alert_free_percent are 0)."
    return (f"Free disk space is logged {' and '.join(levels)}, once each time it falls below the level; the "
            "service tool's status shows it with the ingest rate of the last 7 days and the days until the disk "
            "is full.")


def specification(config: Config) -> list[Block]:
    scp = config.storage_scp
    accepted = contexts.storage_scp_contexts(scp)
    reporters = [ae.ae_title.strip() for ae in config.remote_aes if ae.commitment]
    committable = sorted(COMMITTABLE_CLASSES, key=lambda uid: tuple(map(int, uid.split("."))))
    uncommittable = [c for c in scp.sop_classes if c not in COMMITTABLE_CLASSES]
    required = [*ingest.MANDATORY.values(), *ingest.DISPLAY.values(), "Pixel Data"]
    new_association = f"a new association from {scp.ae_title.strip()} to the requester's remote AE entry"
    when = (f"A Storage Commitment result (N-EVENT-REPORT) is always sent over {new_association}, as soon as the "
            "N-ACTION has been answered (storage_scp.always_new_association_for_reports = true)."
            if scp.always_new_association_for_reports else
            "A Storage Commitment result (N-EVENT-REPORT) is sent on the association that carried the N-ACTION, "
            "after its response. When the requester has released that association, answers the report with a "
            f"release request, or does not answer within {seconds(scp.idle_timeout)} (storage_scp.idle_timeout, "
            f"then A-ABORT), the report goes over {new_association}, at once.")
    duplicate = {"new_uid": "the new instance is kept as well, under a new SOP Instance UID assigned in the "
                            "database (and used when it is exported); its file stays as received",
                 "replace": "the new instance replaces the stored one (file and database entry)"}[scp.duplicate_policy]
    conflict = {"refuse": "the instance is refused with A900, its Error Comment naming the conflict",
                "keep": "the instance is stored under the study and series it names, and the database then holds "
                        "that series (or study) under both parents"}[scp.hierarchy_conflict]
    blocks = [
        Heading(3, f"{SCP} Application Entity Specification"),
        Heading(4, "SOP Classes"),
        Paragraph(f"{SCP} provides Standard Conformance to these SOP classes (storage classes: "
                  "storage_scp.sop_classes):"),
        sop_class_table(SCP, [(uids.VERIFICATION, "Yes (service tool)", "Yes"),
                               (uids.STORAGE_COMMITMENT_PUSH, "No", "Yes")]
                         + [(c, "No", "Yes") for c in scp.sop_classes]),
        Heading(4, "Association Policies"),
        *association_policies(
            SCP,
            [Paragraph(f"{SCP} accepts associations for Verification, Storage and Storage Commitment. It requests "
                       "associations only to send Storage Commitment results.")],
            [["Maximum number of simultaneous associations requested by peers", limit_text(scp)],
             ["Maximum number of simultaneous associations proposed by " + SCP, "1 (not configurable)"],
             ["Maximum number of outstanding Storage Commitment requests", "No limit"]],
            [Paragraph("Each association is served by its own thread, so a hung peer does not delay the others. "
                       "A peer may send further Storage Commitment requests before a result has been reported; "
                       "they are answered in turn.")],
            uids.IMPLEMENTATION_UID_SCP,
            [Paragraph(f"{SCP}'s Implementation Class UID differs from the other AEs'.")]),
        Heading(4, "Association Initiation Policy"),
        Heading(5, "Activity: Send Storage Commitment Notification over a New Association"),
        Heading(6, "Description and Sequencing of Activity"),
        Paragraph(f"{when} All of a requester's waiting reports go on one association, one association at a "
                  "time. A report whose attempt failed "
                  f"{retries(scp.report_attempts, scp.report_retry_interval)} (storage_scp.report_attempts, "
                  "storage_scp.report_retry_interval); then it is abandoned and an error is logged. Requests "
                  "acknowledged with 0000 are kept on disk and reported after a restart too. Remote AEs that "
                  f"receive reports over a new association: {listed(reporters)}."),
        Heading(6, "Proposed Presentation Contexts"),
        Paragraph("Storage Commitment is proposed with an SCP/SCU Role Selection item (SCP role). Verification "
                  "is proposed only by the service tool's diagnostic C-ECHO (service-tool echo --as scp)."),
        Table(f"Proposed Presentation Contexts for {SCP} AE", CONTEXT_HEADER,
              context_rows([(uids.STORAGE_COMMITMENT_PUSH, uids.EXPLICIT_LE),
                             (uids.STORAGE_COMMITMENT_PUSH, uids.IMPLICIT_LE)], "SCP")
              + context_rows([(uids.VERIFICATION, uids.IMPLICIT_LE)], "SCU")),
        Heading(6, "SOP Specific Conformance for Storage Commitment SOP Class"),
        status_table(f"{SCP} N-EVENT-REPORT Response Status Handling", [
            ("Success", code(status.SUCCESS), "Delivered; logged."),
            ("Warning", code(status.ATTRIBUTE_LIST_ERROR), "Delivered; a warning is logged."),
            ("Failure", "any other", "Not delivered; an error is logged. The reports still waiting on that "
                                     "association are sent no further; the attempt counts as failed."),
        ]),
        Heading(4, "Association Acceptance Policy"),
        Heading(5, "Activity: Receive Images and Storage Commitment Requests"),
        Heading(6, "Description and Sequencing of Activity"),
        Paragraph(f"{SCP} listens {ports_text(scp)}. An association request is checked in the order of the table "
                  "below and the first reason that applies is sent. Any number of instances, and Storage "
                  "Commitment requests, may follow each other on one association. With no message for "
                  f"{seconds(scp.idle_timeout)} (storage_scp.idle_timeout) the association is aborted; "
                  "instances already received stay stored."),
        rejections(SCP, config),
        Heading(6, "Accepted Presentation Contexts"),
        Paragraph("When a context offers several transfer syntaxes, the one accepted is the first of this "
                  "order (storage_scp.transfer_syntaxes): "
                  + ", ".join(uid_name(ts) for ts in scp.transfer_syntaxes) + ". JPEG Baseline is accepted "
                  "only for the classes in storage_scp.jpeg_sop_classes. A context for another abstract syntax "
                  "is refused (result 3), one without an accepted transfer syntax too (result 4)."),
        Table(f"Transfer Syntax Preference for {SCP} AE", ["Preference", "Transfer Syntax", "Transfer Syntax UID"],
              [[str(i), uid_name(ts), ts] for i, ts in enumerate(scp.transfer_syntaxes, 1)]),
        accepted_contexts(SCP, accepted),
        Heading(6, "SOP Specific Conformance for Verification SOP Class"),
        Paragraph(f"{SCP} answers C-ECHO with 0000. A C-ECHO restarts the association's idle timer."),
        Heading(6, "SOP Specific Conformance for Storage SOP Classes"),
        Paragraph("Level 2 (Full) storage: every element received, private ones included, is kept. The data "
                  "set is stored byte for byte as received, in the transfer syntax received, as a DICOM Part "
                  "10 file; the database holds the values used for query and retrieve. The success status is "
                  "sent only after the file is on disk and the database entry committed; from then on the "
                  "instance can be found, retrieved and committed. Instances are never deleted automatically."),
        BulletList([
            "Identical resend: an instance whose SOP Instance UID, SOP Class and data set (byte for byte, in the "
            "same transfer syntax) are already stored, e.g. sent again after a lost response, is answered 0000 and "
            "not stored a second time.",
            f"Duplicate SOP Instance UID with different content (storage_scp.duplicate_policy = "
            f"{scp.duplicate_policy}): {duplicate}.",
            "Series Instance UID already stored in another study, or Study Instance UID already stored for another "
            f"patient (storage_scp.hierarchy_conflict = {scp.hierarchy_conflict}): {conflict}. A query or retrieve "
            "of a study finds exactly the instances stored under it.",
            f"Coercion warning (storage_scp.coercion_warning = {str(scp.coercion_warning).lower()}): "
            + ("B000 is returned instead of 0000 when a value was coerced in the database."
               if scp.coercion_warning else "0000 is returned even when a value was coerced in the database."),
            f"Free space kept in reserve: {in_bytes(config.storage.reserve_bytes)} (storage.reserve_bytes); below "
            "it instances are refused with A700.",
            _watermarks(config),
            ("Refused data sets (A900, C000) are kept for diagnosis, at most "
             f"{scp.quarantine_max_files} files (storage_scp.quarantine)." if scp.quarantine else
             "Refused data sets are not kept (storage_scp.quarantine = false)."),
        ]),
        *returned_statuses(f"{SCP} C-STORE Response Status Return Reasons", [
            ("Success", code(status.SUCCESS), "Stored, or already stored (an identical resend)."),
            *([("Warning", code(status.COERCION_OF_DATA_ELEMENTS), "Stored; a value was coerced in the database.")]
              if scp.coercion_warning else []),
            ("Refused", code(status.OUT_OF_RESOURCES), "Not enough disk space, or the file or database entry "
                                                        "cannot be written. Nothing is kept."),
            ("Error", code(status.DATASET_MISMATCH), "An element has no value: " + ", ".join(required)
             + ". Or the SOP Class or Instance UID differs from the request's."
             + (" Or its series or study is stored under another study or patient."
                if scp.hierarchy_conflict == "refuse" else "")),
            ("Error", code(status.CANNOT_UNDERSTAND), "The data set cannot be parsed."),
            ("Error", code(status.UNEXPECTED_FAILURE), "An unexpected error; logged."),
        ]),
        Heading(6, "SOP Specific Conformance for Storage Commitment SOP Class"),
        Paragraph("An instance is committed when the database holds it under the SOP class the request names, "
                  "the class is one of those below, and its stored file still names it. The decision is made "
                  "when the request arrives; an instance received later is reported as failed. Storage Media "
                  "File-Set ID and UID are not supported. The result is described under Association "
                  "Initiation Policy."),
        Table("Referenced SOP Classes Supported for Storage Commitment", ["SOP Class Name", "SOP Class UID"],
              [[uid_name(c), c] for c in committable]),
    ]
    if uncommittable:
        blocks.append(Paragraph("Instances of these classes are stored but not committed (failure reason "
                                f"{code(status.SOP_CLASS_NOT_SUPPORTED)}): "
                                + "; ".join(f"{uid_name(c)} ({c})" for c in uncommittable) + "."))
    blocks += [
        *returned_statuses(f"{SCP} N-ACTION Response Status Return Reasons", [
            ("Success", code(status.SUCCESS), "The request is kept and will be reported."),
            ("Failure", code(status.PROCESSING_FAILURE), "The request cannot be read or kept; alert."),
            ("Failure", code(status.MISSING_ATTRIBUTE), "Transaction UID, Referenced SOP Sequence or an item's "
                                                         "UID is missing."),
            ("Failure", code(status.MISSING_ATTRIBUTE_VALUE), "One of them is empty."),
            ("Failure", code(status.NO_SUCH_ACTION), "The Action Type ID is not 1."),
        ]),
        Table("Storage Commitment Failure Reasons", ["Failure Reason", "Meaning"], [
            [code(status.NO_SUCH_OBJECT_INSTANCE), "The instance is not in the database."],
            [code(status.CLASS_INSTANCE_CONFLICT), "It is stored under another SOP class."],
            [code(status.SOP_CLASS_NOT_SUPPORTED), "Its class is not one commitment covers."],
            [code(status.PROCESSING_FAILURE), "Its stored file cannot be read."],
        ]),
    ]
    return blocks

