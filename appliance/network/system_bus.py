"""The box's network settings through systemd's D-Bus APIs (NW-13): networkd (links, reload,
reconfigure, renew), resolved and timesyncd (what they use, read back), hostnamed (machine
name, NW-12), timedated (time zone, TL-03) and systemd itself (restarting timesyncd after
its drop-in changed).

`SystemBus` is the asyncio client; `run()` is the synchronous way in for the service tool.
Both take a bus address, so tests can reach a container's bus; the default is the system
bus. Every failure, a D-Bus error reply, no reply in time or no bus at all, is a `BusError`
with the D-Bus error name and message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError

CALL_TIMEOUT = 30.0  # s per call; networkd answers in ms, a bus-activated daemon in about 1 s
JOB_TIMEOUT = 90.0  # s for a unit restart (systemd's own default start timeout)

NETWORK = ("org.freedesktop.network1", "/org/freedesktop/network1", "org.freedesktop.network1.Manager")
RESOLVE = ("org.freedesktop.resolve1", "/org/freedesktop/resolve1", "org.freedesktop.resolve1.Manager")
TIMESYNC = ("org.freedesktop.timesync1", "/org/freedesktop/timesync1", "org.freedesktop.timesync1.Manager")
HOSTNAME = ("org.freedesktop.hostname1", "/org/freedesktop/hostname1", "org.freedesktop.hostname1")
TIMEDATE = ("org.freedesktop.timedate1", "/org/freedesktop/timedate1", "org.freedesktop.timedate1")
SYSTEMD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")

T = TypeVar("T")


class BusError(Exception):
    """A D-Bus call that failed: `name` is the D-Bus error name, `message` its text."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class Configured:
    """One address, DNS server, NTP server or search domain of a link and where networkd got
    it: `source` is its ConfigSource ("DHCPv4", "DHCPv6", "static", "NDisc", "foreign", ...),
    `provider` the server that supplied it (a DHCP server's address), if any."""

    value: str  # "10.0.4.7/24" for an address, "10.0.4.1" or "ntp.example" for a server
    source: str
    provider: str | None = None


@dataclass(frozen=True)
class Route:
    destination: str  # "0.0.0.0/0", "fd51::/64"
    gateway: str | None
    source: str


@dataclass(frozen=True)
class LinkState:
    """What networkd says about one link (DescribeLink)."""

    index: int
    name: str
    operational_state: str  # "routable", "degraded", "carrier", "no-carrier", "off", ...
    administrative_state: str  # "configured", "configuring", "unmanaged", "failed", ...
    network_file: str | None  # the .network file networkd applied
    addresses: tuple[Configured, ...]
    dns: tuple[Configured, ...]
    ntp: tuple[Configured, ...]
    search_domains: tuple[Configured, ...]
    routes: tuple[Route, ...]

    def addresses_from(self, source: str) -> list[str]:
        return [address.value for address in self.addresses if address.source == source]


@dataclass(frozen=True)
class NtpState:
    """What timesyncd uses: servers per link (from networkd), from its configuration, and the
    server it talks to now (None before it has picked one)."""

    link_servers: tuple[str, ...]
    system_servers: tuple[str, ...]
    server_name: str | None
    server_address: str | None


