"""DCMTK's dcmqrscp.cfg <-> the appliance's remote AE table, for installers who ran dcmqrscp.

`parse` reads the HostTable (`name = (AETitle, host, port), ...` or `name = name, ...`) and the
AETable (`AETitle StorageArea Access (maxStudies, maxBytesPerStudy) Peers`). Every peer becomes
a remote AE. A peer that an AETable entry names gets the flags of that entry's access: R (read)
`query`, W (write) `store`, RW both; ANY sets none. Whatever else the file says is returned
as a warning naming its line, and what dcmqrscp itself would refuse raises ValueError.

`render` writes the box's two SCPs (AETable) and the remote AEs (HostTable) as a dcmqrscp.cfg
that dcmqrscp accepts. What dcmqrscp cannot hold is left out with a comment saying why.

The format is DCMTK's (dcmqrdb/docs/dcmqrcnf.txt). Where that text and the parser
(dcmqrdb/libsrc/dcmqrcnf.cc, 3.6.7) disagree, this module follows the parser. A peer is
(AETitle, host, port) in the AETable too. A value ends at a blank, '=' or ','. A quoted or
parenthesised value ends at the next quote or parenthesis of any kind. dcmqrscp reads every
line as one entry of its own; `parse` also joins the lines of an entry that spans lines, and
warns that dcmqrscp would not.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

from appliance.config import model
from appliance.config.model import Config, RemoteAE

TABLES = ("HostTable", "VendorTable", "AETable")
# dcmqrscp's other keywords, each with the appliance's nearest keys ("" = none).
GLOBALS = {
    "NetworkTCPPort": "storage_scp.port, query_retrieve_scp.port",
    "MaxPDUSize": "storage_scp.max_pdu_size, query_retrieve_scp.max_pdu_size",
    "MaxAssociations": "storage_scp.max_associations, query_retrieve_scp.max_associations",
    "SpecificCharacterSet": "", "UserName": "", "GroupName": "",
    # read and ignored by dcmqrscp too (left from CTN)
    "ApplicationTitle": "", "ApplicationContext": "", "ImplementationClass": "",
    "ImplementationVersion": "", "NetworkType": "", "Display": "", "DisplayPort": "",
}
# The flags an AETable entry's access gives its peers.
ACCESS = {"R": ("query",), "W": ("store",), "RW": ("store", "query"), "WR": ("store", "query")}
SCP_OF_FLAG = {"store": ("STORAGE-SCP", "storage_scp"), "query": ("QUERY-RETRIEVE-SCP", "query_retrieve_scp")}

_GAPS = " \t\n\r\f\v=,"
_QUOTES = "\"'()"
_CLOSING = {'"': '"', "'": "'", "(": ")"}
_QUOTA = re.compile(r"\s*([0-9]+)\s*,\s*([0-9]+)([kmg]?b)\s*", re.IGNORECASE)
_MAX_LINE = 510  # dcmqrscp reads lines with fgets(512): a longer one becomes two entries
_QUOTA_OUT = "(500, 1024mb)"  # dcmqrscp's largest (DB_UpperMaxStudies, DB_UpperMaxBytesPerStudy)


@dataclass
class Imported:
    remotes: list[RemoteAE] = field(default_factory=list)  # in the order the file defines them
    warnings: list[str] = field(default_factory=list)  # each "line N: ...", in line order


# --- parse -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    text: str
    quoted: bool
    line: int

    @property
    def is_peer(self) -> bool:
        return "," in self.text  # as dcmqrscp decides: only a quoted value can hold a comma


@dataclass
class _Peer:
    line: int
    host: str
    port: int
    problem: str | None  # why the appliance cannot take it, or None
    flags: set[str] = field(default_factory=set)


def parse(text: str) -> Imported:
    """The remote AEs of a dcmqrscp.cfg, and a warning per thing the appliance cannot represent.

    Raises ValueError naming the line for what dcmqrscp would refuse (an unknown keyword, a
    table without END, a symbolic name used before it is defined, a peer that is not
    (AETitle, host, port), a bad access or quota) and for quotes that are not closed.
    """
    reader = _Reader()
    section, begun, entry = None, 0, []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if section is None:
            section, begun = reader.global_line(number, words), number
        elif words[0] in TABLES:
            if words[:2] != [section, "END"]:
                raise ValueError(f"line {number}: {' '.join(words[:2])} before {section} END")
            reader.entry(section, entry)
            section, entry = None, []
        elif entry and (raw[0].isspace() or _unclosed("\n".join(piece for _, piece in entry))):
            reader.warn(number, f"continues the entry of line {entry[0][0]}; dcmqrscp reads every line "
                                "as an entry of its own, so it misreads or refuses this one")
            entry.append((number, raw))
        else:
            reader.entry(section, entry)
            entry = [(number, raw)]
    if section is not None:
        raise ValueError(f"line {begun}: {section} BEGIN has no {section} END")
    return reader.result()


def _unclosed(text: str) -> bool:
    """Whether a quote or parenthesis is left open (as in dcmqrscp, any of them closes it)."""
    opened = None
    for char in text:
        if char in _QUOTES:
            opened = None if opened else char
    return opened is not None


def _tokens(entry: list[tuple[int, str]]) -> list[_Token]:
    """dcmqrscp's values, each with its line; an entry may span lines."""
    text = "\n".join(raw for _, raw in entry)
    starts = [0]
    for _, raw in entry[:-1]:
        starts.append(starts[-1] + len(raw) + 1)
    tokens, pos = [], 0
    while pos < len(text):
        char, line = text[pos], entry[bisect_right(starts, pos) - 1][0]
        if char in _GAPS:
            pos += 1
        elif char in _CLOSING:
            end = next((i for i in range(pos + 1, len(text)) if text[i] in _QUOTES), None)
            if end is None or text[end] != _CLOSING[char]:
                raise ValueError(f"line {line}: {char} is not closed by {_CLOSING[char]}")
            tokens.append(_Token(text[pos + 1:end], True, line))
            pos = end + 1
        elif char in _QUOTES:
            raise ValueError(f"line {line}: {char} without an opening quote or parenthesis")
        else:
            end = pos
            while end < len(text) and text[end] not in _GAPS + _QUOTES:
                end += 1
            if end < len(text) and text[end] in _QUOTES:  # dcmqrscp would read both as one value
                raise ValueError(f"line {line}: put a blank between {text[pos:end]} and {text[end]}")
            tokens.append(_Token(text[pos:end], False, line))
            pos = end
    return tokens


