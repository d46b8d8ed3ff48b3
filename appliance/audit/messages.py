"""Audit messages in the "DICOM" format of DICOM PS3.15 A.5 (AU-01): one AuditMessage each.

Pure functions from what happened to the XML of one message, one builder per event of A.5.3
the appliance reports. Element order and attributes follow the schema of A.5.1
(`tests/resources/audit-message.rng` is that schema; every message the tests provoke is
validated against it), codes are written as `csd-code` / `codeSystemName` / `originalText`.

The schema asks every ParticipantObjectIdentification for a ParticipantObjectName or a
ParticipantObjectQuery, although A.5.3 makes the name optional for studies: a study carries
its Study Description as the name (empty when it has none), so that a collector validating
against the published schema accepts every message.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """A coded value: (code, coding scheme, meaning)."""

    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# EventID (PS3.16 CID 400 "Audit Event ID")
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
BEGIN_TRANSFERRING = _dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = _dcm("110105", "DICOM Study Deleted")
PATIENT_RECORD = _dcm("110110", "Patient Record")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
# EventTypeCode (CID 401 "Audit Event Type Code", CID 403 "Security Alert Type Code")
APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")
# RoleIDCode (CID 402 "Audit Active Participant Role ID Code")
APPLICATION = _dcm("110150", "Application")
APPLICATION_LAUNCHER = _dcm("110151", "Application Launcher")
DESTINATION = _dcm("110152", "Destination Role ID")
SOURCE = _dcm("110153", "Source Role ID")
DESTINATION_MEDIA = _dcm("110154", "Destination Media")
# ParticipantObjectIDTypeCode (CID 404 and RFC 3881's table)
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
NODE_ID = _dcm("110182", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")

# EventOutcomeIndicator (A.5.1): success, minor failure, serious failure, major failure
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"
# ParticipantObjectTypeCode / ParticipantObjectTypeCodeRole (A.5.1.2)
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_MASTER_FILE, ROLE_SECURITY_RESOURCE = "1", "3", "5", "13"
# AuditSourceTypeCode (A.5.1.2.1): application server process
_APPLICATION_SERVER = "4"


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a process (ours: its process ID), a remote AE (its title) or a person."""

    user_id: str
    requestor: bool
    roles: tuple[Code, ...] = ()
    alternative: str = ""  # AlternativeUserID: "AETITLES=A;B" for a DICOM application (A.5.2.2)
    name: str = ""  # UserName
    address: str = ""  # NetworkAccessPointID: an IP address or a host name


def ae_titles(*titles: str) -> str:
    """A.5.2.2: the AE titles of a DICOM application, "AETITLES=TITLE1;TITLE2"."""
    found = [t.strip() for t in titles if t and t.strip()]
    return "AETITLES=" + ";".join(dict.fromkeys(found)) if found else ""


@dataclass(frozen=True)
class Study:
    """A study object: its UID, (SOP Class UID, number of instances) pairs and description."""

    uid: str
    sop_classes: tuple[tuple[str, int], ...] = ()
    accession: str = ""
    description: str = ""  # written as the ParticipantObjectName (see the module's note)


@dataclass(frozen=True)
class Patient:
    id: str
    name: str = ""  # DICOM PN, e.g. "Doe^Jane"


@dataclass(frozen=True)
class Subject:
    """The subject of a security alert: a node (its IP or name) or a file (a URI)."""

    id: str
    id_type: Code  # NODE_ID or URI
    description: str  # the "Alert Description" detail
    name: str = ""
    role: str = ""  # ROLE_MASTER_FILE, ROLE_SECURITY_RESOURCE or "" (not given)


# --- the events of A.5.3 ------------------------------------------------------------------------

def application_activity(source_id: str, when: datetime.datetime, started: bool, application: Participant,
                         launchers: tuple[Participant, ...] = (), outcome: str = SUCCESS) -> bytes:
    """A.5.3.1: the application started or stopped. `application` gets the role Application,
    `launchers` (who started or stopped it) Application Launcher."""
    root = _event(APPLICATION_ACTIVITY, "E", when, outcome, (APPLICATION_START if started else APPLICATION_STOP,))
    _participant(root, _with_roles(application, APPLICATION))
    for launcher in launchers:
        _participant(root, _with_roles(launcher, APPLICATION_LAUNCHER))
    _source(root, source_id)
    return _bytes(root)


