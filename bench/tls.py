#!/usr/bin/env python3
"""DICOM over TLS benchmark (SE-07): the service's TLS port next to its plain port, and DCMTK
storescp with and without +tls, same data, same run.

A benchmark script, not a test. Every receiver is started fresh for each case (bench/lab.py:
the service through tests/support/helpers.Appliance, storescp with TCP_NODELAY=1 and 128 KiB PDUs);
the certificates (EC P-256, one test CA) are made with openssl by tests/support/tls_pki.py.
TLS clients present a certificate the CA signed, and both servers verify it. Cases:

  store  200 CT 512x512x16 (~525 KB) over one association with DCMTK storescu (+tls towards
         the TLS receivers): MB/s and the receiver's CPU per 105 MB; best of --repeat runs
  setup  --count associations one after another, each with one C-ECHO, from the raw-socket
         client of bench/associations.py (Python's ssl for the TLS handshake): associations/s
         and latency; the TLS handshake is what the two columns of each server differ by

Usage (from the repository):
  .venv/bin/python bench/tls.py [--quick] [--count 1000] [--repeat 2] [--json out.json]

--quick: 40 CT and 200 associations (figures kept in tls-previous-quick.json).
Traffic goes only to 127.0.0.1; every subprocess and socket has a timeout.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import ssl
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import associations  # noqa: E402  (bench/associations.py: the raw-socket association client)
import lab  # noqa: E402
import pdus  # noqa: E402  (tests/support/pdus.py)
import store  # noqa: E402  (bench/store.py: the data and the storescu sender)
from tls_pki import Authority  # noqa: E402  (tests/support/tls_pki.py)

log = lab.log
RECEIVERS = ("service", "service_tls", "storescp", "storescp_tls")
NAMES = {"service": "service, plain port", "service_tls": "service, TLS port", "storescp": "storescp",
         "storescp_tls": "storescp +tls"}


class Pki:
    def __init__(self, root: Path):
        ca = Authority(root)
        self.ca, self.server, self.client = ca, ca.issue("receiver"), ca.issue("sender")

    def dcmtk(self, issued) -> tuple[str, ...]:
        return ("+tls", str(issued.key), str(issued.certificate), "+cf", str(self.ca.certificate))

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca.certificate))
        context.check_hostname = False
        context.load_cert_chain(self.client.certificate, self.client.key)
        return context


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="bench-tls-"))
        self.pki = Pki(self.work / "pki")
        self.results: dict = {"store": {}, "setup": {}}

    def receiver(self, name: str, root: Path):
        tls = name.endswith("_tls")
        if name.startswith("service"):
            config = {"storage_scp": {"tls_port": lab.helpers.free_port()},
                      "tls": {"certificate": str(self.pki.server.certificate), "key": str(self.pki.server.key),
                              "ca_bundle": str(self.pki.ca.certificate)}} if tls else {}
            service = lab.Service(root, config=config)
            if tls:
                service.port = service.app.config["storage_scp"]["tls_port"]
            return service
        options = (self.pki.dcmtk(self.pki.server), self.pki.dcmtk(self.pki.client)) if tls else ((), ())
        return lab.StoreSCP(root, tls=options)

    def run(self) -> None:
        (self.work / "data").mkdir()
        data = store.Data(self.work / "data", self.args.quick, {"a"})
        for name in RECEIVERS:
            tls = name.endswith("_tls")
            runs = []
            for attempt in range(self.args.repeat):
                log(f"{NAMES[name]}, store ({len(data.ct)} CT), run {attempt + 1}")
                with self.receiver(name, self.work / f"{name}-store-{attempt}") as receiver:
                    runs.append(store.send(receiver, [data.ct], options=self.pki.dcmtk(self.pki.client) if tls else ()))
                log(f"   {runs[-1]['mbps']} MB/s, receiver {runs[-1].get('receiver_cpu_s_per_105mb')} CPU s/105 MB, "
                    f"{runs[-1]['missing']} missing, {runs[-1]['sender_failures']} sender failures")
            self.results["store"][name] = max(runs, key=lambda r: r["mbps"])
            log(f"{NAMES[name]}, setup ({self.args.count} associations with C-ECHO)")
            with self.receiver(name, self.work / f"{name}-setup") as receiver:
                rq = pdus.request("BENCH_SCU", receiver.title, max_length=131072)
                step = functools.partial(associations.association, receiver.port, rq, b"".join(pdus.c_echo()),
                                         tls=self.pki.client_context() if tls else None)
                self.results["setup"][name] = associations.measure(receiver, step, self.args.count)

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


ROWS = (("store", "mbps", "store: MB/s (one association, CT)"),
        ("store", "receiver_cpu_s_per_105mb", "store: receiver CPU s per 105 MB"),
        ("store", "missing", "store: instances missing"),
        ("setup", "per_s", "setup: associations/s (C-ECHO each)"),
        ("setup", "median_ms", "setup: median ms"),
        ("setup", "p95_ms", "setup: p95 ms"),
        ("setup", "cpu_s_per_1000", "setup: server CPU s per 1000"),
        ("setup", "failures", "setup: failures"))


def table(results: dict, previous: dict | None) -> str:
    head = ("", *(NAMES[n] for n in RECEIVERS), "service TLS / plain", "service TLS / storescp +tls",
            "previous service TLS")
    rows = []
    for case, key, label in ROWS:
        values = [results[case].get(n, {}).get(key) for n in RECEIVERS]
        service, service_tls, _, storescp_tls = values

        def ratio(a, b):
            return f"{a / b:.2f}" if isinstance(a, (int, float)) and b else ""
        before = ((previous or {}).get("results", {}).get(case, {}).get("service_tls", {}) or {}).get(key)
        rows.append((label, *("" if v is None else v for v in values), ratio(service_tls, service),
                     ratio(service_tls, storescp_tls), "" if before is None else before))
    return lab.text_table(head, rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--count", type=int, default=None, help="associations in the setup case (1000; quick 200)")
    parser.add_argument("--repeat", type=int, default=2, help="store runs per receiver; the best counts")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.count = args.count or (200 if args.quick else 1000)
    lab.run_and_report(Bench(args), "tls", args.quick, table, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