class _Reader:
    def __init__(self):
        self.warnings: list[tuple[int, str]] = []
        self.symbols: dict[str, tuple[int, list[str]]] = {}  # HostTable name -> (line, peer titles)
        self.peers: dict[str, _Peer] = {}  # by AE title, as dcmqrscp keys them (case matters)
        self.own: dict[str, int] = {}  # AETable title -> its first line
        # AETable lines per flag: those admitting ANY calling AE, those naming peers
        self.open: dict[str, list[int]] = {"store": [], "query": []}
        self.restricted: dict[str, list[int]] = {"store": [], "query": []}

    def warn(self, line: int, message: str) -> None:
        self.warnings.append((line, message))

    def global_line(self, number: int, words: list[str]) -> str | None:
        """A line outside the tables; returns the table it begins, if it does."""
        keyword = words[0]
        if keyword in TABLES:
            if words[1:2] != ["BEGIN"]:
                raise ValueError(f"line {number}: {' '.join(words[:2])} without {keyword} BEGIN")
            return keyword
        if keyword not in GLOBALS:
            raise ValueError(f"line {number}: unknown keyword {keyword!r} (dcmqrscp refuses it too)")
        nearest = GLOBALS[keyword]
        self.warn(number, f"{keyword} is not imported" + (f"; the appliance's own are {nearest}" if nearest else ""))
        return None

    def entry(self, section: str, entry: list[tuple[int, str]]) -> None:
        if entry:
            read = {"HostTable": self.host_entry, "VendorTable": self.vendor_entry, "AETable": self.ae_entry}
            read[section](entry[0][0], _tokens(entry))

    def host_entry(self, line: int, tokens: list[_Token]) -> None:
        name, peers = _named(line, tokens, "HostTable")
        titles = self.peer_list(peers, define=True)
        if name in self.symbols:
            self.warn(line, f"symbolic name {name} is defined again; dcmqrscp uses line {self.symbols[name][0]}'s")
        else:
            self.symbols[name] = (line, titles)

    def vendor_entry(self, line: int, tokens: list[_Token]) -> None:
        name, peers = _named(line, tokens, "VendorTable")
        self.peer_list(peers, define=False)  # dcmqrscp takes no addresses from the VendorTable
        self.warn(line, f"VendorTable entry {name!r} is not imported: the appliance has no vendor groups")

    def ae_entry(self, line: int, tokens: list[_Token]) -> None:
        if len(tokens) < 5 or any(t.is_peer for t in tokens[:3]):
            raise ValueError(f"line {line}: an AETable entry is 'AETitle StorageArea Access "
                             "(maxStudies, maxBytesPerStudy) Peers'")
        title, area, access, quota = (t.text for t in tokens[:4])
        if access not in ACCESS:
            raise ValueError(f"line {tokens[2].line}: access {access!r} is not R, W or RW")
        size = _QUOTA.fullmatch(quota)
        if not tokens[3].quoted or not size or int(size[1]) == 0 or int(size[2]) == 0:
            raise ValueError(f"line {tokens[3].line}: quota {quota!r} is not (maxStudies, maxBytesPerStudy) "
                             "such as (10, 1024mb)")
        flags = ACCESS[access]
        note = f"AETable entry {title} ({area} {access} ({quota.strip()})) is dcmqrscp's own AE, not imported: " \
               "the appliance has its own two titles, one storage area and no quota"
        if tokens[4].text == "ANY" and not tokens[4].is_peer:
            if len(tokens) > 5:
                raise ValueError(f"line {tokens[5].line}: nothing may follow ANY")
            for flag in flags:
                self.open[flag].append(line)
        else:
            for peer in self.peer_list(tokens[4:], define=True):
                self.peers[peer].flags.update(flags)
            for flag in flags:
                self.restricted[flag].append(line)
            note += f"; its peers get {' and '.join(f'{flag} = true' for flag in flags)}, checked by title only " \
                    "(dcmqrscp also checked their host)"
            if access == "W":
                note += "; dcmqrscp also answered their C-FIND and C-MOVE there"
        if title in self.own:
            note += f"; the title is also on line {self.own[title]}, and the appliance has one AE per title"
        self.own.setdefault(title, line)
        self.warn(line, note)

    def peer_list(self, tokens: list[_Token], define: bool) -> list[str]:
        """The AE titles of a list of peers and symbolic names; `define` records the peers."""
        titles = []
        for token in tokens:
            if token.is_peer:
                titles.append(self.peer(token, define))
            elif token.text in self.symbols:
                titles += self.symbols[token.text][1]
            else:
                raise ValueError(f"line {token.line}: symbolic name {token.text!r} is not defined in a HostTable above")
        return titles

    def peer(self, token: _Token, define: bool) -> str:
        fields = [f for f in re.split(r"[\s=,]+", token.text) if f]
        if len(fields) != 3 or not re.fullmatch(r"[0-9]+", fields[2]):
            raise ValueError(f"line {token.line}: a peer is (AETitle, host, port), not ({token.text})")
        title, host, port = fields[0], fields[1], int(fields[2])
        if not define:
            return title
        known = self.peers.get(title)
        if known is None:
            problem = next((f"{what}: {error}" for what, error in (
                ("AE title", model.ae_title(title)), ("host", model.host(host)), ("port", model.port(port)))
                if error), None)
            if problem:
                self.warn(token.line, f"remote AE {title} is not imported: {problem}")
            self.peers[title] = _Peer(token.line, host, port, problem)
        elif (known.host.lower(), known.port) != (host.lower(), port):  # host names are not case-sensitive
            self.warn(token.line, f"{title} is defined again as {host}:{port}; the appliance keeps one address "
                                  f"per title, line {known.line}'s {known.host}:{known.port}")
        return title

    def result(self) -> Imported:
        for flag, (scp, section) in SCP_OF_FLAG.items():
            if self.open[flag] and self.restricted[flag]:
                lines = ("line " if len(self.restricted[flag]) == 1 else "lines ") + ", ".join(map(str, self.restricted[flag]))
                self.warn(self.open[flag][0], f"AETable entry admits ANY calling AE, but the peers of {lines} "
                                              f"get {flag} = true, which turns on {scp}'s calling-AE allow-list: "
                                              f"other callers are refused unless added to {section}.accepted_calling_aes")
            elif self.own and not self.open[flag] and not self.restricted[flag]:
                access = "W or RW" if flag == "store" else "R or RW"
                self.warn(min(self.own.values()), f"no AETable entry has access {access}, but with no remote AE "
                                                  f"given {flag} = true the appliance's {scp} admits any calling AE")
        remotes = [RemoteAE(ae_title=title, host=p.host, port=p.port, store="store" in p.flags, query="query" in p.flags)
                   for title, p in self.peers.items() if p.problem is None]
        return Imported(remotes, [f"line {line}: {message}" for line, message in sorted(self.warnings, key=lambda w: w[0])])


