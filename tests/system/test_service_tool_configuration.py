"""Which configuration the service tool uses, against the real daemon (issue 22 items 1 and 4;
TL-04, TL-05, TL-07).

Item 1: without --config and without /etc/appliance/appliance.toml the tool uses the built-in
defaults as `appliance serve` without --config does, so it reaches the service started that
way in its directory (README's set-up), and says which configuration and data directory it
uses. That service listens on the defaults' ports 4000 and 5000: it runs in a network namespace
of its own (loopback only), where they are free whatever else runs on the machine and where
the services listed as running elsewhere are this test's only.

Item 4: a typo in the file (the service rightly keeps its running configuration at a reload)
leaves every command that only reads working on the running service's configuration, after a
WARNING naming the file's problem; the commands that edit the file refuse it and leave it as it is.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time
import tomllib

import pytest

import netlab
from helpers import Appliance, tool
from service_tool.cli import DEFAULT_CONFIG

BROKEN = "garbage = [\n"  # the hand edit
_namespaces = itertools.count(1)


@pytest.fixture
def own_network():
    """`ip netns exec` into a new network namespace with only loopback, removed at teardown."""
    name = f"st-config-{os.getpid()}-{next(_namespaces)}"
    netlab.run("ip", "netns", "add", name)
    try:
        netlab.run("ip", "-n", name, "link", "set", "lo", "up")
        yield ("ip", "netns", "exec", name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.fixture
def readme_service(tmp_path, own_network):
    """`python -m appliance serve` without --config, started in a directory of its own."""
    assert not DEFAULT_CONFIG.exists(), f"{DEFAULT_CONFIG} exists on this machine: the tool would use it"
    app = Appliance(tmp_path / "checkout", prefix=own_network, built_in_defaults=True).start()
    yield app
    assert app.stop() == 0, app.log()


def test_the_tool_reaches_the_service_started_without_config_in_its_directory(readme_service):
    app, network = readme_service, readme_service.prefix
    status = tool("status", cwd=app.root, prefix=network)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith("service: running"), status.stdout
    assert "configuration: built-in defaults (no --config)\n" in status.stdout
    assert f"data directory: {app.data_dir}\n" in status.stdout
    echoed = tool("echo", "--local", cwd=app.root, prefix=network)
    assert echoed.returncode == 0, echoed.stdout + echoed.stderr
    assert re.findall(r"(EX_\w+_SCP) at 127\.0\.0\.1 port (\d+)", echoed.stdout) == [
        ("EX_STORE_SCP", "4000"), ("EX_QUERY_SCP", "5000")]
    assert len(re.findall(r"C-ECHO +status 0x0000", echoed.stdout)) == 2, echoed.stdout
    assert (f"no --config and no {DEFAULT_CONFIG}: using the built-in defaults, as 'appliance serve' without "
            f"--config does here: data in {app.data_dir}") in echoed.stderr
    assert f"configuration built-in defaults (no --config), data in {app.data_dir}" in app.ready_message


def test_from_another_directory_the_tool_names_where_it_looked_and_the_service_it_found(readme_service, tmp_path):
    app, network = readme_service, readme_service.prefix
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = tool("status", cwd=elsewhere, prefix=network)
    assert status.returncode == 3, status.stdout + status.stderr
    assert status.stdout.startswith(f"service: NOT RUNNING (no service answers on "
                                    f"{elsewhere}/appliance-data/control.sock)\n"), status.stdout
    assert "configuration: the built-in defaults\n" in status.stdout
    assert (f"appliance services running elsewhere on this machine:\n  pid {app.proc.pid}, data in {app.data_dir} "
            f"(built-in defaults: run service-tool in {app.root})\n") in status.stdout
    report = json.loads(tool("status", "--json", cwd=elsewhere, prefix=network).stdout)
    assert report["running_elsewhere"] == [{"pid": app.proc.pid, "config_path": None, "base_dir": str(app.root),
                                            "data_dir": str(app.data_dir)}]


def test_an_edit_without_a_file_is_refused_and_writes_nothing(tmp_path):
    assert not DEFAULT_CONFIG.exists(), f"{DEFAULT_CONFIG} exists on this machine: the tool would edit it"
    refused = tool("ae", "set", "qr", "--port", "5001", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr == (f"refused: there is no configuration file to change: no --config and no "
                              f"{DEFAULT_CONFIG}, so the built-in defaults apply; write a file and start the "
                              "service with --config FILE; nothing was written\n")
    assert list(tmp_path.iterdir()) == []


def test_a_full_backup_without_a_file_is_refused(tmp_path):  # MG-05: a backup holds the file to restore
    assert not DEFAULT_CONFIG.exists(), f"{DEFAULT_CONFIG} exists on this machine: the tool would back it up"
    refused = tool("backup", "--full", str(tmp_path / "backup"), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.startswith("backup refused: there is no configuration file to back up"), refused.stderr
    assert list(tmp_path.iterdir()) == []


# --- item 4: a file that does not load ---------------------------------------------------------

@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A running appliance whose file got the issue's typo after start; the reload it was asked
    for was refused, so it runs on the configuration it started with."""
    root = tmp_path_factory.mktemp("broken")
    app = Appliance(root / "appliance", {"remote_aes": [{"ae_title": "PACS", "host": "127.0.0.1", "port": 1}]}).start()
    with open(app.config_path, "a") as f:
        f.write(BROKEN)
    app.signal(signal.SIGHUP)
    app.wait_log(r"reload refused, keeping the running configuration: \(file\): .* is not valid TOML")
    yield app
    assert app.stop() == 0, app.log()


