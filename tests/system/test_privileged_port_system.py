"""`service-tool ae set --port 104` as root on a systemd box (issue 22 item 7b; AE-03, TL-01,
SE-06): the box's rootfs with the service installed as the image installs it (image/build.py)
boots as a container (tests/nspawn.py). The unit gives the service no capability; the tool adds
the drop-in for CAP_NET_BIND_SERVICE, has systemd reload and restart the service, applies the
edit, and the service answers C-ECHO on port 104, holding that one capability and no other.
After a restore that names port 104, the service cannot start and says why; the next edit as
root adds the capability, and systemd's next restart of the failing service listens there.
Building the wheels takes about 10 s, each container with the service's venv about 20 s."""

from __future__ import annotations

import pytest
import tomlkit

import nspawn
from netlab import lab  # noqa: F401  (the fixture)
import rootfs
from helpers import wait_for
from image.build import DEFAULT_PASSWORD, build_wheels, install_service, install_system
from service_tool.privileged_port import CAP_NET_BIND_SERVICE, DROP_IN, DROP_IN_TEXT
from test_network_system import DHCP, NETWORK_FILE

pytestmark = pytest.mark.debian_tree

START_TIMEOUT = 60.0  # s for the service to be active after the boot (its first start: about 5 s)
CONFIG = "etc/appliance/appliance.toml"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    return build_wheels(tmp_path_factory.mktemp("wheels") / "wheels")


@pytest.fixture
def box(lab, tmp_path, wheels):
    def install(root):
        install_service(root, wheels)
        install_system(root, DEFAULT_PASSWORD)
        (root / "etc/fstab").write_text("")  # a container has no disk: boot would wait for its label

    # The service starts once the network is online: DHCP from the lab's dnsmasq.
    with nspawn.booted(rootfs.cached_rootfs(), lab, tmp_path, {NETWORK_FILE: DHCP}, install) as container:
        wait_for(lambda: container.run("systemctl", "is-active", "appliance").stdout.strip() == "active",
                 "the appliance service to start", START_TIMEOUT, interval=0.5)
        yield container


def capabilities(box) -> int:
    """The service's effective capabilities (its CapEff mask)."""
    pid = box.run("systemctl", "show", "-P", "MainPID", "appliance").stdout.strip()
    status = box.run("cat", f"/proc/{pid}/status").stdout
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)


def test_port_104_as_root_adds_the_capability_restarts_and_listens(box):
    assert capabilities(box) == 0
    assert box.run("test", "-e", str(DROP_IN)).returncode == 1
    result = box.run("service-tool", "ae", "set", "storage-scp", "--port", "104", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    said = result.stdout.splitlines()
    assert said[:4] == [
        f"port 104 below 1024: the service needs CAP_NET_BIND_SERVICE, now given by {DROP_IN}",
        "restarting the service to give it the capability: running associations are drained first "
        "(up to timeouts.shutdown_drain, 30 s)",
        "STORAGE-SCP: port 104; saved to /etc/appliance/appliance.toml",
        "the service reloaded the configuration"], result.stdout
    assert box.run("cat", str(DROP_IN)).stdout == DROP_IN_TEXT
    assert capabilities(box) == 1 << CAP_NET_BIND_SERVICE
    echoed = box.run("service-tool", "echo", "--local", timeout=60)
    assert echoed.returncode == 0, echoed.stdout + echoed.stderr
    assert "port 104" in echoed.stdout and echoed.stdout.count("C-ECHO") >= 2, echoed.stdout
    # Another port below 1024 needs nothing more: no second restart.
    pid = box.run("systemctl", "show", "-P", "MainPID", "appliance").stdout
    result = box.run("service-tool", "ae", "set", "qr", "--port", "105", timeout=60)
    assert result.returncode == 0 and "restarting" not in result.stdout, result.stdout + result.stderr
    assert box.run("systemctl", "show", "-P", "MainPID", "appliance").stdout == pid


def test_after_a_restore_naming_port_104_the_next_edit_as_root_adds_the_capability(box):
    """A restored configuration (its drop-in is not in a backup) names port 104: the service,
    restarted on it, fails and its log says what to do; `ae set` as root adds the drop-in, and
    systemd's next restart of the failing service (RestartSec=5) listens on 104."""
    config = box.root / CONFIG
    document = tomlkit.parse(config.read_text())
    document["storage_scp"] = {"port": 104}
    config.write_text(tomlkit.dumps(document))  # as service-tool restore writes it
    assert box.run("systemctl", "restart", "appliance", timeout=120).returncode != 0
    journal = box.run("journalctl", "-u", "appliance", "-o", "cat", "--no-pager").stdout
    assert ("cannot listen on port 104: Permission denied (a port below 1024 takes CAP_NET_BIND_SERVICE, which "
            "service-tool ae set adds as root)") in journal, journal[-3000:]
    result = box.run("service-tool", "ae", "set", "storage-scp", "--title", "RAD_ARCHIVE", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"port 104 below 1024: the service needs CAP_NET_BIND_SERVICE, now given by {DROP_IN}" in result.stdout
    wait_for(lambda: box.run("systemctl", "is-active", "appliance").stdout.strip() == "active",
             "systemd to restart the service with the capability", START_TIMEOUT, interval=0.5)
    assert capabilities(box) == 1 << CAP_NET_BIND_SERVICE
    echoed = box.run("service-tool", "echo", "--local", timeout=60)
    assert echoed.returncode == 0 and "port 104" in echoed.stdout, echoed.stdout + echoed.stderr
