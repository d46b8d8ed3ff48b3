"""The configuration model: frozen dataclasses whose defaults are the conformance statement's.

Every field is one TOML key; `docs/configuration.md` documents each (default, meaning,
trade-off). Field metadata carries the checks the loader applies, so that a key's rule lives
next to its default. Requirement IDs refer to the project's requirements checklist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from appliance.codes import uids


def public_fields(cls) -> list[dataclasses.Field]:
    """The fields that are TOML keys (not the loader's own bookkeeping, marked `internal`)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _check(*checks, **meta):
    return {"checks": checks, **meta}


# --- value checks (each returns an error message or None) -----------------------------------

def port(v):
    return None if 1 <= v <= 65535 else "must be a TCP port between 1 and 65535"


def port_or_off(v):
    return None if 0 <= v <= 65535 else "must be 0 (off) or a TCP port between 1 and 65535"


def positive(v):
    return None if v > 0 else "must be greater than 0"


def non_negative(v):
    return None if v >= 0 else "must be 0 or greater"


def not_empty(v):
    return None if v.strip() else "must not be empty"


def percent_or_off(v):
    return None if 0 <= v <= 100 else "must be a percentage from 0 (off) to 100"


def socket_buffer(v):
    # setsockopt takes a C int; the kernel doubles the request, so half of INT_MAX is the ceiling.
    return None if 0 <= v <= 0x3FFFFFFF else "must be 0 (kernel autotuning) or a size up to 1073741823 bytes"


def pdu_size(v):
    # PS3.8 9.3.1: 0 would mean "unlimited"; we always advertise a bound.
    return None if 4096 <= v <= 0xFFFFFFFF else "must be between 4096 and 4294967295 bytes"


def one_of(*allowed):
    def check(v):
        return None if v in allowed else f"must be one of {', '.join(map(repr, allowed))}"
    return check


def ae_title(v):
    """AE-07: 1-16 characters of the default repertoire, no backslash or control characters."""
    title = v.strip(" ")
    if not title:
        return "must not be empty or all spaces"
    if len(title) > 16:  # surrounding spaces are not significant (AE-07), so not counted
        return f"{v!r} is longer than 16 characters"
    if any(c == "\\" or not (" " <= c <= "~") for c in title):
        return f"{v!r} may hold only printable ASCII characters and no backslash"
    return None


def ae_titles(values):
    for v in values:
        if (err := ae_title(v)) is not None:
            return err
    return None


def uid_list(values):
    for v in values:
        if not uids.is_valid_uid(v):
            return f"{v!r} is not a valid UID"
    return None


def ip_networks(values):
    import ipaddress

    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"{v!r} is not an IPv4/IPv6 address or network"
    return None


def bind_address(v):
    import ipaddress

    if v == "*":
        return None
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"{v!r} is not an IP address (use \"*\" for all IPv4 and IPv6 addresses)"
    return None


def transfer_syntax_subset(values):
    """PC-03/PC-04: an ordered subset of the syntaxes the STORAGE-SCP can parse (no duplicates)."""
    for v in values:
        if v not in uids.SCP_TS_PREFERENCE:
            return f"{v!r} is not one of the supported transfer syntaxes {', '.join(uids.SCP_TS_PREFERENCE)}"
    if len(set(values)) != len(values):
        return "lists a transfer syntax twice"
    return None


def _is_dns_name(v: str) -> bool:
    """RFC 1123 labels of letters, digits and inner hyphens, 253 characters at most. The last
    label is not all digits (RFC 3696), so a mistyped IPv4 address is not taken for a name."""
    import re

    labels = v.removesuffix(".").split(".")
    return (len(v) <= 253 and not labels[-1].isdigit()
            and all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", l) for l in labels))


def host(v):
    """NW-11: an IPv4/IPv6 literal or a DNS name (RFC 1123 labels)."""
    import ipaddress

    try:
        ipaddress.ip_address(v)
        return None
    except ValueError:
        pass
    return None if _is_dns_name(v) else f"{v!r} is neither an IP address nor a host name"


def dns_name(v):
    return None if _is_dns_name(v) else f"{v!r} is not a DNS name (RFC 1123: letters, digits, '-' and '.')"


def dns_names(values):
    return next(filter(None, map(dns_name, values)), None)


def machine_name(v):
    """NW-12: one RFC 1123 label ("" = keep the box's). A dotted name would make networkd send
    DHCP's FQDN option instead of the host name option NW-05 asks for."""
    if v == "" or (len(v) <= 63 and "." not in v and _is_dns_name(v)):
        return None
    return f"{v!r} is not a machine name (1-63 letters, digits and inner '-', no dots)"


def usable_ip(v: str, version: int | None = None):
    """An IP literal we can configure or talk to; None, or why not. The box never has an IPv4
    link-local address (NW-07), so a 169.254/16 peer or gateway would be unreachable too."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        return f"{v!r} is not an {'IPv' + str(version) if version else 'IP'} address"
    if version and ip.version != version:
        return f"{v!r} is not an IPv{version} address"
    if getattr(ip, "scope_id", None):
        return f"{v!r} has a zone index ('%'), which netplan refuses; the box has one interface anyway"
    if ip.version == 4 and ip.is_link_local:
        return f"{v!r} is IPv4 link-local (169.254.0.0/16, Auto-IP), which the appliance never uses (NW-07)"
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast:
        return f"{v!r} is an unspecified, loopback or multicast address"
    return None


def ip_literals(values):
    return next(filter(None, map(usable_ip, values)), None)


def host_list(values):
    """Names or IP literals (NTP servers, NW-08); an IP literal must be one we can reach."""
    import ipaddress

    for v in values:
        try:
            ipaddress.ip_address(v)
            err = usable_ip(v)
        except ValueError:
            err = host(v)
        if err is not None:
            return err
    return None


def gateway(version: int):
    def check(v):
        return None if v == "" else usable_ip(v, version)
    return check


def interface_addresses(values):
    """Static addresses as "ip/prefix", IPv4 or IPv6, each IP once."""
    import ipaddress

    seen = set()
    for v in values:
        if "/" not in v:
            return f"{v!r} needs a prefix length, e.g. \"10.0.4.20/24\" or \"2001:db8::20/64\""
        try:
            iface = ipaddress.ip_interface(v)
        except ValueError:
            return f"{v!r} is not an IPv4/IPv6 address with a prefix length"
        if (err := usable_ip(str(iface.ip))) is not None:
            return err
        net = iface.network
        if iface.version == 4 and net.prefixlen <= 30 and iface.ip in (net.network_address, net.broadcast_address):
            return f"{v!r} is the network's own or broadcast address, not a host address"
        if iface.ip in seen:
            return f"lists {iface.ip} twice"
        seen.add(iface.ip)
    return None


def mtu_size(v):
    # IPv6 needs at least 1280 (RFC 8200) and the box speaks IPv6 (NW-11).
    return None if v == 0 or 1280 <= v <= 65535 else "must be 0 (the interface's default) or 1280 to 65535 bytes"


def zone_name(v):
    """A zone or link name of the box's tz database. tzdata.zi lists exactly those, unlike a
    walk of /usr/share/zoneinfo, which also holds tables and `localtime` (-> /etc/localtime)."""
    from pathlib import Path

    # Debian's tzdata is Priority: required, so the file is there on the box and in tests.
    try:
        lines = Path("/usr/share/zoneinfo/tzdata.zi").read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        return f"cannot be checked: {exc.strerror} reading /usr/share/zoneinfo/tzdata.zi (install tzdata)"
    names = {f.split()[1] for f in lines if f.startswith("Z ")} | {f.split()[2] for f in lines if f.startswith("L ")}
    return None if v in names else f"{v!r} is not a time zone of the tz database (e.g. \"Europe/Berlin\", \"UTC\")"


def interface_name(v):
    """Linux interface names: at most 15 bytes, no slash, colon or white space ("" = automatic)."""
    if v == "" or (len(v.encode()) <= 15 and v not in (".", "..") and not any(c in v for c in "/: \t\n")):
        return None
    return f"{v!r} is not a network interface name (at most 15 characters, no '/', ':' or spaces)"


def audit_collector(v):
    """AU-01: "" (off) or udp://, tcp:// or tls:// with a host and a port."""
    from urllib.parse import urlsplit

    if v == "":
        return None
    try:
        parts = urlsplit(v)
        port_number = parts.port
    except ValueError as exc:
        return f"{v!r} is not a collector address ({exc})"
    if parts.scheme not in ("udp", "tcp", "tls") or not parts.hostname or not port_number or parts.path not in ("", "/"):
        return f"{v!r} is not a collector address: \"udp://HOST:PORT\", \"tcp://HOST:PORT\" or \"tls://HOST:PORT\""
    return host(parts.hostname)


def index_url(v):
    """IX-01: "" (SQLite in the data directory) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB."""
    from urllib.parse import urlsplit

    if v == "":
        return None
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        return f"{_without_password(v)!r} is not a database URL ({exc})"
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.username \
            or not parts.path.strip("/") or "/" in parts.path.strip("/"):
        return (f"{_without_password(v)!r} is not a database URL: \"\" (SQLite in storage.data_dir) or "
                "\"postgresql://USER[:PASSWORD]@HOST[:PORT]/DB\"")
    return host(parts.hostname)


def _without_password(url: str) -> str:
    """A database URL as a message or a log line may show it."""
    import re

    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def da_or_empty(v):
    import re

    return None if v == "" or re.fullmatch(r"\d{8}", v) else "must be empty or a date YYYYMMDD"


# --- sections --------------------------------------------------------------------------------
# `inert` names the feature that will act on a key which is validated but not used yet; the
# service tool warns when such a key is set to something other than its default. `restart`
# marks a key the running service cannot change: a reload keeps its running value and says so.



@dataclass(frozen=True)
class ListeningAE:
    """Settings shared by the two listening AEs (STORAGE-SCP, QUERY-RETRIEVE-SCP)."""

    ae_title: str = field(default="", metadata=_check(ae_title))
    port: int = field(default=0, metadata=_check(port_or_off))  # 0: no plain listener (SE-07)
    tls_port: int = field(default=0, metadata=_check(port_or_off))  # SE-07: 0 = no TLS listener
    verify_clients: bool = True  # SE-09: when tls.ca_bundle exists, TLS clients must chain to it
    max_associations: int = field(default=10, metadata=_check(positive))  # CF-16, CF-23, CC-01
    association_limit: str = field(default="total", metadata=_check(one_of("total", "per_calling_ae")))  # CC-02
    accepted_calling_aes: tuple[str, ...] = field(default=(), metadata=_check(ae_titles))  # AS-05
    accepted_addresses: tuple[str, ...] = field(default=(), metadata=_check(ip_networks))  # AS-08
    check_called_ae: bool = True  # AS-04, D-14
    max_pdu_size: int = field(default=131072, metadata=_check(pdu_size))  # CF-14, CF-22, D-1
    idle_timeout: float = field(default=900.0, metadata=_check(positive))  # CF-15, CF-24


@dataclass(frozen=True)
class DefaultValues:
    """EL-02 / CF-32: values applied in the index when the element is absent or empty ("" = none)."""

    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = field(default="", metadata=_check(da_or_empty))
    study_date: str = field(default="", metadata=_check(da_or_empty))
    accession_number: str = ""
    modality: str = ""


@dataclass(frozen=True)
class StorageSCP(ListeningAE):
    ae_title: str = field(default="EX_STORE_SCP", metadata=_check(ae_title))
    port: int = field(default=4000, metadata=_check(port_or_off))
    idle_timeout: float = field(default=900.0, metadata=_check(positive))  # CF-15: 15 minutes
    sop_classes: tuple[str, ...] = field(default=uids.DEFAULT_STORAGE_CLASSES, metadata=_check(uid_list))  # AE-16
    transfer_syntaxes: tuple[str, ...] = field(default=uids.SCP_TS_PREFERENCE,
                                               metadata=_check(transfer_syntax_subset))  # PC-03/04
    jpeg_sop_classes: tuple[str, ...] = field(default=uids.JPEG_BASELINE_CLASSES, metadata=_check(uid_list))  # PC-02
    duplicate_policy: str = field(default="new_uid", metadata=_check(one_of("new_uid", "replace")))  # CF-30
    hierarchy_conflict: str = field(default="refuse", metadata=_check(one_of("refuse", "keep")))  # ST-26
    coercion_warning: bool = False  # ST-14, CF-31
    quarantine: bool = False  # ST-13, CF-38
    quarantine_max_files: int = field(default=100, metadata=_check(positive))
    archive_unsolicited: bool = field(default=True, metadata=_check(
        inert="received instances are always archived"))  # CF-18
    archive_retrieved: bool = field(default=False, metadata=_check(
        inert="the product issues no retrieve requests, so no such instances exist (D-13)"))  # CF-17
    always_new_association_for_reports: bool = False  # CF-19, SC-15
    report_attempts: int = field(default=5, metadata=_check(non_negative))  # CF-20, SC-20, D-6
    report_retry_interval: float = field(default=300.0, metadata=_check(positive))  # CF-21, SC-20
    exam_types: tuple[str, ...] = ()  # EL-12, CF-39
    default_values: DefaultValues = DefaultValues()


@dataclass(frozen=True)
class QueryRetrieveSCP(ListeningAE):
    ae_title: str = field(default="EX_QUERY_SCP", metadata=_check(ae_title))
    port: int = field(default=5000, metadata=_check(port_or_off))
    idle_timeout: float = field(default=180.0, metadata=_check(positive))  # CF-24: 3 minutes


@dataclass(frozen=True)
class StorageSCU:
    ae_title: str = field(default="EX_STORE_SCU", metadata=_check(ae_title))
    max_associations: int = field(default=10, metadata=_check(positive))  # CF-10, SU-03
    dimse_timeout: float = field(default=300.0, metadata=_check(positive))  # CF-11, SU-10
    open_retries: int = field(default=0, metadata=_check(non_negative))  # SU-04, D-4
    open_retry_delay: float = field(default=30.0, metadata=_check(positive))  # SU-04
    context_mode: str = field(default="single", metadata=_check(one_of("single", "multiple")))  # PC-08/09
    us_conversion: bool = True  # SU-09, CF-35
    max_pdu_size: int = field(default=131072, metadata=_check(pdu_size))  # CF-01
    sop_classes: tuple[str, ...] = field(default=uids.DEFAULT_STORAGE_CLASSES,
                                         metadata=_check(uid_list))  # PC-11


@dataclass(frozen=True)
class Storage:
    # Relative to the configuration file's directory.
    data_dir: str = field(default="appliance-data", metadata=_check(not_empty, restart=True))
    reserve_bytes: int = field(default=100 * 1024 * 1024, metadata=_check(non_negative, restart=True))  # ST-07
    # MG-04: percent of the file system free (as df counts it) below which the service logs a
    # WARNING or an ALERT (store/watermarks.py); 0 = off.
    warn_free_percent: int = field(default=15, metadata=_check(percent_or_off))
    alert_free_percent: int = field(default=5, metadata=_check(percent_or_off))
    # IX-02: where the stored files live; "" = <data_dir>/store. Several boxes sharing one
    # archive name the same directory (a shared file system) and the same [index] url.
    store_dir: str = field(default="", metadata=_check(restart=True))


@dataclass(frozen=True)
class Index:
    """IX-01: the index database. "" = SQLite in storage.data_dir (index.sqlite)."""

    url: str = field(default="", metadata=_check(index_url, restart=True))


@dataclass(frozen=True)
class HostMapping:
    """NW-10: a name that resolves without DNS (a line in /etc/hosts)."""

    name: str = field(default="", metadata=_check(dns_name, required=True))
    address: str = field(default="", metadata=_check(usable_ip, required=True))


@dataclass(frozen=True)
class Network:
    interface: str = field(default="", metadata=_check(interface_name))  # NW-01: "" = the one Ethernet NIC
    bind_address: str = field(default="*", metadata=_check(bind_address))  # NW-11
    socket_buffer_size: int = field(default=1342177, metadata=_check(socket_buffer))  # CF-08, D-3
    max_pdu_send: int = field(default=131072, metadata=_check(pdu_size))  # CF-02 (STORAGE-SCU's C-STOREs)
    # The box's own IP configuration (TL-03). Every value set here overrides the one DHCP
    # supplies, parameter by parameter (NW-06); "", [] and 0 leave it to DHCP.
    dhcp: bool = True  # NW-03: DHCPv4, DHCPv6 and router advertisements
    addresses: tuple[str, ...] = field(default=(), metadata=_check(interface_addresses))  # only with dhcp = false
    gateway4: str = field(default="", metadata=_check(gateway(4)))
    gateway6: str = field(default="", metadata=_check(gateway(6)))
    dns_servers: tuple[str, ...] = field(default=(), metadata=_check(ip_literals))  # NW-09
    search_domains: tuple[str, ...] = field(default=(), metadata=_check(dns_names))
    ntp_servers: tuple[str, ...] = field(default=(), metadata=_check(host_list))  # NW-08
    hostname: str = field(default="", metadata=_check(machine_name))  # NW-05, NW-12
    mtu: int = field(default=0, metadata=_check(mtu_size))  # NW-04
    time_zone: str = field(default="UTC", metadata=_check(zone_name))  # TL-03
    hosts: tuple[HostMapping, ...] = ()  # NW-10


@dataclass(frozen=True)
class Timeouts:
    connect: float = field(default=10.0, metadata=_check(positive))  # CF-03
    artim: float = field(default=30.0, metadata=_check(positive))  # CF-04
    association_response: float = field(default=30.0, metadata=_check(positive))  # CF-05
    send: float = field(default=30.0, metadata=_check(positive))  # CF-06
    pdu_gap: float = field(default=30.0, metadata=_check(positive))  # CF-07
    shutdown_drain: float = field(default=30.0, metadata=_check(non_negative))


@dataclass(frozen=True)
class Logging:
    level: str = field(default="info", metadata=_check(one_of("debug", "info", "warning", "error")))
    file: str = "appliance.log"  # relative to storage.data_dir; "" = stderr only
    max_bytes: int = field(default=10 * 1024 * 1024, metadata=_check(positive))  # LG-10
    backups: int = field(default=5, metadata=_check(non_negative))


@dataclass(frozen=True)
class Tls:
    """SE-08: the box's TLS identity and the CA bundle its peers must chain to (PEM files;
    relative to the configuration file's directory, so /etc/appliance/tls on the box)."""

    certificate: str = field(default="tls/appliance.crt", metadata=_check(not_empty))
    key: str = field(default="tls/appliance.key", metadata=_check(not_empty))
    ca_bundle: str = field(default="tls/ca.pem", metadata=_check(not_empty))


@dataclass(frozen=True)
class Audit:
    """AU-01..AU-03: the IHE ATNA audit trail (DICOM PS3.15 A.5 messages in syslog frames)."""

    collector: str = field(default="", metadata=_check(audit_collector))  # "" = no audit trail
    source_id: str = ""  # AuditSourceIdentification; "" = the machine name
    spool_max_bytes: int = field(default=16 * 1024 * 1024, metadata=_check(positive))  # AU-02


@dataclass(frozen=True)
class RemoteAE:
    ae_title: str = field(default="", metadata=_check(ae_title, required=True))
    host: str = field(default="", metadata=_check(host, required=True))
    port: int = field(default=0, metadata=_check(port, required=True))
    # What the remote AE may do (TL-02). The first two use its address; `store` and `query`
    # add its title to that SCP's calling-AE allow-list (AS-05), which then applies.
    move_destination: bool = True  # QM-04: may be named as a C-MOVE's Move Destination
    commitment: bool = True  # SC-13: receives Storage Commitment reports on a new association
    store: bool = False  # may associate with STORAGE-SCP (C-STORE, Storage Commitment N-ACTION)
    query: bool = False  # may associate with QUERY-RETRIEVE-SCP (C-FIND, C-MOVE)
    tls: bool = False  # SE-10: exports, commitment reports and echoes to it use TLS
    # SE-09: the subject its TLS certificate must have, both ways ("" = any the CA vouches for)
    tls_subject: str = ""


# The remote AE flag that admits a calling AE to each listening AE's section.
ADMITTING_FLAG = {"storage_scp": "store", "query_retrieve_scp": "query"}


def pinned_subjects(config: "Config") -> dict[str, str]:
    """SE-09: calling AE title -> the certificate subject it must present (over TLS only)."""
    return {ae.ae_title.strip(): ae.tls_subject for ae in config.remote_aes if ae.tls_subject}


def calling_allow_list(config: "Config", section: str) -> tuple[str, ...]:
    """AS-05, SE-02: the listening AE's calling-AE allow-list, its own titles then the remote AEs
    flagged for it; empty means any calling AE."""
    titles = [t.strip() for t in getattr(config, section).accepted_calling_aes]
    titles += [ae.ae_title.strip() for ae in config.remote_aes if getattr(ae, ADMITTING_FLAG[section])]
    return tuple(dict.fromkeys(titles))


@dataclass(frozen=True)
class Config:
    storage_scp: StorageSCP = StorageSCP()
    query_retrieve_scp: QueryRetrieveSCP = QueryRetrieveSCP()
    storage_scu: StorageSCU = StorageSCU()
    storage: Storage = Storage()
    index: Index = Index()
    network: Network = Network()
    timeouts: Timeouts = Timeouts()
    logging: Logging = Logging()
    tls: Tls = Tls()
    audit: Audit = Audit()
    remote_aes: tuple[RemoteAE, ...] = ()  # CF-40, AE-08: C-MOVE destinations
    # Where the file was read from; relative paths resolve against its directory.
    base_dir: str = field(default=".", metadata={"internal": True})
