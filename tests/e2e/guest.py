"""The appliance image booted under QEMU (TCG: these machines have no usable KVM) from its own
disk, as a PC boots it: UEFI firmware (Debian's OVMF), then the disk's systemd-boot, which picks
the slot (issue 21); driven like a box on a bench: its DICOM ports forwarded to host loopback,
its serial console read and typed into, one more forward from the guest to a DICOM peer on host
loopback, a USB port for a stick (plugged in at power-on or while it runs, through QEMU's
monitor).

QEMU's user-mode network runs with restrict=on: the guest gets its DHCP lease from QEMU and
reaches nothing but the forwards named here, so its NTP and DNS lookups go nowhere.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

RELAY = Path(__file__).with_name("relay.py")
FIRMWARE = Path("/usr/share/ovmf/OVMF.fd")  # Debian's ovmf: code and variables in one (volatile) image
PEER_ADDRESS = "10.0.2.100"  # where the guest finds the host's peer (guestfwd)
SHELL_PROMPT = "guest$ "


class ConsoleTimeout(AssertionError):
    pass


class Guest:
    """A running QEMU; everything its serial console printed is in `console_log`."""

    def __init__(self, disk: Path, forwards: dict[int, int], peer_port: int, console_log: Path,
                 stick: Path | None = None):
        self.monitor = console_log.with_suffix(".monitor")
        netdev = ",".join(
            ["user,id=n0,restrict=on"]
            + [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in forwards.items()]
            # QEMU runs the command for each connection the guest opens, on its stdin/stdout.
            + [f"guestfwd=tcp:{PEER_ADDRESS}:{peer_port}-cmd:{sys.executable} {RELAY} {peer_port}"])
        command = [
            "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-machine", "q35",
            "-smp", "2", "-m", "1024", "-bios", str(FIRMWARE),
            "-drive", f"file={disk},if=virtio,format=raw,cache=unsafe",
            "-device", "qemu-xhci,id=usb", *(self._stick_options(stick) if stick else []),
            "-device", "i6300esb",  # a hardware watchdog, as a PC board has
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
            # A reboot ends QEMU, and the caller powers the box on again: a warm reboot under
            # TCG took 50 s longer in the kernel than a cold start, for no finding about the box.
            "-display", "none", "-monitor", f"unix:{self.monitor},server=on,wait=off", "-serial", "stdio",
            "-no-reboot"]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self._text = ""
        self._seen = 0  # how far expect() has consumed
        self._lock = threading.Condition()
        self._log = open(console_log, "w", encoding="utf-8", errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := self.process.stdout.read1(65536):
            text = chunk.decode("utf-8", errors="replace").replace("\r", "")
            self._log.write(text)
            self._log.flush()
            with self._lock:
                self._text += text
                self._lock.notify_all()

    def expect(self, pattern: str, timeout: float) -> re.Match:
        """The next match of `pattern` in the console output after the last one expected."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lock:
            while not (found := compiled.search(self._text, self._seen)):
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    tail = self._text[-2000:]
                    raise ConsoleTimeout(f"no {pattern!r} on the console within {timeout:.0f} s; it ends:\n{tail}")
                self._lock.wait(min(left, 1.0))
            self._seen = found.end()
            return found

    @staticmethod
    def _stick_options(stick: Path) -> list[str]:
        return ["-drive", f"file={stick},if=none,id=stick,format=raw,readonly=on",
                "-device", "usb-storage,bus=usb.0,drive=stick,id=stick-port,removable=on"]

    def plug_in(self, stick: Path) -> None:
        """`stick` (a disk image) plugged into the running box's USB port, read-only."""
        options = self._stick_options(stick)
        with socket.socket(socket.AF_UNIX) as monitor:
            monitor.settimeout(30)
            monitor.connect(str(self.monitor))
            _until_prompt(monitor)  # QEMU's greeting
            for command in (f"drive_add 0 {options[1]}", f"device_add {options[3]}"):
                monitor.sendall(command.encode() + b"\n")
                said = _until_prompt(monitor)
                assert "error" not in said.lower(), f"QEMU monitor: {command}: {said}"

    def type(self, text: str) -> None:
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def log_in(self, password: str, new_password: str | None = None) -> None:
        """Root login on the serial console, changing the expired first password when asked;
        leaves a plain shell (no line editing, no echo) for `run`."""
        self.expect(r"\S+ login: ", 120)  # the prompt names the host
        self.type("root\r")
        self.expect(r"Password: ", 30)
        self.type(f"{password}\r")
        if new_password is not None:
            for prompt, answer in (("Current password: ", password), ("New password: ", new_password),
                                   ("Retype new password: ", new_password)):
                self.expect(prompt, 30)
                self.type(f"{answer}\r")
        self.expect(r"# ", 60)
        # The prompt is spelt in two quoted parts, so the command's own echo cannot match it.
        self.type(f"exec env PS1='{SHELL_PROMPT[:2]}''{SHELL_PROMPT[2:]}' TERM=dumb SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 /bin/sh\r")
        self.expect(re.escape(SHELL_PROMPT), 30)
        self.type("stty -echo cols 500\r")
        self.expect(re.escape(SHELL_PROMPT), 30)

    def run(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """`command` in the guest's shell: (exit status, what it printed)."""
        self.type(f"echo @@begin; {command}; echo @@end $?\r")
        self.expect(r"@@begin\n", timeout)
        start = self._seen
        found = self.expect(r"@@end (\d+)\n", timeout)
        return int(found.group(1)), self._text[start:found.start()]

    def wait_for_power_off(self, timeout: float) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ConsoleTimeout(f"still running {timeout:.0f} s after the shutdown began; the console ends:\n"
                                 f"{self._text[-2000:]}") from None

    def stop(self) -> None:
        """SIGKILL unless QEMU has ended; its console read to the end."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self._reader.join(10)
        self._log.close()


def _until_prompt(monitor: socket.socket) -> str:
    """What QEMU's human monitor wrote up to its next prompt."""
    said = b""
    while not said.endswith(b"(qemu) "):
        chunk = monitor.recv(4096)
        assert chunk, f"QEMU's monitor closed; it said {said!r}"
        said += chunk
    return said.decode(errors="replace")