def warned(result: subprocess.CompletedProcess, app: Appliance) -> bool:
    """The WARNING that the file does not load and the running service's configuration is used."""
    return (f"WARNING: {app.config_path} does not load: (file): {app.config_path} is not valid TOML" in result.stderr
            and f"WARNING: using the configuration the running service (pid {app.proc.pid}) read from it before"
            in result.stderr)


def test_status_uses_the_running_configuration_and_says_the_file_is_broken(broken):  # TL-07
    status = tool("--config", str(broken.config_path), "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith("service: running"), status.stdout
    assert (f"configuration: {broken.config_path}\nWARNING: {broken.config_path} does not load: (file): "
            f"{broken.config_path} is not valid TOML") in status.stdout
    assert "WARNING: the service runs on what it read before; it would not start with the file as it is\n" \
        in status.stdout
    assert f"data directory: {broken.data_dir}\n" in status.stdout
    report = json.loads(tool("--config", str(broken.config_path), "status", "--json").stdout)
    assert report["configuration"]["used"] == f"the running service (pid {broken.proc.pid}); " \
                                              f"{broken.config_path} does not load"
    assert len(report["configuration"]["problems"]) == 1


def test_another_programs_silent_control_sock_does_not_hold_the_tool_up(broken, tmp_path):
    with socket.socket(socket.AF_UNIX) as silent:  # accepts (the backlog does) and never answers
        silent.bind(str(tmp_path / "control.sock"))
        silent.listen()
        started = time.monotonic()
        status = tool("--config", str(broken.config_path), "status")
        elapsed = time.monotonic() - started
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"WARNING: {broken.config_path} does not load" in status.stdout
    assert elapsed < 15, elapsed  # each socket found is given 2 s, not the tool's usual 15 to 60


def test_logs_read_the_running_services_log(broken):  # LG-07
    logs = tool("--config", str(broken.config_path), "logs", "--level", "error")
    assert logs.returncode == 0, logs.stderr
    assert "reload refused, keeping the running configuration" in logs.stdout
    assert warned(logs, broken), logs.stderr


def test_backup_copies_the_running_services_index(broken, tmp_path):
    copy = tmp_path / "index.sqlite"
    done = tool("--config", str(broken.config_path), "backup", str(copy))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"index backed up to {copy}: ") and copy.stat().st_size > 0
    assert warned(done, broken), done.stderr


def test_echo_local_reaches_the_running_listeners(broken):  # TL-05
    echoed = tool("--config", str(broken.config_path), "echo", "--local")
    assert echoed.returncode == 0, echoed.stdout + echoed.stderr
    assert re.findall(r"(EX_\w+_SCP) at 127\.0\.0\.1 port (\d+)", echoed.stdout) == [
        ("EX_STORE_SCP", str(broken.storage_port)), ("EX_QUERY_SCP", str(broken.qr_port))]
    assert warned(echoed, broken), echoed.stderr


def test_config_show_prints_what_the_service_runs(broken):
    shown = tool("--config", str(broken.config_path), "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"# effective configuration of the running service (pid {broken.proc.pid}); "
                                   f"{broken.config_path} does not load (defaults included)\n")
    values = tomllib.loads(shown.stdout)
    assert values["storage_scp"]["port"] == broken.storage_port
    assert [r["ae_title"] for r in values["remote_aes"]] == ["PACS"]
    assert warned(shown, broken), shown.stderr


@pytest.mark.parametrize("command", [("study", "list"), ("conformance",), ("ae", "show"), ("remote", "list"),
                                     ("access", "show"), ("tls", "show")], ids=" ".join)
def test_every_command_that_only_reads_goes_on(broken, command):
    done = tool("--config", str(broken.config_path), *command)
    assert done.returncode == 0, done.stdout + done.stderr
    assert warned(done, broken), done.stderr


@pytest.mark.parametrize("command", [("ae", "set", "qr", "--port", "5999"),
                                     ("remote", "add", "VIEWER", "--host", "127.0.0.1", "--port", "104"),
                                     ("access", "allow", "storage-scp", "--calling", "CT_1"),
                                     ("config", "validate")], ids=" ".join)
def test_commands_that_edit_or_check_the_file_refuse_it_and_leave_it_as_it_is(broken, command):  # TL-04
    before = broken.config_path.read_bytes()
    refused = tool("--config", str(broken.config_path), *command)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "is not valid TOML" in refused.stderr and not warned(refused, broken)
    assert broken.config_path.read_bytes() == before
