"""PS3.8 PDUs as bytes: types, header checks, the fixed-size PDUs, and the association PDUs.

The A-ASSOCIATE-RQ/AC/RJ are decoded and encoded by pynetdicom's public PDU and primitive
classes; what the rest of the service needs from a request is copied into `Request`, so no
pynetdicom object travels further than presentation-context negotiation. Decoding a request
costs about 0.2 ms in pynetdicom: a modality sends the same bytes every time, so decoded
requests are kept by their bytes (`decode_request`).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_AC as _AC
from pynetdicom.pdu import A_ASSOCIATE_RJ as _RJ
from pynetdicom.pdu import A_ASSOCIATE_RQ as _RQ
from pynetdicom.pdu_primitives import (A_ASSOCIATE, AsynchronousOperationsWindowNegotiation,
                                       ImplementationClassUIDNotification, ImplementationVersionNameNotification,
                                       MaximumLengthNotification, SCP_SCU_RoleSelectionNegotiation)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from appliance.codes import uids

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)
NAMES = {ASSOCIATE_RQ: "A-ASSOCIATE-RQ", ASSOCIATE_AC: "A-ASSOCIATE-AC", ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
         P_DATA_TF: "P-DATA-TF", RELEASE_RQ: "A-RELEASE-RQ", RELEASE_RP: "A-RELEASE-RP", ABORT: "A-ABORT"}
HEADER = struct.Struct(">BxL")  # PDU type, reserved, length of what follows
PDV_HEADER = struct.Struct(">LBB")  # PDV item length, presentation context ID, message control header
PDV_OVERHEAD = HEADER.size + PDV_HEADER.size  # a P-DATA-TF carrying one PDV
COMMAND, LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)

# PS3.8 sets no maximum for an A-ASSOCIATE-RQ; real ones (128 contexts, user identity) stay
# well below 100 KiB. Release and abort PDUs are 10 bytes.
CONTROL_PDU_LIMIT = 1 << 20
_CACHED_REQUEST_SIZE = 16 << 10  # larger requests are decoded every time (the cache stays small)

RELEASE_RQ_PDU = struct.pack(">BxLL", RELEASE_RQ, 4, 0)
RELEASE_RP_PDU = struct.pack(">BxLL", RELEASE_RP, 4, 0)
# A-ABORT sources (PS3.8 9.3.8): the service user (the application decided) or the service
# provider (the upper layer saw a protocol error); the reason is given only by the provider.
USER, PROVIDER = 0, 2
UNEXPECTED_PDU, UNRECOGNIZED_PARAMETER, INVALID_PARAMETER = 2, 4, 6


class ProtocolError(Exception):
    """The peer's bytes break PS3.8 or our bounds; the message says how, for the log."""


def abort_pdu(source: int = USER, reason: int = 0) -> bytes:
    return struct.pack(">BxLxxBB", ABORT, 4, source, reason if source == PROVIDER else 0)


def check_header(pdu_type: int, length: int, max_pdata: int, expected: tuple[int, ...]) -> None:
    """ProtocolError unless a PDU of `pdu_type` is one of `expected` and `length` within our
    bounds: the maximum we advertised for P-DATA-TF (D-1), 4 for release and abort PDUs,
    CONTROL_PDU_LIMIT for the association PDUs."""
    name = NAMES.get(pdu_type)
    if name is None:
        raise ProtocolError(f"PDU type 0x{pdu_type:02X} is not a DICOM PDU")
    if pdu_type not in expected:
        raise ProtocolError(f"{name} received where {' or '.join(NAMES[t] for t in expected)} was expected")
    limit = max_pdata if pdu_type == P_DATA_TF else 4 if pdu_type >= RELEASE_RQ else CONTROL_PDU_LIMIT
    if length > limit:
        raise ProtocolError(f"{name} of {length} bytes announced, more than the {limit} accepted")


def describe(first: bytes) -> str:
    """What the first bytes of a non-DICOM connection look like, for a field engineer."""
    if first.startswith(b"\x16\x03"):
        return "a TLS handshake: the peer expects DICOM over TLS, which this AE does not offer"
    if first[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"CONN"):
        return "an HTTP request"
    return "first bytes " + first.hex(" ")


# --- A-ASSOCIATE-RQ (acceptor side) ------------------------------------------------------------

@dataclass(frozen=True)
class Context:
    """A proposed presentation context."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    """What an A-ASSOCIATE-RQ asks for. `pdu` keeps the bytes: the cache key of the answer."""

    calling: str
    called: str
    application_context: str
    contexts: tuple[Context, ...]
    roles: tuple[tuple[str, bool | None, bool | None], ...]  # (SOP class, SCU role, SCP role)
    max_length: int  # the peer's maximum P-DATA-TF length; 0: no limit
    window_proposed: bool  # an Asynchronous Operations Window item (AS-11)
    pdu: bytes


def decode_request(data: bytes) -> Request:
    """The request in a whole A-ASSOCIATE-RQ PDU (header included), or ProtocolError: the
    request cannot be parsed (AS-06), so it is answered 1/2/1."""
    if len(data) <= _CACHED_REQUEST_SIZE:
        return _decode_cached(data)
    return _decode(data)


@functools.lru_cache(maxsize=128)
def _decode_cached(data: bytes) -> Request:
    return _decode(data)


def _decode(data: bytes) -> Request:
    pdu = _RQ()
    try:
        pdu.decode(data)
        primitive = pdu.to_primitive()
        contexts = tuple(Context(c.context_id, str(c.abstract_syntax), tuple(str(ts) for ts in c.transfer_syntax))
                         for c in primitive.presentation_context_definition_list)
        roles, window = [], False
        for item in primitive.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                roles.append((str(item.sop_class_uid), item.scu_role, item.scp_role))
            window |= isinstance(item, AsynchronousOperationsWindowNegotiation)
        request = Request(primitive.calling_ae_title.strip(), primitive.called_ae_title.strip(),
                          str(primitive.application_context_name or ""), contexts, tuple(roles),
                          primitive.maximum_length_received, window, data)
    except Exception as exc:  # pynetdicom's decoders raise anything on bad input
        raise ProtocolError(f"A-ASSOCIATE-RQ cannot be decoded ({exc!r:.200})") from None
    if not request.application_context:
        raise ProtocolError("the A-ASSOCIATE-RQ has no application context item")
    if request.max_length is None:
        raise ProtocolError("the A-ASSOCIATE-RQ has no maximum length in its user information")
    for context in contexts:
        # pynetdicom's negotiation raises on such a context and then answers nothing at all.
        if not context.abstract_syntax or not context.transfer_syntaxes:
            raise ProtocolError(f"presentation context {context.context_id} has no abstract syntax "
                                "or no transfer syntax")
    return request


def requested_titles(data: bytes) -> tuple[str, str]:
    """(calling, called) from the fixed fields of an A-ASSOCIATE-RQ that cannot be decoded,
    for the rejection's log line."""
    return (data[26:42].decode("ascii", "replace").strip(), data[10:26].decode("ascii", "replace").strip())


