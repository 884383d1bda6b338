"""Start-up cost as a cold start pays it: CPU to the end of the first invocation, the first
invocation's overhead, spawn → first ``/next``, and a cold start under a 128 MB-like CPU limit.

Each round, in a shuffled order (interleaved rounds, one run, this machine's noise shared):

* ``ours``: the layer's extension (``./build_layer.sh``, bytecode, its own launcher) under the
  simulator beside the standard function (10 log lines, one span through the OTel SDK), strategy
  ``end``: a cold start, the first invocation, then ``WARM`` warm ones. Measured:
  - CPU of the extension process from spawn to the end of the first invocation (its ``/next``
    after the first runtime done; the simulator freezes it there). The launcher joins a
    ``cpuacct`` cgroup before it execs Python, so every thread's CPU is counted, the startup
    thread's too after it ended (on a machine without a writable cgroup: ``/proc/<pid>/stat``,
    10 ms ticks);
  - spawn → first ``/next`` (the simulator's instants);
  - the first invocation's overhead (runtime done → our ``/next``) and the warm ones' median;
  the same with a function that imports nothing (its runtime is ready before our start-up is
  done, so a very early first invocation meets an unfinished start-up).
* ``before`` (``--before-layer DIR``, optional): the same for another build, e.g. the commit
  before a change, so that every change is measured before/after in the same rounds.
* ``card``: a fresh interpreter started like the launcher (``python3 -I -S -B``) that only imports
  the four runtime dependencies (``requests``, protobuf with the three OTLP service modules,
  ``readerwriterlock.rwlock``) from the layer; CPU from ``wait4``. Goal 1: ours ≤ 1.15 × card.
* ``bare``: ``python3 -I -S -B -c pass``, spawn → exit. Goal 3: ready ≤ 3 × bare.
* ``cpu_next`` (info): the CPU of the process from spawn to its first ``/next``, which a loaded
  machine blurs far less than the wall-clock ``ready``: the layer's bootstrap run as its launcher
  runs it (``python3 -I -S -B`` and a script by path) by a probe that only replaces
  ``ExtensionsApiClient.next_event`` with "write ``time.process_time()`` and exit"; against the CPU
  of ``python3 -I -S -B -c pass`` (``wait4``).

Goal 2: first invocation overhead ≤ 2 × the warm median (``end``).

CPU-limited cold start (``--limited``, root and cgroup v1 ``cpu`` only; the run says when it is
skipped): the function's runtime and the extension in one cgroup with a CFS quota of
128/1769 of one CPU (Lambda gives 1 vCPU at 1,769 MB, proportionally less below), pinned to one
core; simulator start → the first invocation's response, with the extension and without any.

    .venv/bin/python -m bench.bench_startup [--quick] [--layer DIR] [--before-layer DIR] [--limited]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (NAME, Layer, Row, Stats, Workspace, existing_layer, extension_env, interleaved, print_rows,
                          quiet_stop, write_first_next_probe, write_function)

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
CPU = Path("/sys/fs/cgroup/cpu")
CPUSET = Path("/sys/fs/cgroup/cpuset")
WARM = 5
INIT_WAIT_S = 60.0
GOAL_CPU, GOAL_FIRST, GOAL_READY = 1.15, 2.0, 3.0
QUOTA_FRACTION = 128 / 1769  # of one CPU, as a 128 MB function gets
# The standard modules init cannot do without (a socket and JSON for the Extensions and Telemetry
# APIs) and those the code's style rests on (dataclasses for config and events, typing, enum):
# what spawn → first /next costs before any code of ours runs.
FLOOR_IMPORTS = "import socket, json, dataclasses, typing, enum"
CARD_IMPORTS = ("import requests; "
                "from opentelemetry.proto.collector.trace.v1 import trace_service_pb2; "
                "from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2; "
                "from opentelemetry.proto.collector.logs.v1 import logs_service_pb2; "
                "from readerwriterlock import rwlock")


class Cgroup:
    """A cgroup v1 folder under one controller; processes join it by writing their pid."""

    def __init__(self, controller: Path, name: str) -> None:
        self.path = controller / name
        self.path.mkdir()

    @staticmethod
    def usable(controller: Path) -> bool:
        probe = controller / f"lambda-otel-probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
            probe.rmdir()
            return True
        except OSError:
            return False

    def write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def read(self, name: str) -> str:
        return (self.path / name).read_text().strip()

    def remove(self) -> None:
        for _ in range(50):  # bounded: the last process may take a moment to leave
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.05)


def joining_launcher(folder: Path, target: Path, cgroups: List[Cgroup], name: str = NAME) -> Path:
    """An extensions folder whose ``name`` joins the cgroups, then execs the real launcher."""
    folder.mkdir(parents=True, exist_ok=True)
    joins = "".join(f"echo $$ > {c.path}/cgroup.procs\n" for c in cgroups)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{joins}exec {target} \"$@\"\n")
    path.chmod(0o755)
    return folder


def proc_cpu_ns(pid: int) -> int:
    """utime + stime of a process (all its threads, ended ones included), in 10 ms ticks."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def freezes_before_delivery(sim, sink, res) -> float:
    """How many freezes an invocation's log records waited in memory before reaching the sink
    (0: exported in its own hold); inf if they never arrived before the simulator stopped."""
    from lambda_otel.local.sink import any_value

    arrived = [r.end for r in sink.requests_to("/v1/logs") if r.status == 200 and r.decoded is not None and r.end
               and any(kv.key == "faas.invocation_id" and any_value(kv.value) == res.request_id
                       for rl in r.decoded.resource_logs for sl in rl.scope_logs for lr in sl.log_records
                       for kv in lr.attributes)]
    if not arrived:
        return float("inf")
    at = min(arrived)
    return float(sum(1 for f in sim.freezes if res.started_at.mono < f.frozen_at.mono < at))