def _named(line: int, tokens: list[_Token], table: str) -> tuple[str, list[_Token]]:
    if tokens[0].is_peer:
        raise ValueError(f"line {line}: a {table} entry begins with its name, not ({tokens[0].text})")
    if len(tokens) < 2:
        raise ValueError(f"line {line}: {tokens[0].text} = names no peers")
    return tokens[0].text, tokens[1:]


# --- render ----------------------------------------------------------------------------------

def render(config: Config, storage_area: str) -> str:
    """`config` as a dcmqrscp.cfg whose two AEs share the storage area `storage_area`.

    Raises ValueError when `storage_area` cannot be written into the file (a quote or a
    parenthesis in it, or too long for one line)."""
    scp, qr = config.storage_scp, config.query_retrieve_scp
    area = _value(storage_area)
    names = _symbolic_names([remote.ae_title.strip() for remote in config.remote_aes])
    hosts, aes, exported = [], [], set()
    for remote in config.remote_aes:
        title = remote.ae_title.strip()
        if any(char in _GAPS + _QUOTES for char in title):
            hosts.append(f"# {title}: not exported; a HostTable peer's title cannot hold a blank, '=', ',', "
                         "a quote or a parenthesis")
            continue
        hosts.append(f"{names[title]} = ({title}, {remote.host}, {remote.port})")
        exported.add(title)
        if not remote.move_destination:
            hosts.append(f"# {title}: move_destination = false is not exported; dcmqrscp sends C-MOVEs to any peer")
    for section, access in (("storage_scp", "W"), ("query_retrieve_scp", "R")):
        listening, flag = getattr(config, section), model.ADMITTING_FLAG[section]
        title = listening.ae_title.strip()
        flagged = [r.ae_title.strip() for r in config.remote_aes if getattr(r, flag)]
        peers = [names[t] for t in flagged if t in exported]
        for calling in listening.accepted_calling_aes:
            aes.append(f"# {section}.accepted_calling_aes {calling.strip()}: not exported; a dcmqrscp peer "
                       "needs a host")
        if listening.accepted_addresses:
            aes.append(f"# {section}.accepted_addresses: not exported; dcmqrscp has no address filter")
        if any(char in _QUOTES for char in title):
            aes.append(f"# {title}: not exported; an AETable title cannot hold a quote or a parenthesis")
            continue
        if (flagged or listening.accepted_calling_aes) and not peers:
            # dcmqrscp cannot list no peer, and refuses every caller of a title it does not know
            aes.append(f"# {title}: left out; the appliance admits only callers dcmqrscp cannot list")
            continue
        if peers:
            hosts += _group(f"{section}.peers", peers)
        aes.append(f"{_value(title)}  {area}  {access}  {_QUOTA_OUT}  "
                   f"{f'{section}.peers' if peers else 'ANY'}")
    lines = [
        "# dcmqrscp.cfg written by service-tool from the appliance's configuration:",
        "# its STORAGE-SCP and QUERY-RETRIEVE-SCP (AETable) and remote AE table (HostTable).",
        "",
        f"# STORAGE-SCP's port. dcmqrscp serves all its AEs on one port, so QUERY-RETRIEVE-SCP's {qr.port} is not used.",
        f"NetworkTCPPort  = {scp.port}",
        "# STORAGE-SCP's max_pdu_size, at most 131072 (dcmqrscp's limit)",
        f"MaxPDUSize      = {min(scp.max_pdu_size, 131072)}",
        "# both SCPs' max_associations: dcmqrscp counts all its associations together",
        f"MaxAssociations = {scp.max_associations + qr.max_associations}",
        "",
        "HostTable BEGIN",
        "# One entry per remote AE. dcmqrscp admits a peer only from the host written here, compared",
        "# with the caller's address resolved to a name (or as an IP address with --disable-host-lookup).",
        *hosts,
        "HostTable END",
        "",
        "AETable BEGIN",
        "# Both AEs share one storage area, as the appliance's share one archive: QUERY-RETRIEVE-SCP (R)",
        "# finds what STORAGE-SCP (W) stored. Create it before starting dcmqrscp. dcmqrscp also answers",
        "# C-FIND and C-MOVE on a W AE, and deletes the oldest study beyond 500; the appliance does neither.",
        *aes,
        "AETable END",
    ]
    if any(len(line) > _MAX_LINE for line in lines):
        raise ValueError(f"storage area {storage_area!r} makes an AETable line longer than dcmqrscp reads "
                         f"({_MAX_LINE} characters)")
    return "\n".join(lines) + "\n"


