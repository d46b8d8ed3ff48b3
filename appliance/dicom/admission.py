"""Who may open an association with a listening AE, and how it is told no (AS-01..AS-10, CC-01..CC-03).

The acceptor reads the A-ASSOCIATE-RQ and asks `Admission.decide`, before any thread is
started for the connection. Everything is decided here, in the precedence of AS-09:
permanent configuration errors first, then transient limits, then the contexts. An
A-ASSOCIATE-RQ that cannot be parsed (AS-06, first in precedence) never gets this far: the
acceptor answers it with the same log line, `log_rejection`.

One request passes the calling-AE and IP allow-lists (SE-02, SE-03) whatever they say: the
service tool's own diagnostic echo (`service-tool echo --local`), which calls as SERVICE_TOOL
from the box itself and proposes Verification only. An installer's allow-list (a `remote
import` turns them on) must not lock out the field engineer's first check, and the exception
opens nothing: such an association can carry C-ECHO and nothing else, and "the box itself" is
an address a remote host cannot complete a TCP handshake from (loopback, or the connection's
own local address).

An admitted association holds a slot (counted against max_associations, listed by `status`,
aborted by `abort_all`) from its admission until it is released or aborted; `active` counts
those whose thread still runs (a C-MOVE export outlives its association, QM-15), which the
shutdown drain waits for.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from typing import Callable

from appliance import audit
from appliance.codes import uids
from appliance.config.model import ListeningAE
from appliance.dicom.pdu import Request
from appliance.tls.certificates import same_subject

log = logging.getLogger("appliance.association")


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ's result, source and reason (PS3.8 9.3.4), and the requirement behind it."""

    result: int
    source: int
    reason: int
    requirement: str

    def __str__(self) -> str:
        return f"A-ASSOCIATE-RJ result {self.result}, source {self.source}, reason {self.reason} ({self.requirement})"


UNPARSEABLE = Rejection(1, 2, 1, "AS-06")
APPLICATION_CONTEXT = Rejection(1, 1, 2, "AS-03")
CALLED_AE = Rejection(1, 1, 7, "AS-04")
CALLING_AE = Rejection(1, 1, 3, "AS-05")
ADDRESS = Rejection(1, 1, 1, "AS-08")
LIMIT = Rejection(2, 3, 2, "AS-01")
CONGESTION = Rejection(2, 3, 1, "AS-02")
NO_CONTEXT = Rejection(1, 1, 1, "AS-07")
# Refused for who the peer is, not for what it asks: each is audited (AU-01).
SECURITY_REFUSALS = (CALLED_AE, CALLING_AE, ADDRESS)

SERVICE_TOOL = "SERVICE_TOOL"  # the calling title of `service-tool echo --local`


def log_rejection(prefix: str, called: str, rejection: Rejection, why: str) -> None:
    """AS-10: calling AE, peer address (in `prefix`), called AE, result/source/reason."""
    log.warning("%s: association rejected (called %s): %s; %s", prefix, called or "?", why, rejection)


class Gate:
    """Shared by both listening AEs: while the service starts (index not open yet) or drains
    for shutdown, every otherwise acceptable request is answered 2/3/1 (AS-02)."""

    def __init__(self):
        self.state = "starting"  # -> "open" -> "draining"

    def open(self) -> None:
        self.state = "open"

    def drain(self) -> None:
        self.state = "draining"