@dataclass(frozen=True)
class Identity:
    """What our A-ASSOCIATE-RQ or -AC says of us: the largest P-DATA-TF we receive (CF-01,
    CF-14, CF-22), the implementation (AE-10, AE-11)."""

    max_pdu: int
    implementation_uid: str
    implementation_version: str

    def items(self) -> list:
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = self.max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = self.implementation_uid
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = self.implementation_version
        return [maximum, implementation, version]


def negotiate(request: Request, supported: list[PresentationContext]) -> tuple[list, list]:
    """pynetdicom's acceptor negotiation: (each proposed context with its result and chosen
    transfer syntax, the role selection answers)."""
    proposed = []
    for context in request.contexts:
        item = PresentationContext()
        item.context_id = context.context_id
        item.abstract_syntax = context.abstract_syntax
        item.transfer_syntax = list(context.transfer_syntaxes)
        proposed.append(item)
    roles = {uid: (scu, scp) for uid, scu, scp in request.roles}
    return negotiate_as_acceptor(proposed, supported, roles)


def accept_pdu(request: Request, results: list, roles: list, us: Identity) -> bytes:
    """The A-ASSOCIATE-AC answering `request` with negotiated `results` and role answers; a
    proposed Asynchronous Operations Window is answered 1/1 (AS-11)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    # PS3.8 9.3.3: the AC repeats the titles as the request had them.
    primitive.calling_ae_title, primitive.called_ae_title = request.calling, request.called
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = results
    items = us.items() + list(roles)
    if request.window_proposed:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        items.append(window)
    primitive.user_information = items
    pdu = _AC()
    pdu.from_primitive(primitive)
    return pdu.encode()


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    pdu = _RJ()
    pdu.result, pdu.source, pdu.reason_diagnostic = result, source, reason
    return pdu.encode()


# --- A-ASSOCIATE-RQ/AC/RJ (requestor side) -----------------------------------------------------

@dataclass(frozen=True)
class Proposal:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    as_scp: bool = False  # an SCP/SCU Role Selection item: we are SCP, not SCU (PC-13)


def request_pdu(calling: str, called: str, proposals: list[Proposal], us: Identity) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = uids.APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    contexts = []
    for proposal in proposals:
        context = PresentationContext()
        context.context_id = proposal.context_id
        context.abstract_syntax = proposal.abstract_syntax
        context.transfer_syntax = list(proposal.transfer_syntaxes)
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    roles = []
    for abstract_syntax in dict.fromkeys(p.abstract_syntax for p in proposals if p.as_scp):
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid, role.scu_role, role.scp_role = abstract_syntax, False, True
        roles.append(role)
    primitive.user_information = us.items() + roles
    pdu = _RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def decode_accept(body: bytes, proposals: list[Proposal]) -> tuple[dict[int, tuple[str, str]], int]:
    """({context ID: (abstract syntax, transfer syntax)} of the accepted contexts, the peer's
    maximum P-DATA-TF length, 0 for none) from an A-ASSOCIATE-AC's body; ProtocolError when
    it cannot be decoded."""
    pdu = _AC()
    try:
        pdu.decode(HEADER.pack(ASSOCIATE_AC, len(body)) + bytes(body))
        primitive = pdu.to_primitive()
    except Exception as exc:  # pynetdicom's decoders raise anything on bad input
        raise ProtocolError(f"the A-ASSOCIATE-AC cannot be decoded ({exc!r:.200})") from None
    proposed = {p.context_id: p for p in proposals}
    accepted = {}
    for result in primitive.presentation_context_definition_results_list:
        proposal = proposed.get(result.context_id)
        syntax = str(result.transfer_syntax[0]) if result.transfer_syntax else None
        # PS3.8 9.3.3.2: only an accepted context's transfer syntax counts, and it must be
        # one we proposed for that context.
        if result.result == 0 and proposal is not None and syntax in proposal.transfer_syntaxes:
            accepted[result.context_id] = (proposal.abstract_syntax, syntax)
    return accepted, primitive.maximum_length_received or 0


def describe_reject(body: bytes) -> str:
    pdu = _RJ()
    try:
        pdu.decode(HEADER.pack(ASSOCIATE_RJ, len(body)) + bytes(body))
    except Exception:
        return "undecodable A-ASSOCIATE-RJ"
    return (f"{pdu.result_str}, {pdu.source_str}, {pdu.reason_str} "
            f"({pdu.result}/{pdu.source}/{pdu.reason_diagnostic})")