LIGHT_FUNCTION = """\
import sys


def handler(event, context):
    for i in range(int(event.get("lines", 10))):
        sys.stdout.write("light line %06d level=INFO msg=%s\\n" % (i, "x" * 170))
    sys.stdout.flush()
    return {}
"""


def write_light_function(folder: Path) -> Path:
    """A function with no SDK: its runtime is ready long before our start-up is done."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_function.py").write_text(LIGHT_FUNCTION)
    return folder


class ColdStart:
    """One cold start of one layer under the simulator: the figures of one round."""

    def __init__(self, ws: Workspace, layer: Layer, label: str, use_cgroup: bool, light: bool = False) -> None:
        self.ws, self.layer, self.label, self.use_cgroup = ws, layer, label, use_cgroup
        self.function_dir = (write_light_function if light else write_function)(ws.mkdtemp("fn-"))
        self.samples: Dict[str, List[float]] = {"cpu": [], "ready": [], "first": [], "warm": [], "freezes": []}

    def __call__(self) -> float:
        from lambda_otel.local.simulator import Simulator
        from lambda_otel.local.sink import OtlpSink

        cgroup = Cgroup(CPUACCT, f"lambda-otel-bench-{uuid.uuid4().hex[:8]}") if self.use_cgroup else None
        sink = OtlpSink().start()
        sim = None
        try:
            ext_dir = joining_launcher(self.ws.mkdtemp("ext-"), self.layer.extensions_dir / NAME,
                                       [cgroup] if cgroup else [])
            env = extension_env(self.layer, sink.endpoint, LAMBDA_OTEL_FLUSH_STRATEGY="end",
                                LAMBDA_OTEL_LOG_LEVEL="warning")
            sim = Simulator(extensions_dir=str(ext_dir), handler="bench_function.handler",
                            handler_dir=str(self.function_dir), env=env, init_timeout_s=INIT_WAIT_S, timeout_s=10.0)
            sim.start(timeout=INIT_WAIT_S)
            first = sim.invoke({"lines": 10, "span": True}, timeout=30)
            info = next(e for e in sim.extensions if e.name == NAME)
            cpu_ns = int(cgroup.read("cpuacct.usage")) if cgroup else proc_cpu_ns(info.pid)
            warm = [sim.invoke({"lines": 10, "span": True}, timeout=30) for _ in range(WARM)]
            for res in [first] + warm:
                if res.status != "success" or res.extension_overhead_ms is None:
                    raise RuntimeError(f"{self.label}: invocation ended {res.status}")
            self.samples["cpu"].append(cpu_ns / 1e6)
            self.samples["ready"].append((info.first_next_at.mono - info.spawned_at.mono) * 1000.0)
            self.samples["first"].append(first.extension_overhead_ms)
            self.samples["warm"].append(statistics.median(r.extension_overhead_ms for r in warm))
            self.samples["freezes"].append(freezes_before_delivery(sim, sink, first))
            return cpu_ns / 1e6
        finally:
            if sim is not None:
                quiet_stop(sim)
            sink.stop()
            if cgroup is not None:
                cgroup.remove()


def ready_ms(ws: Workspace, layer: Layer) -> float:
    """Spawn → first /next of the layer's extension alone (no function runtime competing for the CPU)."""
    from lambda_otel.local.simulator import Simulator

    env = extension_env(layer, "http://127.0.0.1:9", LAMBDA_OTEL_LOG_LEVEL="warning")
    sim = Simulator(extensions_dir=str(layer.extensions_dir), env=env, init_timeout_s=INIT_WAIT_S)
    try:
        sim.start(wait=False)
        info = sim.wait_for(lambda: next((e for e in sim.extensions if e.name == NAME and e.first_next_at), None),
                            INIT_WAIT_S, "the extension's first /next")
        return (info.first_next_at.mono - info.spawned_at.mono) * 1000.0
    finally:
        quiet_stop(sim)