def unmapped(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The peer's IP; a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d."""
    found = ipaddress.ip_address(address)
    if found.version == 6 and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


@dataclass(eq=False)
class Slot:
    """An admitted association's place, held until it is released or aborted."""

    calling: str
    association: object = None  # association.Association, once it exists


class Admission:
    """One listening AE's admission policy and the associations it has let in. Kept across
    reloads: associations admitted before keep counting against the new limits (CC-01)."""

    def __init__(self, name: str, gate: Gate):
        self.name = name
        self.gate = gate
        self._slots: list[Slot] = []
        self._running: list = []  # associations whose thread has not ended yet
        self._lock = threading.Lock()  # the limit check and the admission are one step

    def configure(self, policy: ListeningAE, calling_allow_list: tuple[str, ...],
                  pinned: dict[str, str] | None = None) -> None:
        """Apply (re)loaded settings. `calling_allow_list`: model.calling_allow_list, the remote
        AEs' flags included; `pinned`: model.pinned_subjects (SE-09)."""
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in policy.accepted_addresses)
        calling = frozenset(calling_allow_list)
        # one assignment: a request sees the old or the new rules
        self._rules = (policy, networks, calling, dict(pinned or {}))

    def decide(self, request: Request, address: str, local: str, acceptable: Callable[[], int],
               subject: str | None = None) -> Slot | tuple[Rejection, str]:
        """A slot for the association `request` asks for, or the rejection and why.
        `address`, `local`: the connection's peer and local IP; `acceptable()`: how many
        proposed contexts negotiation accepts (asked last, AS-07); `subject`: the client
        certificate's over TLS ("" without one), None over plain TCP."""
        with self._lock:
            ip = unmapped(address)
            refusal = self._refusal(request, ip, local_echo(request, ip, unmapped(local)), acceptable, subject)
            if refusal is None:
                slot = Slot(request.calling)
                self._slots.append(slot)
                return slot
        rejection, why = refusal
        if rejection in SECURITY_REFUSALS:  # AU-01: a Security Alert (Node Authentication), minor failure
            audit.node_authentication_failure(self._rules[0].ae_title.strip(), str(ip), f"{why}; {rejection}",
                                              request.calling, request.called)
        return refusal

    def enter(self, slot: Slot, association) -> None:
        with self._lock:
            slot.association = association
            self._running = [a for a in self._running if a.running()] + [association]

    def leave(self, slot: Slot) -> None:
        """The association was released or aborted (or never started): its slot is free, and
        the instances it stored are audited, one message per study (AU-01)."""
        with self._lock:
            if slot not in self._slots:
                return
            self._slots.remove(slot)
        association = slot.association
        if association is not None and association.session.received:
            session = association.session
            audit.instances_received(association.called, session.title, session.ip, session.received)

    def current(self) -> list:
        """The admitted associations not ended yet, for `status` and `abort_all`."""
        with self._lock:
            return [slot.association for slot in self._slots if slot.association is not None]

    def active(self) -> int:
        """Associations whose thread still runs (their handlers may be running)."""
        with self._lock:
            self._running = [a for a in self._running if a.running()]
            return len(self._running)

    def _refusal(self, request: Request, address, listed: bool, acceptable: Callable[[], int],
                 subject: str | None) -> tuple[Rejection, str] | None:
        """`listed`: the request passes the allow-lists without being on them (local_echo)."""
        policy, networks, accepted_calling, pinned = self._rules
        if request.application_context != uids.APPLICATION_CONTEXT:
            return APPLICATION_CONTEXT, f"application context {request.application_context} is not supported"
        if policy.check_called_ae and request.called != policy.ae_title.strip():
            return CALLED_AE, f"called AE title is not {policy.ae_title.strip()}"
        calling = request.calling
        if accepted_calling and calling not in accepted_calling and not listed:
            return CALLING_AE, (f"calling AE title {calling} is neither in accepted_calling_aes nor a remote AE "
                                f"allowed to {'store' if self.name == 'STORAGE-SCP' else 'query'}")
        if calling in pinned and (subject is None or not same_subject(subject, pinned[calling])):  # SE-09
            came = "over plain TCP" if subject is None else f"with the certificate {subject or '(none)'}"
            return CALLING_AE, (f"calling AE title {calling} must come over TLS with the certificate "
                                f"{pinned[calling]} (remote_aes[].tls_subject), it came {came}")
        if networks and not any(address in network for network in networks) and not listed:
            return ADDRESS, f"address {address} is not in accepted_addresses"
        if policy.association_limit == "per_calling_ae":
            running = sum(1 for slot in self._slots if slot.calling == calling)
            if running >= policy.max_associations:
                return LIMIT, f"{running} associations from {calling} already open (max_associations per calling AE)"
        elif len(self._slots) >= policy.max_associations:
            return LIMIT, f"{len(self._slots)} associations already open (max_associations)"
        if self.gate.state != "open":
            return CONGESTION, "the service is starting" if self.gate.state == "starting" \
                else "the service is shutting down"
        if not acceptable():
            return NO_CONTEXT, f"none of the {len(request.contexts)} proposed presentation contexts is acceptable"
        return None


def local_echo(request: Request, peer, local) -> bool:
    """`service-tool echo --local`: its calling title, from the box itself, and nothing but
    Verification proposed (so nothing but C-ECHO can follow)."""
    return (request.calling == SERVICE_TOOL and (peer.is_loopback or peer == local) and bool(request.contexts)
            and all(context.abstract_syntax == uids.VERIFICATION for context in request.contexts))
