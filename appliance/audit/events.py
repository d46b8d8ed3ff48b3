"""What the appliance audits, in its own terms (AU-01): each function records one kind of event.

Callers pass plain values (titles, addresses, UIDs); the participants and objects of PS3.15
A.5.3 are made here and the XML in the sender's thread. Every function returns at once and
does nothing while the trail is off.

Who is who (A.5.2.1, A.5.2.2): the appliance is its process ID (UserID) with the AE titles
that took part (AlternativeUserID "AETITLES=...", UserName "appliance") at its machine name;
a remote DICOM application is its AE title at its IP address (or the host name configured
for it), its process ID being unknown here.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from appliance.audit import messages as m
from appliance.audit import trail
from appliance.audit.messages import Participant, Patient, Study

log = logging.getLogger("appliance.audit")


def _never_raises(event):
    """An event must not break what it records: a bug here is logged (ERROR) and swallowed."""

    @functools.wraps(event)
    def call(*args, **kwargs) -> None:
        try:
            event(*args, **kwargs)
        except Exception:
            log.exception("audit: the %s event could not be recorded", event.__name__)

    return call


def _appliance(*titles: str, requestor: bool = False) -> Participant:
    return Participant(str(os.getpid()), requestor, alternative=m.ae_titles(*titles), name="appliance",
                       address=trail.hostname)


def _peer(title: str, address: str, requestor: bool) -> Participant:
    """A remote AE at the IP `address`; without a title (a TLS failure, before any
    A-ASSOCIATE-RQ) named by that address."""
    return Participant(title.strip() or address or "-", requestor, alternative=m.ae_titles(title), address=address)


# --- the application -------------------------------------------------------------------------------

@_never_raises
def application_started() -> None:
    """A.5.3.1 Application Start, when the service is ready."""
    _application(True)


@_never_raises
def application_stopped() -> None:
    """A.5.3.1 Application Stop, when the service has stopped serving."""
    _application(False)


def _application(started: bool) -> None:
    application = _appliance(*trail.titles, requestor=True)
    when = trail.now()
    trail.record(lambda source: m.application_activity(source, when, started, application),
                 when)


# --- security alerts ----------------------------------------------------------------------------------

@_never_raises
def node_authentication_failure(local_ae: str, peer_address: str, reason: str, calling_ae: str = "",
                                called_ae: str = "") -> None:
    """A.5.3.11 Security Alert, Node Authentication, minor failure (the refusal was the
    mitigation): an association refused for a security reason (calling or called AE title,
    address allow-list), or a TLS handshake that failed.

    `local_ae`: the listening AE's configured title; `peer_address`: the peer's IP as it
    knows it (session.known_ip); `reason`: what the service log says; `calling_ae` and
    `called_ae`: the titles of the A-ASSOCIATE-RQ, when one was read."""
    if not trail.active():
        return
    peer = _peer(calling_ae, peer_address, requestor=False)
    titles = f"calling AE {calling_ae or '?'}, called AE {called_ae or '?'}; " if calling_ae or called_ae else ""
    description = f"{titles}{reason}"
    subject = m.Subject(peer.address or peer.user_id, m.NODE_ID, description, name=calling_ae.strip())
    reporter = _appliance(local_ae)
    when = trail.now()
    trail.record(lambda source: m.security_alert(source, when, (m.NODE_AUTHENTICATION,), m.MINOR_FAILURE, reporter,
                                                  (peer,), (subject,), description), when)


@_never_raises
def configuration_changed(changed: Iterable[str], path: Path | str | None) -> None:
    """A.5.3.11 Security Alert for a configuration applied (a reload): Security Configuration
    when a key of `SECURITY_KEYS` changed, Software Configuration for any other; the subject
    is the configuration file (a URI), its description the keys that changed."""
    if not trail.active():
        return
    changed = sorted(changed)
    if not changed:
        return
    types = []
    if any(_is_security_key(key) for key in changed):
        types.append(m.SECURITY_CONFIGURATION)
    if not all(_is_security_key(key) for key in changed):
        types.append(m.SOFTWARE_CONFIGURATION)
    uri = Path(path).resolve().as_uri() if path else "about:built-in-defaults"
    description = "configuration applied; changed: " + ", ".join(changed)
    subject = m.Subject(uri, m.URI, description, name="appliance configuration", role=m.ROLE_MASTER_FILE)
    reporter = _appliance(*trail.titles, requestor=True)
    when = trail.now()
    trail.record(lambda source: m.security_alert(source, when, tuple(types), m.SUCCESS, reporter, (),
                                                  (subject,)), when)


# The keys that decide who may reach the box and how it proves itself (SE-01..SE-03, SE-07..SE-10, AU).
SECURITY_KEYS = ("tls.", "audit.", "remote_aes", ".accepted_calling_aes", ".accepted_addresses",
                 ".check_called_ae", ".tls_port", ".verify_clients")


def _is_security_key(key: str) -> bool:
    return any(key.startswith(k) if not k.startswith(".") else key.endswith(k) for k in SECURITY_KEYS)


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two `config.keys.to_dict` trees (a list of
    tables counts as one key)."""
    found = []
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(prefix + key)
    return found