def cpu_to_next_ms(ws: Workspace, layer: Layer, usual_endpoint: bool = False) -> float:
    """CPU (ms) of the layer's extension from spawn to its first /next, alone under the simulator.

    ``usual_endpoint``: the backend is named the way most set-ups name it, a host name on the
    OTLP/HTTP port, which is also our receiver's (``http://collector.internal:4318``, here with the
    receiver's port of this run). Nothing listens there: only what happens before ``/next`` counts.
    """
    from lambda_otel.local.simulator import Simulator

    folder = ws.mkdtemp("probe-")
    ext_dir = write_first_next_probe(folder, "python3", layer.code_dir / "lambda_otel" / "layer_bootstrap.py",
                                     str(layer.extensions_dir / NAME))
    out = folder / "first-next.json"
    env = extension_env(layer, "http://127.0.0.1:9", LAMBDA_OTEL_LOG_LEVEL="warning")
    if usual_endpoint:
        env["LAMBDA_OTEL_EXPORTER_ENDPOINT"] = f"http://collector.internal:{env['LAMBDA_OTEL_RECEIVER_PORT']}"
    sim = Simulator(extensions_dir=str(ext_dir), env=env, init_timeout_s=INIT_WAIT_S)
    try:
        sim.start(wait=False)
        deadline = time.monotonic() + INIT_WAIT_S
        while not out.is_file() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not out.is_file():
            output = "\n".join(line for _, line in sim.process_output(NAME))
            raise RuntimeError(f"the CPU probe never reached its first /next; its output:\n{output}")
        return json.loads(out.read_text())["cpu_s"] * 1000.0
    finally:
        quiet_stop(sim)


