"""RFC 5424 syslog messages, and the octet counting that frames them on a stream (AU-01).

An audit message is `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM XML`: facility 10
(authpriv), severity 5 (notice), MSGID "DICOM+RFC3881" for the DICOM format of PS3.15 A.5
(IHE ITI TF-2a 3.20). An ALERT of the service log (AU-03) is the same header with facility 3
(daemon), severity 1 (alert), MSGID "ALERT" and the log line as text.

On UDP one message is one datagram (RFC 5426); on TCP and TLS each is preceded by its length
in octets and a space (RFC 6587 3.4.1, RFC 5425 4.3).
"""

from __future__ import annotations

import datetime

AUTHPRIV, DAEMON = 10, 3  # facilities
ALERT, NOTICE = 1, 5  # severities
AUDIT_MSGID = "DICOM+RFC3881"
ALERT_MSGID = "ALERT"
_BOM = b"\xef\xbb\xbf"  # RFC 5424 6.4: MSG-UTF8 starts with it


def message(body: bytes, when: datetime.datetime, facility: int, severity: int, hostname: str, app_name: str,
            procid: str, msgid: str) -> bytes:
    """One RFC 5424 message without structured data; `body` is UTF-8."""
    header = (f"<{facility * 8 + severity}>1 {timestamp(when)} {_field(hostname, 255)} {_field(app_name, 48)} "
              f"{_field(procid, 128)} {_field(msgid, 32)} -")
    return header.encode("ascii") + b" " + _BOM + body


def timestamp(when: datetime.datetime) -> str:
    """RFC 5424 6.2.3: RFC 3339 with at most six digits of a second and the zone offset."""
    if when.tzinfo is None:
        raise ValueError("a syslog TIMESTAMP needs a time zone")
    return when.isoformat(timespec="microseconds")


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most `limit` characters; "-" if none."""
    cleaned = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return cleaned or "-"


def octet_counted(data: bytes) -> bytes:
    """RFC 6587 3.4.1 / RFC 5425 4.3: MSG-LEN SP SYSLOG-MSG."""
    return b"%d " % len(data) + data