# --- instances ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Tally:
    """The instances of one study stored on one association (STORAGE-SCP), counted per SOP
    class; kept in the session, reported when the association ends."""

    patient_id: str
    patient_name: str
    description: str
    accession: str
    classes: dict[str, int] = dataclasses.field(default_factory=dict)


def count_stored(received: dict, values) -> None:
    """One more instance stored (`values`: its store.coercion.IndexValues as indexed) into
    `received` (study UID -> Tally). A dict look-up and an addition: the C-STORE path's cost."""
    tally = received.get(values.study_instance_uid)
    if tally is None:
        name = f"{values.last_name}^{values.first_name}" if values.first_name else values.last_name
        tally = received[values.study_instance_uid] = Tally(values.patient_id, name, values.study_description,
                                                            values.accession_number)
    tally.classes[values.sop_class_uid] = tally.classes.get(values.sop_class_uid, 0) + 1


@_never_raises
def instances_received(local_ae: str, calling_ae: str, peer_address: str, received: dict) -> None:
    """A.5.3.7 DICOM Instances Transferred, action C, as the receiver: one message per study
    stored on the association that has just ended (`received`: study UID -> Tally)."""
    if not trail.active():
        return
    if not received:
        return
    sender = _peer(calling_ae, peer_address, requestor=True)
    receiver = _appliance(local_ae)
    when = trail.now()
    for uid, tally in list(received.items()):
        study = Study(uid, tuple(tally.classes.items()), tally.accession, tally.description)
        patient = Patient(tally.patient_id, tally.patient_name)
        trail.record(lambda source, study=study, patient=patient: m.instances_transferred(
            source, when, "C", m.SUCCESS, sender, receiver, (study,), patient), when)


@_never_raises
def export_begins(scu_ae: str, destination_ae: str, destination_host: str, requester_ae: str,
                  requester_address: str, items: list) -> None:
    """A.5.3.3 Begin Transferring DICOM Instances for a C-MOVE's export (one message per
    patient): STORAGE-SCU sends to the Move Destination for the requester."""
    if not trail.active():
        return
    sender, receiver, requester = _export_participants(scu_ae, destination_ae, destination_host, requester_ae,
                                                       requester_address)
    when = trail.now()
    for patient, studies in _by_patient(items):
        trail.record(lambda source, patient=patient, studies=studies: m.begin_transferring(
            source, when, sender, receiver, studies, patient, (requester,)), when)


@_never_raises
def export_ended(scu_ae: str, destination_ae: str, destination_host: str, requester_ae: str,
                 requester_address: str, sent: list, failed: list, why: str = "") -> None:
    """A.5.3.7 DICOM Instances Transferred, action R, as the sender: per patient, one message
    for the instances the destination took (success) and one for those that failed or were
    not sent after a failure (minor failure, with `why`)."""
    if not trail.active():
        return
    sender, receiver, requester = _export_participants(scu_ae, destination_ae, destination_host, requester_ae,
                                                       requester_address)
    when = trail.now()
    for items, outcome, description in ((sent, m.SUCCESS, ""), (failed, m.MINOR_FAILURE, why)):
        for patient, studies in _by_patient(items):
            trail.record(lambda source, patient=patient, studies=studies, outcome=outcome, description=description:
                         m.instances_transferred(source, when, "R", outcome, sender, receiver, studies, patient,
                                                 (requester,), description), when)