def _symbolic_names(titles: list[str]) -> dict[str, str]:
    """A unique HostTable name per title: lower case, so never ANY or a table keyword (which
    dcmqrscp would take as such), and only letters, digits, '_' and '-' (never the '.' of
    `_group`'s names)."""
    names, used = {}, set()
    for title in titles:
        base = re.sub(r"[^a-z0-9_-]", "_", title.lower())
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        names[title] = name
    return names


def _group(name: str, members: list[str]) -> list[str]:
    """HostTable lines defining `name` as `members`, through sub-groups `name.1`, `name.2`, ...
    where one line would be longer than dcmqrscp reads."""
    def line(group: str, names: list[str]) -> str:
        return f"{group} = {', '.join(names)}"

    lines = []
    while len(line(name, members)) > _MAX_LINE:
        groups: list[tuple[str, list[str]]] = []
        for member in members:
            if groups and len(line(groups[-1][0], groups[-1][1] + [member])) <= _MAX_LINE:
                groups[-1][1].append(member)
            else:
                groups.append((f"{name}.{len(lines) + len(groups) + 1}", [member]))
        lines += [line(group, names) for group, names in groups]
        members = [group for group, _ in groups]
    return lines + [line(name, members)]


def _value(text: str) -> str:
    """An AETable value: quoted when it holds a blank, '=' or ',' or starts with '#'."""
    if any(char in _QUOTES for char in text):
        raise ValueError(f"{text!r}: a dcmqrscp.cfg value cannot hold a quote or a parenthesis")
    return f'"{text}"' if text.startswith("#") or any(char in _GAPS for char in text) else text
