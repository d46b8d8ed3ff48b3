"""Who may open an association with a listening AE, and how it is told no (AS-01..AS-10, CC-01..CC-03).

pynetdicom checks the calling and called titles and a total association count, but in its own
order, and not the application context, an IP allow-list, per-calling-AE limits or a request
with no acceptable presentation context. So `server._make_ae` switches its checks off and
everything is decided here, on EVT_REQUESTED (the A-ASSOCIATE-RQ has been read, nothing has
been answered yet), in the precedence of AS-09: permanent configuration errors first, then
transient limits, then the contexts.

An A-ASSOCIATE-RQ that cannot be parsed (AS-06, first in precedence) never gets this far:
`framing` answers it with the same log line, `log_rejection`.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import negotiate_as_acceptor

from appliance.config.model import ListeningAE
from appliance.codes import uids

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


def reject_pdu(rejection: Rejection) -> bytes:
    """The encoded A-ASSOCIATE-RJ, for the refusals sent without pynetdicom's state machine."""
    pdu = A_ASSOCIATE_RJ()
    pdu.result, pdu.source, pdu.reason_diagnostic = rejection.result, rejection.source, rejection.reason
    return pdu.encode()


def log_rejection(prefix: str, called: str, rejection: Rejection, why: str) -> None:
    """AS-10: calling AE, peer address (in `prefix`), called AE, result/source/reason."""
    log.warning("%s: association rejected (called %s): %s; %s", prefix, called or "?", why, rejection)


@dataclass
class _Admitted:
    assoc: object  # pynetdicom's Association thread
    calling: str
    # An association counts against the limit until it is released or aborted, not until
    # pynetdicom's thread has wound down, so a peer that reconnects at once gets its slot back.
    associated: bool = True


class Gate:
    """Shared by both listening AEs: while the service starts (index not open yet) or drains
    for shutdown, every otherwise acceptable request is answered 2/3/1 (AS-02)."""

    def __init__(self):
        self.state = "starting"  # -> "open" -> "draining"

    def open(self) -> None:
        self.state = "open"

    def drain(self) -> None:
        self.state = "draining"


def peer_address(assoc) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The peer's IP; a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d."""
    address = ipaddress.ip_address(assoc.requestor.address)
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Admission:
    """One listening AE's admission policy and the associations it has let in."""

    def __init__(self, name: str, gate: Gate):
        self.name = name
        self.gate = gate
        self._admitted: list[_Admitted] = []
        self._lock = threading.Lock()  # the limit check and the admission are one step

    def configure(self, policy: ListeningAE, calling_allow_list: tuple[str, ...]) -> None:
        """Apply (re)loaded settings; associations already admitted keep counting (CC-01).
        `calling_allow_list`: model.calling_allow_list, the remote AEs' flags included."""
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in policy.accepted_addresses)
        calling = frozenset(calling_allow_list)
        self._rules = (policy, networks, calling)  # one assignment: a request sees the old or the new rules

    def active(self) -> int:
        """Admitted associations whose thread still runs (their handlers may be running)."""
        with self._lock:
            self._prune()
            return len(self._admitted)

    def _associated(self) -> list[_Admitted]:
        return [entry for entry in self._admitted if entry.associated]

    def handlers(self, session_of) -> list:
        """`session_of(assoc)` gives the tracker's session, for the log line's prefix."""

        def on_requested(event) -> None:
            assoc = event.assoc
            request = assoc.requestor.primitive
            with self._lock:
                self._prune()
                refusal = self._decide(assoc, request)
                if refusal is None:
                    self._admitted.append(_Admitted(assoc, request.calling_ae_title.strip()))
                    return
            session = session_of(assoc)
            session.stage = "rejected"
            rejection, why = refusal
            log_rejection(session.prefix(), request.called_ae_title.strip(), rejection, why)
            assoc.acse.send_reject(rejection.result, rejection.source, rejection.reason)
            # As pynetdicom does for its own rejections: wait until the A-ASSOCIATE-RJ is sent
            # and the peer has closed (or ARTIM expired), so the socket is not closed under it.
            assoc.kill()

        def on_end(event) -> None:
            with self._lock:
                for entry in self._admitted:
                    if entry.assoc is event.assoc:
                        entry.associated = False

        return [(evt.EVT_REQUESTED, on_requested), (evt.EVT_RELEASED, on_end), (evt.EVT_ABORTED, on_end),
                (evt.EVT_CONN_CLOSE, on_end)]

    def _prune(self) -> None:
        self._admitted = [entry for entry in self._admitted if entry.assoc.is_alive()]

    def _decide(self, assoc, request) -> tuple[Rejection, str] | None:
        policy, networks, accepted_calling = self._rules
        if str(request.application_context_name) != uids.APPLICATION_CONTEXT:
            return APPLICATION_CONTEXT, f"application context {request.application_context_name} is not supported"
        called = request.called_ae_title.strip()
        if policy.check_called_ae and called != policy.ae_title.strip():
            return CALLED_AE, f"called AE title is not {policy.ae_title.strip()}"
        calling = request.calling_ae_title.strip()
        if accepted_calling and calling not in accepted_calling:
            return CALLING_AE, (f"calling AE title {calling} is neither in accepted_calling_aes nor a remote AE "
                                f"allowed to {'store' if self.name == 'STORAGE-SCP' else 'query'}")
        address = peer_address(assoc)
        if networks and not any(address in network for network in networks):
            return ADDRESS, f"address {address} is not in accepted_addresses"
        associated = self._associated()
        if policy.association_limit == "per_calling_ae":
            running = sum(1 for entry in associated if entry.calling == calling)
            if running >= policy.max_associations:
                return LIMIT, f"{running} associations from {calling} already open (max_associations per calling AE)"
        elif len(associated) >= policy.max_associations:
            return LIMIT, f"{len(associated)} associations already open (max_associations)"
        if self.gate.state != "open":
            return CONGESTION, "the service is starting" if self.gate.state == "starting" \
                else "the service is shutting down"
        roles = {uid: (item.scu_role, item.scp_role) for uid, item in assoc.requestor.role_selection.items()}
        contexts, _ = negotiate_as_acceptor(request.presentation_context_definition_list,
                                            assoc.acceptor.supported_contexts, roles)
        if not any(context.result == 0x00 for context in contexts):
            return NO_CONTEXT, f"none of the {len(contexts)} proposed presentation contexts is acceptable"
        return None