class SystemBus:
    """An async client on one bus connection: `async with SystemBus(address) as bus: ...`."""

    def __init__(self, bus_address: str | None = None):
        self.bus_address = bus_address  # None: the system bus
        self._bus: MessageBus | None = None

    async def __aenter__(self) -> SystemBus:
        try:
            self._bus = await asyncio.wait_for(
                MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM).connect(), CALL_TIMEOUT)
        except (OSError, AuthError, TimeoutError) as exc:
            raise BusError("org.freedesktop.DBus.Error.NoServer",
                           f"cannot connect to {self.bus_address or 'the system bus'}: {exc!r}") from exc
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._bus.disconnect()

    # networkd

    async def list_links(self) -> dict[str, int]:
        """Link name -> index, for every link networkd knows."""
        (links,) = await self._call(NETWORK, "ListLinks")
        return {name: index for index, name, _path in links}

    async def link_index(self, name: str) -> int:
        index, _path = await self._call(NETWORK, "GetLinkByName", "s", name)
        return index

    async def describe_link(self, index: int) -> LinkState:
        (text,) = await self._call(NETWORK, "DescribeLink", "i", index)
        return _link_state(json.loads(text))

    async def reload(self) -> None:
        """networkd reads its .network/.netdev files again (links keep their configuration
        until reconfigured)."""
        await self._call(NETWORK, "Reload")

    async def reconfigure_link(self, index: int) -> None:
        """The link is configured afresh from its (reloaded) .network file."""
        await self._call(NETWORK, "ReconfigureLink", "i", index)

    async def renew_link(self, index: int) -> None:
        """The link's DHCP client renews its lease now."""
        await self._call(NETWORK, "RenewLink", "i", index)

    # resolved

    async def link_dns(self, index: int) -> tuple[list[str], list[str]]:
        """The DNS servers and search domains resolved uses for the link."""
        (path,) = await self._call(RESOLVE, "GetLink", "i", index)
        link = (RESOLVE[0], path, "org.freedesktop.resolve1.Link")
        servers = await self._property(link, "DNS")
        domains = await self._property(link, "Domains")
        return [_address(raw) for _family, raw in servers], [domain for domain, _route_only in domains]

    # timesyncd

    async def ntp_state(self) -> NtpState:
        name = await self._property(TIMESYNC, "ServerName")
        _family, raw = await self._property(TIMESYNC, "ServerAddress")
        return NtpState(tuple(await self._property(TIMESYNC, "LinkNTPServers")),
                        tuple(await self._property(TIMESYNC, "SystemNTPServers")),
                        name or None, _address(raw) if raw else None)

    # hostnamed

    async def set_static_hostname(self, name: str) -> None:
        """The machine name kept in /etc/hostname (NW-12); hostnamed also makes it the kernel's."""
        await self._call(HOSTNAME, "SetStaticHostname", "sb", name, False)

    async def set_hostname(self, name: str) -> None:
        """The kernel's (transient) host name, until the next boot."""
        await self._call(HOSTNAME, "SetHostname", "sb", name, False)

    async def hostnames(self) -> tuple[str, str]:
        """(the kernel's host name, the static one)."""
        return await self._property(HOSTNAME, "Hostname"), await self._property(HOSTNAME, "StaticHostname")

    # timedated

    async def set_timezone(self, zone: str) -> None:
        await self._call(TIMEDATE, "SetTimezone", "sb", zone, False)

    async def timezone(self) -> str:
        return await self._property(TIMEDATE, "Timezone")

    async def ntp_synchronized(self) -> bool:
        """Whether the kernel's clock is synchronised (by timesyncd or anything else)."""
        return await self._property(TIMEDATE, "NTPSynchronized")

    # systemd

    async def restart_unit(self, unit: str) -> str:
        """Restart `unit` and wait for the job: its result, "done" when it started again."""
        match = f"type='signal',interface='{SYSTEMD[2]}',member='JobRemoved'"
        await self._call(("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus"),
                         "AddMatch", "s", match)
        await self._call(SYSTEMD, "Subscribe")
        finished: dict[str, str] = {}  # job path -> result, for every job that ends meanwhile
        changed = asyncio.Event()

        def on_message(message: Message) -> None:
            if message.message_type == MessageType.SIGNAL and message.member == "JobRemoved":
                _id, job, _unit, result = message.body
                finished[job] = result
                changed.set()

        self._bus.add_message_handler(on_message)
        try:
            (job,) = await self._call(SYSTEMD, "RestartUnit", "ss", unit, "replace")
            async with asyncio.timeout(JOB_TIMEOUT):
                while job not in finished:
                    changed.clear()
                    await changed.wait()
        except TimeoutError as exc:
            raise BusError("org.freedesktop.DBus.Error.Timeout",
                           f"restarting {unit} took over {JOB_TIMEOUT} s") from exc
        finally:
            self._bus.remove_message_handler(on_message)
        return finished[job]

    async def _property(self, target: tuple[str, str, str], name: str) -> Any:
        destination, path, interface = target
        properties = (destination, path, "org.freedesktop.DBus.Properties")
        (variant,) = await self._call(properties, "Get", "ss", interface, name)
        return variant.value

    async def _call(self, target: tuple[str, str, str], member: str, signature: str = "", *body) -> list:
        destination, path, interface = target
        message = Message(destination=destination, path=path, interface=interface, member=member,
                          signature=signature, body=list(body))
        try:
            reply = await asyncio.wait_for(self._bus.call(message), CALL_TIMEOUT)
        except TimeoutError as exc:
            raise BusError("org.freedesktop.DBus.Error.NoReply",
                           f"{interface}.{member}: no reply in {CALL_TIMEOUT} s") from exc
        except (OSError, EOFError) as exc:
            raise BusError("org.freedesktop.DBus.Error.Disconnected", f"{interface}.{member}: {exc!r}") from exc
        if reply.message_type == MessageType.ERROR:
            raise BusError(reply.error_name, reply.body[0] if reply.body else "")
        return reply.body


def run(operation: Callable[[SystemBus], Awaitable[T]], bus_address: str | None = None) -> T:
    """`operation(bus)` on a new connection, synchronously: `run(lambda bus: bus.reload())`."""

    async def connected() -> T:
        async with SystemBus(bus_address) as bus:
            return await operation(bus)

    return asyncio.run(connected())


def _address(raw: bytes | list[int]) -> str:
    return str(ipaddress.ip_address(bytes(raw)))


def _link_state(described: dict) -> LinkState:
    def configured(entry: dict, value: str) -> Configured:
        provider = entry.get("ConfigProvider")
        return Configured(value, entry.get("ConfigSource", ""), _address(provider) if provider else None)

    def server(entry: dict) -> Configured:
        return configured(entry, _address(entry["Address"]) if "Address" in entry else entry["Server"])

    def route(entry: dict) -> Route:
        gateway = entry.get("Gateway")
        destination = ipaddress.ip_network((bytes(entry["Destination"]), entry["DestinationPrefixLength"]))
        return Route(str(destination), _address(gateway) if gateway and any(gateway) else None,
                     entry.get("ConfigSource", ""))

    return LinkState(
        index=described["Index"],
        name=described["Name"],
        operational_state=described.get("OperationalState", ""),
        administrative_state=described.get("AdministrativeState", ""),
        network_file=described.get("NetworkFile"),
        addresses=tuple(configured(a, str(ipaddress.ip_interface((bytes(a["Address"]), a["PrefixLength"]))))
                        for a in described.get("Addresses") or ()),
        dns=tuple(server(entry) for entry in described.get("DNS") or ()),
        ntp=tuple(server(entry) for entry in described.get("NTP") or ()),
        search_domains=tuple(configured(entry, entry["Domain"]) for entry in described.get("SearchDomains") or ()),
        routes=tuple(route(entry) for entry in described.get("Routes") or ()),
    )