def security_alert(source_id: str, when: datetime.datetime, types: tuple[Code, ...], outcome: str,
                   reporter: Participant, performers: tuple[Participant, ...] = (),
                   subjects: tuple[Subject, ...] = (), description: str = "") -> bytes:
    """A.5.3.11: e.g. NODE_AUTHENTICATION for a refused association or TLS handshake, outcome
    MINOR_FAILURE (the refusal was the mitigation); SECURITY_CONFIGURATION or
    SOFTWARE_CONFIGURATION for a configuration change. Performers are never requestors."""
    root = _event(SECURITY_ALERT, "E", when, outcome, types, description)
    _participant(root, reporter)
    for performer in performers:
        _participant(root, Participant(performer.user_id, False, performer.roles, performer.alternative,
                                       performer.name, performer.address))
    _source(root, source_id)
    for subject in subjects:
        element = _object(root, subject.id, subject.id_type, SYSTEM_OBJECT, subject.role, name=subject.name)
        _detail(element, "Alert Description", subject.description.encode("utf-8"))
    return _bytes(root)


def instances_transferred(source_id: str, when: datetime.datetime, action: str, outcome: str,
                          sender: Participant, receiver: Participant, studies: tuple[Study, ...], patient: Patient,
                          others: tuple[Participant, ...] = (), description: str = "") -> bytes:
    """A.5.3.7: instances of one patient went from `sender` (Source Role ID) to `receiver`
    (Destination Role ID); `when` is when the transfer ended. `action`: "C" the receiver did
    not hold them before, "R" otherwise or not known (the sender's report)."""
    root = _event(INSTANCES_TRANSFERRED, action, when, outcome, (), description)
    _transfer(root, source_id, sender, receiver, others, studies, patient)
    return _bytes(root)


def begin_transferring(source_id: str, when: datetime.datetime, sender: Participant, receiver: Participant,
                       studies: tuple[Study, ...], patient: Patient, others: tuple[Participant, ...] = (),
                       outcome: str = SUCCESS) -> bytes:
    """A.5.3.3: a transfer of one patient's instances begins (a C-MOVE's export)."""
    root = _event(BEGIN_TRANSFERRING, "E", when, outcome)
    _transfer(root, source_id, sender, receiver, others, studies, patient)
    return _bytes(root)


def query(source_id: str, when: datetime.datetime, outcome: str, requester: Participant, responder: Participant,
          sop_class: str, identifier: bytes, transfer_syntax: str, others: tuple[Participant, ...] = (),
          description: str = "") -> bytes:
    """A.5.3.10: a query was received. The object is the SOP Class queried, with the request's
    identifier (its data set bytes) as ParticipantObjectQuery and its transfer syntax."""
    root = _event(QUERY, "E", when, outcome, (), description)
    _participant(root, _with_roles(requester, SOURCE))
    _participant(root, _with_roles(responder, DESTINATION))
    for other in others:
        _participant(root, other)
    _source(root, source_id)
    element = _object(root, sop_class, SOP_CLASS_UID, SYSTEM_OBJECT, ROLE_REPORT, query=identifier)
    _detail(element, "TransferSyntax", transfer_syntax.encode("ascii"))
    return _bytes(root)


def study_deleted(source_id: str, when: datetime.datetime, outcome: str, deleters: tuple[Participant, ...],
                  studies: tuple[Study, ...], patient: Patient, description: str = "") -> bytes:
    """A.5.3.8 ("DICOM Study Deleted", code 110105): studies of one patient, or instances of
    them, were deleted (MG-02); `deleters`: the person and/or the process (1..2)."""
    root = _event(STUDY_DELETED, "D", when, outcome, (), description)
    for deleter in deleters:
        _participant(root, deleter)
    _source(root, source_id)
    _studies_and_patient(root, studies, patient)
    return _bytes(root)


def patient_record(source_id: str, when: datetime.datetime, action: str, outcome: str,
                   users: tuple[Participant, ...], patient: Patient, description: str = "") -> bytes:
    """A.5.3.14: a patient record was created ("C"), read ("R"), updated ("U", a study edit of
    MG-03) or deleted ("D"); `users`: the person and/or the process (1..2)."""
    root = _event(PATIENT_RECORD, action, when, outcome, (), description)
    for user in users:
        _participant(root, user)
    _source(root, source_id)
    _patient(root, patient)
    return _bytes(root)


