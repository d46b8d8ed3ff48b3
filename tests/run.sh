#!/bin/sh
# The whole test suite on a fresh Debian machine: system tools, a venv with the project, pytest.
# Needs root (or sudo) for apt and for the tests that mount a small filesystem (disk full).
set -eu
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=""
for tool in echoscu storescu storescp findscu movescu; do command -v "$tool" >/dev/null || missing="dcmtk"; done
command -v iperf3 >/dev/null || missing="$missing iperf3"
command -v systemd-analyze >/dev/null || missing="$missing systemd"
command -v openssl >/dev/null || missing="$missing openssl"  # certificates for the TLS tests (DICOM, audit collector)
# The PostgreSQL index (IX-01): the tests start a server of their own from Debian's binaries,
# which are not on PATH (/usr/lib/postgresql/<version>/bin).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
# The network tests: namespaces and veth (iproute2), a DHCP server (dnsmasq-base: the binary,
# no system service), netplan's generator, systemd-nspawn and debootstrap for the system tier;
# QEMU to boot the appliance image (tests/e2e).
for tool in ip dnsmasq netplan systemd-nspawn debootstrap qemu-system-x86_64; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends dcmtk iperf3 iproute2 systemd \
        openssl dnsmasq-base netplan.io systemd-container debootstrap qemu-system-x86 postgresql >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
