#!/usr/bin/env python3
"""What-if runs behind docs/performance.md "where the time goes" (not part of the product).

Runs cases a (200 CT 512x512) and d (1000 small CT) of bench/store.py against the real daemon,
once per variant. A variant monkeypatches the daemon at start-up through a `sitecustomize`
on PYTHONPATH; the product code is not modified. Variants:

  pynetdicom-null  not the daemon: a bare pynetdicom 3.0 SCP, same PDU size and chunked
              receive, whose C-STORE handler returns 0x0000 at once (the floor for this stack)
  null+fastpoll, null+bigrecv   the bare SCP with the patches below
  base        the daemon as it is
  samedir     store file names share one fan-out directory, so no mkdir + parent-dir fsyncs
              per instance (what pre-created or date-based directories would give)
  nofsync     fsync_file/fsync_dir are no-ops (upper bound of the file-durability cost; NOT safe)
  sqlnormal   SQLite synchronous=NORMAL (WAL commit not fsync'd; NOT durable per ST-06)
  fastpoll    pynetdicom's 1 ms reactor sleeps (DUL and association loops) cut to 50 us
  bigrecv     pynetdicom's AssociationSocket.recv reads up to 1 MiB per recv() instead of 4096
  fast        samedir + fastpoll + bigrecv (keeps every fsync)

  .venv/bin/python bench/experiments.py [--quick] [--variants base,fast] [--repeat 2] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store  # noqa: E402  (bench/store.py)

SITECUSTOMIZE = r'''
import os
_v = set(os.environ.get("BENCH_VARIANT", "").split("+"))
if _v & {"samedir", "nofsync", "sqlnormal", "fastpoll", "bigrecv"}:
    import time as _time, types as _types, uuid as _uuid
    if "samedir" in _v:
        import appliance.store.files as _files
        class _U:
            @staticmethod
            def uuid4():
                return _types.SimpleNamespace(hex="abcd" + _uuid.uuid4().hex[4:])
        _files.uuid = _U
    if "nofsync" in _v:
        import appliance.store.files as _files
        _files.fsync_file = lambda path: None
        _files.fsync_dir = lambda path: None
    if "sqlnormal" in _v:
        import appliance.store.db as _db
        _db.PRAGMAS["synchronous"] = "normal"
    if "fastpoll" in _v:
        import pynetdicom.association as _assoc, pynetdicom.dul as _dul
        _fast = _types.SimpleNamespace(**{k: getattr(_time, k) for k in dir(_time) if not k.startswith("__")})
        _fast.sleep = lambda s: _time.sleep(min(s, 0.00005))
        _assoc.time = _fast
        _dul.time = _fast
    if "bigrecv" in _v:
        from pynetdicom.transport import AssociationSocket as _AS
        def _recv(self, nr_bytes):
            buf = bytearray(nr_bytes)
            view = memoryview(buf)
            got = 0
            while got < nr_bytes:
                n = self.socket.recv_into(view[got:], min(nr_bytes - got, 1 << 20))
                if not n:
                    return buf[:got]
                got += n
            return buf
        _AS.recv = _recv
'''

NULL_SCP = r'''
import os, socket, sys, tempfile
from pynetdicom import AE, evt, _config
from pynetdicom.sop_class import CTImageStorage
_config.STORE_RECV_CHUNKED_DATASET = True
_config.LOG_HANDLER_LEVEL = "none"  # as the appliance sets it
tempfile.tempdir = sys.argv[2]
count = [0]
def on_store(event):
    count[0] += 1
    return 0x0000
def on_open(event):
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def on_released(event):
    with open(sys.argv[3], "w") as f:
        f.write(str(count[0]))
ae = AE(ae_title="NULL_SCP")
ae.maximum_pdu_size = 131072
ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
ae.add_supported_context("1.2.840.10008.1.1")
print("ready", flush=True)
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, on_store),
                (evt.EVT_CONN_OPEN, on_open), (evt.EVT_RELEASED, on_released)])
'''


class NullSCP:
    """pynetdicom 3.0 alone: same PDU size and chunked receive, handler returns 0x0000 at once."""

    netns = client_netns = None  # what store.send asks of a receiver (bench/lab.py Receiver)
    title = "NULL_SCP"
    host = "127.0.0.1"

    def __init__(self, root: Path, env: dict):
        self.env = {**os.environ, **env}
        self.root = root
        root.mkdir(parents=True)
        self.count = root / "count"
        self.port = store.helpers.free_port()

    def __enter__(self):
        script = self.root / "null_scp.py"
        script.write_text(NULL_SCP)
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.port), str(self.root), str(self.count)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("null SCP did not start")
        time.sleep(0.5)
        self.pid = self.proc.pid
        self.hwm_idle = None
        return self

    def stored(self) -> int:
        return int(self.count.read_text()) if self.count.exists() else 0

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait(10)


VARIANTS = {
    "pynetdicom-null": None,
    "null+fastpoll": "null+fastpoll",
    "null+bigrecv": "null+bigrecv",
    "base": "",
    "samedir": "samedir",
    "nofsync": "nofsync",
    "sqlnormal": "sqlnormal",
    "fastpoll": "fastpoll",
    "bigrecv": "bigrecv",
    "fast": "samedir+fastpoll+bigrecv",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json")
    p.add_argument("--wait-quiet", type=float, default=60.0)
    args = p.parse_args()
    store.QUIET_WAIT = args.wait_quiet
    work = Path(tempfile.mkdtemp(prefix="bench-exp-"))
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = {}
    try:
        (work / "data").mkdir()
        data = store.Data(work / "data", args.quick, {"a", "d"})
        n = 0
        for name in args.variants.split(","):
            env = {"PYTHONPATH": str(site), "BENCH_VARIANT": VARIANTS[name] or ""}
            rows = {}
            for case, files in (("a", data.ct), ("d", data.small)):
                runs = []
                for _ in range(args.repeat):
                    n += 1
                    null = VARIANTS[name] is None or VARIANTS[name].startswith("null")
                    receiver = (NullSCP(work / f"{n:02d}-{name}", env) if null else
                                store.Service(work / f"{n:02d}-{name}", store.CF08_BUFFER, env=env))
                    with receiver as svc:
                        r = store.send(svc, [files])
                    if r["missing"] or r["sender_failures"]:
                        raise RuntimeError(f"{name}/{case}: {r}")
                    runs.append(r)
                rows[case] = {
                    "mbps": statistics.median(r["mbps"] for r in runs),
                    "per_s": statistics.median(r["per_s"] for r in runs),
                    "ms_per_instance": round(1000 * statistics.median(r["seconds"] for r in runs) / len(files), 2),
                    "cpu_percent": statistics.median(r.get("receiver_cpu_percent", 0) for r in runs),
                    "runs_per_s": [r["per_s"] for r in runs],
                }
            out[name] = rows
            store.log(f"{name:15s} a {rows['a']['mbps']:7.2f} MB/s ({rows['a']['ms_per_instance']} ms/inst, "
                      f"cpu {rows['a']['cpu_percent']}%)   d {rows['d']['per_s']:6.1f} inst/s "
                      f"({rows['d']['ms_per_instance']} ms/inst, cpu {rows['d']['cpu_percent']}%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'variant':15s}  {'a MB/s':>7s}  {'a ms/inst':>9s}  {'a cpu%':>6s}  {'d inst/s':>8s}  {'d ms/inst':>9s}  {'d cpu%':>6s}")
    for name, rows in out.items():
        a, d = rows["a"], rows["d"]
        print(f"{name:15s}  {a['mbps']:7.2f}  {a['ms_per_instance']:9.2f}  {a['cpu_percent']:6.1f}  "
              f"{d['per_s']:8.1f}  {d['ms_per_instance']:9.2f}  {d['cpu_percent']:6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                               "quick": args.quick, "variants": VARIANTS, "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