# --- the parts -------------------------------------------------------------------------------------

# XML 1.0 has no place for these; DICOM values and peer AE titles may hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system,
                                       "originalText": code.meaning})


def _event(event_id: Code, action: str, when: datetime.datetime, outcome: str, types: tuple[Code, ...] = (),
           description: str = "") -> ET.Element:
    """The root and its EventIdentification. A.5.2.5: the time carries its zone offset."""
    if when.tzinfo is None:
        raise ValueError("EventDateTime needs a time zone (A.5.2.5)")
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": when.isoformat(timespec="milliseconds"),
        "EventOutcomeIndicator": outcome})
    _code(event, "EventID", event_id)
    for code in types:
        _code(event, "EventTypeCode", code)
    if description:
        ET.SubElement(event, "EventOutcomeDescription").text = _text(description)
    return root


def _with_roles(participant: Participant, role: Code) -> Participant:
    return Participant(participant.user_id, participant.requestor, (role,), participant.alternative,
                       participant.name, participant.address)


def _participant(root: ET.Element, p: Participant) -> None:
    attributes = {"UserID": _text(p.user_id) or "-"}
    if p.alternative:
        attributes["AlternativeUserID"] = _text(p.alternative)
    if p.name:
        attributes["UserName"] = _text(p.name)
    attributes["UserIsRequestor"] = "true" if p.requestor else "false"
    if p.address:
        attributes["NetworkAccessPointID"] = _text(p.address)
        attributes["NetworkAccessPointTypeCode"] = "2" if _is_ip(p.address) else "1"
    element = ET.SubElement(root, "ActiveParticipant", attributes)
    for role in p.roles:
        _code(element, "RoleIDCode", role)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _source(root: ET.Element, source_id: str) -> None:
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": _text(source_id) or "-"})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": _APPLICATION_SERVER})


def _object(root: ET.Element, object_id: str, id_type: Code, type_code: str, role: str, name: str | None = None,
            query: bytes | None = None) -> ET.Element:
    attributes = {"ParticipantObjectID": _text(object_id) or "-", "ParticipantObjectTypeCode": type_code}
    if role:
        attributes["ParticipantObjectTypeCodeRole"] = role
    element = ET.SubElement(root, "ParticipantObjectIdentification", attributes)
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    if query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(query).decode("ascii")
    else:
        ET.SubElement(element, "ParticipantObjectName").text = _text(name or "")
    return element


def _detail(element: ET.Element, kind: str, value: bytes) -> None:
    """A ParticipantObjectDetail: every value base64 (A.5.1's ValuePair)."""
    ET.SubElement(element, "ParticipantObjectDetail", {"type": kind, "value": base64.b64encode(value).decode("ascii")})


def _transfer(root: ET.Element, source_id: str, sender: Participant, receiver: Participant,
              others: tuple[Participant, ...], studies: tuple[Study, ...], patient: Patient) -> None:
    _participant(root, _with_roles(sender, SOURCE))
    _participant(root, _with_roles(receiver, DESTINATION))
    for other in others:
        _participant(root, other)
    _source(root, source_id)
    _studies_and_patient(root, studies, patient)


def _studies_and_patient(root: ET.Element, studies: tuple[Study, ...], patient: Patient) -> None:
    for study in studies:
        element = _object(root, study.uid, STUDY_INSTANCE_UID, SYSTEM_OBJECT, ROLE_REPORT, name=study.description)
        if study.sop_classes or study.accession:
            description = ET.SubElement(element, "ParticipantObjectDescription")
            if study.accession:
                ET.SubElement(description, "Accession", {"Number": _text(study.accession)})
            for sop_class, count in study.sop_classes:
                ET.SubElement(description, "SOPClass", {"UID": sop_class, "NumberOfInstances": str(count)})
    _patient(root, patient)


def _patient(root: ET.Element, patient: Patient) -> None:
    _object(root, patient.id, PATIENT_NUMBER, PERSON, ROLE_PATIENT, name=patient.name)


def _bytes(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