def bare_cpu_ms(layer: Layer) -> float:
    """CPU (ms) of ``python3 -I -S -B -c pass``."""
    proc = subprocess.Popen([layer.python3, "-I", "-S", "-B", "-c", "pass"], stdin=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return (usage.ru_utime + usage.ru_stime) * 1000.0


def card_cpu_ms(layer: Layer) -> float:
    """CPU (ms) of a fresh ``python3 -I -S -B`` that imports the four runtime dependencies from the layer."""
    code = f"import sys; sys.path.insert(0, {str(layer.code_dir)!r}); {CARD_IMPORTS}"
    proc = subprocess.Popen([layer.python3, "-I", "-S", "-B", "-c", code], stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"the design-card imports failed ({proc.returncode})")
    return (usage.ru_utime + usage.ru_stime) * 1000.0


def bare_ms(layer: Layer, code: str = "pass") -> float:
    started = time.monotonic()
    proc = subprocess.Popen([layer.python3, "-I", "-S", "-B", "-c", code], stdin=subprocess.DEVNULL)
    proc.wait()
    return (time.monotonic() - started) * 1000.0


def limited_cold_start(ws: Workspace, layer: Layer, with_extension: bool, fn_dir: Path) -> float:
    """ms from Simulator.start() to the first invocation's response, runtime (+ extension) in a
    CPU-quota cgroup pinned to CPU 0."""
    from lambda_otel.local.processes import default_runtime_argv
    from lambda_otel.local.simulator import Simulator
    from lambda_otel.local.sink import OtlpSink

    name = f"lambda-otel-bench-{uuid.uuid4().hex[:8]}"
    cpu = Cgroup(CPU, name)
    cpuset = Cgroup(CPUSET, name)
    sink = OtlpSink().start()
    sim = None
    try:
        period = 100_000
        cpu.write("cpu.cfs_period_us", str(period))
        cpu.write("cpu.cfs_quota_us", str(int(period * QUOTA_FRACTION)))
        cpuset.write("cpuset.mems", (CPUSET / "cpuset.mems").read_text().strip() or "0")
        cpuset.write("cpuset.cpus", "0")
        groups = [cpu, cpuset]
        joins = "".join(f"echo $$ > {c.path}/cgroup.procs; " for c in groups)
        runtime = ["/bin/sh", "-c", joins + "exec " + " ".join(shlex.quote(a) for a in default_runtime_argv("bench_function.handler"))]
        ext_dir = joining_launcher(ws.mkdtemp("ext-"), layer.extensions_dir / NAME, groups) if with_extension \
            else ws.mkdtemp("noext-")
        env = extension_env(layer, sink.endpoint, LAMBDA_OTEL_LOG_LEVEL="warning")
        if not with_extension:  # the function's SDK then exports to the sink itself (same work, no receiver)
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
        env["PYTHONPATH"] = str(fn_dir)
        sim = Simulator(extensions_dir=str(ext_dir), runtime_cmd=runtime, handler="bench_function.handler",
                        handler_dir=str(fn_dir), env=env, init_timeout_s=120.0, timeout_s=60.0)
        started = time.monotonic()
        sim.start(timeout=120.0)
        res = sim.invoke({"lines": 10, "span": True}, timeout=120.0)
        elapsed = (time.monotonic() - started) * 1000.0
        if res.status != "success":
            raise RuntimeError(f"limited cold start: invocation ended {res.status}")
        return elapsed
    finally:
        if sim is not None:
            quiet_stop(sim)
        sink.stop()
        cpu.remove()
        cpuset.remove()


def run(ws: Workspace, quick: bool = False, before: Optional[Layer] = None, limited: bool = False) -> List[Row]:
    rounds = 2 if quick else 20
    use_cgroup = Cgroup.usable(CPUACCT)
    ours = ColdStart(ws, ws.layer, "ours", use_cgroup)
    light = ColdStart(ws, ws.layer, "light", use_cgroup, light=True)
    variants = {"ours": ours, "card": lambda: card_cpu_ms(ws.layer), "bare": lambda: bare_ms(ws.layer),
                "ready": lambda: ready_ms(ws, ws.layer), "light": light,
                "floor": lambda: bare_ms(ws.layer, FLOOR_IMPORTS),
                "cpu_next": lambda: cpu_to_next_ms(ws, ws.layer), "bare_cpu": lambda: bare_cpu_ms(ws.layer),
                "cpu_next_usual": lambda: cpu_to_next_ms(ws, ws.layer, usual_endpoint=True)}
    old = None
    if before is not None:
        old = ColdStart(ws, before, "before", use_cgroup)
        variants["before"] = old
        variants["ready_before"] = lambda: ready_ms(ws, before)
        variants["cpu_next_before"] = lambda: cpu_to_next_ms(ws, before)
        variants["cpu_next_usual_before"] = lambda: cpu_to_next_ms(ws, before, usual_endpoint=True)
    ours()  # warm-up: page cache, the simulator's and the function's imports
    card_cpu_ms(ws.layer)
    stats = interleaved(variants, rounds)
    how = "cpuacct cgroup" if use_cgroup else "/proc stat ticks"
    note = f"{rounds} interleaved rounds"
    rows = [
        Row("startup", "CPU spawn → end of 1st invocation", Stats(ours.samples["cpu"]), stats["card"], "ms",
            f"≤ {GOAL_CPU:g}×", met=None, base_label="card imports", note=f"{note}; ours: {how}"),
        Row("startup", "1st invocation overhead (end)", Stats(ours.samples["first"]), Stats(ours.samples["warm"]),
            "ms", f"≤ {GOAL_FIRST:g}×", met=None, base_label="warm median", note=note),
        Row("startup", "spawn → first /next (extension alone)", stats["ready"], stats["bare"], "ms",
            f"≤ {GOAL_READY:g}×", met=None, base_label="python3 -I -S -B -c pass", note=note),
        Row("startup", "spawn → first /next (runtime starting beside it)", Stats(ours.samples["ready"]),
            stats["bare"], "ms", "–", met=None, base_label="python3 -I -S -B -c pass", note=note + " (info)"),
        Row("startup", f"floor: python3 -I -S -B -c '{FLOOR_IMPORTS}'", stats["floor"], stats["bare"], "ms", "–",
            met=None, base_label="python3 -I -S -B -c pass", note=note + " (info: the standard modules init needs)"),
        Row("startup", "CPU spawn → first /next (extension alone)", stats["cpu_next"], stats["bare_cpu"], "ms", "–",
            met=None, base_label="python3 -I -S -B -c pass (CPU)",
            note=note + " (info: CPU, which a loaded machine blurs less than the wall clock)"),
        Row("startup", "CPU spawn → first /next, endpoint http://collector.internal:<receiver port>",
            stats["cpu_next_usual"], stats["bare_cpu"], "ms", "–", met=None,
            base_label="python3 -I -S -B -c pass (CPU)",
            note=note + " (info: the usual backend URL, a host name on the OTLP/HTTP port, which is our receiver's)"),
    ]
    rows.insert(2, Row("startup", "1st invocation overhead (end), function without SDK", Stats(light.samples["first"]),
                       Stats(light.samples["warm"]), "ms", f"≤ {GOAL_FIRST:g}×", met=None, base_label="warm median",
                       note=note + "; its runtime is ready before our start-up is done"))
    for row, goal in zip(rows[:4], (GOAL_CPU, GOAL_FIRST, GOAL_FIRST, GOAL_READY)):
        row.met = row.ratio is not None and row.ratio <= goal
    rows.insert(3, Row("startup", "1st invocation's logs: freezes waited in memory, function without SDK",
                       Stats(light.samples["freezes"]), None, "", "–", met=None,
                       note=note + " (info: 0 = sent in its own hold; no hold waits for the export client's import)"))
    if old is not None:
        for key, metric in (("cpu", "CPU to end of 1st invocation"), ("first", "1st invocation overhead")):
            rows.append(Row("startup", f"{metric}: after vs before", Stats(ours.samples[key]),
                            Stats(old.samples[key]), "ms", "–", met=None, base_label="before", note=note))
        rows.append(Row("startup", "spawn → first /next (alone): after vs before", stats["ready"],
                        stats["ready_before"], "ms", "–", met=None, base_label="before", note=note))
        rows.append(Row("startup", "CPU spawn → first /next (alone): after vs before", stats["cpu_next"],
                        stats["cpu_next_before"], "ms", "–", met=None, base_label="before", note=note))
        rows.append(Row("startup", "CPU spawn → first /next, endpoint collector.internal:<receiver port>: after vs "
                        "before", stats["cpu_next_usual"], stats["cpu_next_usual_before"], "ms", "–", met=None,
                        base_label="before", note=note))
    if limited:
        print_rows(rows)  # the main table first: the limited runs take minutes
        rows = run_limited(ws, quick)
    return rows


def run_limited(ws: Workspace, quick: bool) -> List[Row]:
    if os.geteuid() != 0 or not (Cgroup.usable(CPU) and Cgroup.usable(CPUSET)):
        print("CPU-limited cold start skipped: needs root and writable cgroup v1 cpu and cpuset controllers",
              file=sys.stderr)
        return []
    fn_dir = write_function(ws.mkdtemp("fn-"))
    rounds = 1 if quick else 5
    stats = interleaved({
        "with": lambda: limited_cold_start(ws, ws.layer, True, fn_dir),
        "without": lambda: limited_cold_start(ws, ws.layer, False, fn_dir),
    }, rounds)
    pct = f"{QUOTA_FRACTION * 100:.1f} % of one CPU"
    return [Row("startup", f"cold start at {pct} (start → 1st response)", stats["with"], stats["without"], "ms",
                "–", met=None, base_label="no extension", note=f"{rounds} interleaved rounds, pinned to CPU 0")]


def run_next_only(ws: Workspace, quick: bool, before: Optional[Layer]) -> List[Row]:
    """Only the CPU from spawn to the first /next (the probe), with the test endpoint and with the usual one."""
    rounds = 2 if quick else 30
    variants = {"bare_cpu": lambda: bare_cpu_ms(ws.layer)}
    layers = {"after": ws.layer, "before": before} if before is not None else {"after": ws.layer}
    for label, layer in layers.items():
        variants[f"{label}"] = lambda layer=layer: cpu_to_next_ms(ws, layer)
        variants[f"{label}_usual"] = lambda layer=layer: cpu_to_next_ms(ws, layer, usual_endpoint=True)
    stats = interleaved(variants, rounds)
    note = f"{rounds} interleaved rounds"
    rows = []
    for label in layers:
        rows.append(Row("startup", f"CPU spawn → first /next, {label}", stats[label], stats["bare_cpu"], "ms", "–",
                        met=None, base_label="python3 -I -S -B -c pass (CPU)", note=note))
        rows.append(Row("startup", f"CPU spawn → first /next, endpoint collector.internal:<receiver port>, {label}",
                        stats[f"{label}_usual"], stats["bare_cpu"], "ms", "–", met=None,
                        base_label="python3 -I -S -B -c pass (CPU)", note=note))
    if before is not None:
        rows.append(Row("startup", "CPU spawn → first /next, endpoint collector.internal:<receiver port>: after vs "
                        "before", stats["after_usual"], stats["before_usual"], "ms", "–", met=None,
                        base_label="before", note=note))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, not a measurement)")
    parser.add_argument("--layer", help="an already unzipped layer folder (skips ./build_layer.sh)")
    parser.add_argument("--before-layer", help="another unzipped layer, measured in the same rounds")
    parser.add_argument("--limited", action="store_true", help="also the cold start under a 128 MB-like CPU quota")
    parser.add_argument("--limited-only", action="store_true", help="only the CPU-limited cold start")
    parser.add_argument("--next-only", action="store_true",
                        help="only the CPU from spawn to the first /next, with the test and the usual endpoint")
    args = parser.parse_args(argv)
    with Workspace(args.layer) as ws:
        before = existing_layer(Path(args.before_layer).resolve(), ws.tmp) if args.before_layer else None
        if args.limited_only:
            print_rows(run_limited(ws, args.quick))
        elif args.next_only:
            print_rows(run_next_only(ws, args.quick, before))
        else:
            print_rows(run(ws, quick=args.quick, before=before, limited=args.limited))
    return 0


if __name__ == "__main__":
    sys.exit(main())