def _export_participants(scu_ae, destination_ae, destination_host, requester_ae, requester_address):
    sender = _appliance(scu_ae)
    receiver = Participant(destination_ae.strip() or destination_host, False,
                           alternative=m.ae_titles(destination_ae), address=destination_host)
    return sender, receiver, _peer(requester_ae, requester_address, requestor=True)


def _by_patient(items: list) -> list[tuple[Patient, tuple[Study, ...]]]:
    """retrieve.Items (in study order) as (patient, its studies with their classes and counts)."""
    patients: dict[str, tuple[Patient, dict[str, tuple[dict, dict[str, int]]]]] = {}
    for item in items:
        values = item.index_values
        key = values.get("patient_id", "")
        if key not in patients:
            first = values.get("first_name", "")
            name = f"{values.get('last_name', '')}^{first}" if first else values.get("last_name", "")
            patients[key] = (Patient(key, name), {})
        studies = patients[key][1]
        if item.study_instance_uid not in studies:
            studies[item.study_instance_uid] = (values, {})
        classes = studies[item.study_instance_uid][1]
        classes[item.sop_class_uid] = classes.get(item.sop_class_uid, 0) + 1
    return [(patient, tuple(Study(uid, tuple(classes.items()), values.get("accession_number", ""),
                                  values.get("study_description", ""))
                            for uid, (values, classes) in studies.items()))
            for patient, studies in patients.values()]


# --- queries -----------------------------------------------------------------------------------------------

@_never_raises
def query(local_ae: str, calling_ae: str, peer_address: str, sop_class: str, identifier: bytes | None,
          transfer_syntax: str, failure: str = "") -> None:
    """A.5.3.10 Query: a C-FIND received. `identifier`: the request's data set as received;
    `failure`: why it was refused (minor failure), "" when it was answered."""
    if not trail.active():
        return
    requester = _peer(calling_ae, peer_address, requestor=True)
    responder = _appliance(local_ae)
    data = bytes(identifier or b"")
    outcome = m.MINOR_FAILURE if failure else m.SUCCESS
    when = trail.now()
    trail.record(lambda source: m.query(source, when, outcome, requester, responder, sop_class, data,
                                        transfer_syntax, description=failure), when)


# --- archive management (for `service-tool study delete` and `study edit`, MG-02, MG-03) ---------------------

def _by(operator: str) -> tuple[Participant, ...]:
    """Who changed the archive: the operator, when known, asking the service (A.5.3.8, A.5.3.14)."""
    return ((Participant(operator, True, name=operator),) if operator else ()) + \
        (_appliance(*trail.titles, requestor=not operator),)


@_never_raises
def studies_deleted(patient: Patient, studies: tuple[Study, ...], operator: str = "", failure: str = "") -> None:
    """A.5.3.8 DICOM Study Deleted (110105): studies of one patient, or instances of them
    (`Study.sop_classes` counts what went), deleted at `operator`'s request (a login name, or
    "" when unknown) by the service."""
    if not trail.active():
        return
    outcome = m.MINOR_FAILURE if failure else m.SUCCESS
    when = trail.now()
    trail.record(lambda source: m.study_deleted(source, when, outcome, _by(operator), studies, patient, failure),
                 when)


@_never_raises
def patient_record_changed(patient: Patient, operator: str = "", action: str = "U", failure: str = "") -> None:
    """A.5.3.14 Patient Record (110110): a study edit changed a patient's demographics ("U"),
    or a record was created ("C") or deleted ("D"); `patient` as it is after the change."""
    if not trail.active():
        return
    outcome = m.MINOR_FAILURE if failure else m.SUCCESS
    when = trail.now()
    trail.record(lambda source: m.patient_record(source, when, action, outcome, _by(operator), patient, failure),
                 when)
