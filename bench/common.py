"""What every benchmark shares: statistics, result rows, the built layer, the simulator set-up.

Why it looks like this:
- Every benchmark compares lambda-otel with a baseline *in the same run*, in interleaved rounds
  (each round runs every variant once, in a shuffled order), because this machine is shared and
  noisy: the ratio of two medians taken side by side is the figure that means something.
- The extension is measured as it ships: built by ``./build_layer.sh`` (with bytecode), unzipped,
  and started by the layer's own launcher under the local simulator. The launcher execs ``python3``
  from ``PATH``; here that is a symlink to the real interpreter (the ``python3`` of this machine's
  PATH can be a pyenv shell shim, which would add its own start-up to every spawn).
- Latencies are taken with ``time.perf_counter``/``time.monotonic`` around blocking calls, never
  through ``Popen.wait(timeout=...)`` (which quantises to 50 ms steps).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from lambda_otel.local.tools import free_port, unzip_layer  # noqa: F401  (bench modules import them from here)

REPO = Path(__file__).resolve().parent.parent
NAME = "lambda-otel"
BUILD_TIMEOUT_S = 300


# --- statistics ----------------------------------------------------------------------------------


@dataclass
class Stats:
    """Median, min, max (and p99 when asked) of one variant's samples."""

    samples: List[float]

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile (p in 0..100)."""
        ordered = sorted(self.samples)
        rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
        return ordered[rank - 1]


def fmt_num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_stats(stats: Optional[Stats], unit: str) -> str:
    if stats is None or not stats.samples:
        return "–"
    if stats.n == 1 or stats.min == stats.max:
        return f"{fmt_num(stats.median)} {unit}"
    return f"{fmt_num(stats.median)} {unit} ({fmt_num(stats.min)}–{fmt_num(stats.max)})"


@dataclass
class Row:
    """One line of the results table."""

    bench: str
    metric: str
    ours: Optional[Stats]
    base: Optional[Stats]
    unit: str
    goal: str
    met: Optional[bool]  # None: no goal for this row
    base_label: str = ""
    note: str = ""
    ratio: Optional[float] = None  # ours.median / base.median unless given

    def __post_init__(self) -> None:
        if self.ratio is None and self.ours and self.base and self.base.samples and self.base.median > 0:
            self.ratio = self.ours.median / self.base.median

    def cells(self) -> List[str]:
        base = fmt_stats(self.base, self.unit)
        if self.base_label:
            base = f"{self.base_label}: {base}"
        ratio = f"{self.ratio:.2f}×" if self.ratio is not None else "–"
        verdict = "–" if self.met is None else ("met" if self.met else "MISSED")
        return [self.bench, self.metric, fmt_stats(self.ours, self.unit), base, ratio, self.goal, verdict]


HEADERS = ["bench", "metric", "lambda-otel: median (min–max)", "baseline: median (min–max)", "ratio", "goal", "result"]


def rst_table(rows: Sequence[Row]) -> str:
    """An RST "simple table" (also readable as plain text)."""
    cells = [HEADERS] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    rule = "  ".join("=" * w for w in widths)
    out = [rule, "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths)).rstrip(), rule]
    for c in cells[1:]:
        out.append("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())
    out.append(rule)
    notes = [f"- {r.bench} / {r.metric}: {r.note}" for r in rows if r.note]
    return "\n".join(out + ([""] + notes if notes else []))


def interleaved(variants: Dict[str, Callable[[], float]], rounds: int, seed: int = 8) -> Dict[str, Stats]:
    """Run every variant once per round, in a shuffled order; return each variant's samples."""
    rng = random.Random(seed)
    samples: Dict[str, List[float]] = {k: [] for k in variants}
    names = list(variants)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            samples[name].append(variants[name]())
    return {k: Stats(v) for k, v in samples.items()}


# --- the built layer -------------------------------------------------------------------------------


@dataclass
class Layer:
    """An unzipped layer: ``root/extensions/lambda-otel`` and ``root/lambda-otel/``."""

    root: Path
    zip_path: Optional[Path]
    python_bin: Path  # a folder whose python3 is the interpreter the launcher will exec
    tmp: Path = field(repr=False, default=Path("."))

    @property
    def extensions_dir(self) -> Path:
        return self.root / "extensions"

    @property
    def code_dir(self) -> Path:
        return self.root / NAME

    @property
    def python3(self) -> str:
        return str(self.python_bin / "python3")

    def path_env(self) -> str:
        return str(self.python_bin) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")


def real_python() -> str:
    """The interpreter behind this venv (what a Lambda runtime's python3 would be)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def build_layer(tmp: Path, log: Callable[[str], None] = print) -> Layer:
    """``./build_layer.sh`` into tmp (for this interpreter's version), unzipped into tmp/root."""
    out = tmp / "out"
    cmd = ["/bin/sh", str(REPO / "build_layer.sh"), "--out", str(out), "--python-bin", real_python()]
    cache = os.environ.get("PIP_CACHE_DIR")
    if cache:
        cmd += ["--pip-cache", cache]
    log("building the layer: " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"build_layer.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    match = re.search(r"^layer: (.+)$", proc.stdout, re.M)
    if not match:
        raise RuntimeError("build_layer.sh printed no 'layer:' line:\n" + proc.stdout)
    zip_path = Path(match.group(1).strip())
    root = tmp / "root"
    unzip_layer(zip_path, root)
    return Layer(root=root, zip_path=zip_path, python_bin=python_bindir(tmp), tmp=tmp)


def existing_layer(root: Path, tmp: Path) -> Layer:
    """An already unzipped layer (``--layer DIR``), to skip the build when iterating."""
    if not (root / "extensions" / NAME).is_file():
        raise RuntimeError(f"{root} is not an unzipped layer (no extensions/{NAME})")
    zips = sorted(root.parent.glob("out/*.zip"))
    return Layer(root=root, zip_path=zips[0] if zips else None, python_bin=python_bindir(tmp), tmp=tmp)


def python_bindir(tmp: Path) -> Path:
    bindir = tmp / "runtime-bin"
    if not bindir.is_dir():
        bindir.mkdir(parents=True)
        os.symlink(real_python(), bindir / "python3")
    return bindir


class Workspace:
    """A temporary folder and the layer, shared by the benchmarks of one run; removed on close."""

    def __init__(self, layer_dir: Optional[str] = None, keep: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="lambda-otel-bench-"))
        self.keep = keep
        self._layer_dir = Path(layer_dir).resolve() if layer_dir else None
        self._layer: Optional[Layer] = None

    @property
    def layer(self) -> Layer:
        if self._layer is None:
            if self._layer_dir is not None:
                self._layer = existing_layer(self._layer_dir, self.tmp)
            else:
                self._layer = build_layer(self.tmp, log=lambda m: print(m, file=sys.stderr))
        return self._layer

    def mkdtemp(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the simulated function ------------------------------------------------------------------------

# The standard load's function: 10 log lines of ~200 bytes and one span through the OTel SDK to the
# extension's receiver (OTEL_EXPORTER_OTLP_ENDPOINT), exported synchronously before returning, as a
# Lambda function must (a BatchSpanProcessor would be frozen with its queue).
HANDLER_SOURCE = '''\
import sys

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "bench-function"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(timeout=5)))
tracer = provider.get_tracer("bench")
PAD = "x" * 170


def handler(event, context):
    lines = int(event.get("lines", 10))
    span = bool(event.get("span", True))
    out = sys.stdout
    if span:
        with tracer.start_as_current_span("work") as s:
            s.set_attribute("bench.lines", lines)
            for i in range(lines):
                out.write("bench line %06d level=INFO msg=%s\\n" % (i, PAD))
    else:
        for i in range(lines):
            out.write("bench line %06d level=INFO msg=%s\\n" % (i, PAD))
    out.flush()
    return {"lines": lines}
'''

# The baseline extension for per-invocation and shutdown costs: registers and loops on /next
# with nothing else to do, so what it costs is the simulator's own overhead.
NOOP_EXTENSION = '''\
#!{python}
import http.client, json, os, sys
api = os.environ["AWS_LAMBDA_RUNTIME_API"]
conn = http.client.HTTPConnection(api)
conn.request("POST", "/2020-01-01/extension/register", body=json.dumps({{"events": ["INVOKE", "SHUTDOWN"]}}),
             headers={{"Lambda-Extension-Name": os.path.basename(sys.argv[0])}})
resp = conn.getresponse(); resp.read()
ext_id = resp.getheader("Lambda-Extension-Identifier")
while True:
    conn.request("GET", "/2020-01-01/extension/event/next", headers={{"Lambda-Extension-Identifier": ext_id}})
    resp = conn.getresponse()
    event = json.loads(resp.read())
    if event.get("eventType") == "SHUTDOWN":
        sys.exit(0)
'''


def write_function(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_function.py").write_text(HANDLER_SOURCE)
    return folder


def write_noop_extension(folder: Path, name: str = "noop") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(NOOP_EXTENSION.format(python=real_python()))
    path.chmod(0o755)
    return folder


# Run as ``python3 -I -S -B PROBE <bootstrap> <launcher path> <out file>``: the layer's bootstrap as
# its launcher runs it, except that the first /next writes, as JSON, the process's CPU so far and
# the names of the modules imported so far, then exits (the import hook that installs this
# removes itself as soon as it has).
FIRST_NEXT_PROBE = """\
import builtins, os, sys
bootstrap, launcher, out = sys.argv[1], sys.argv[2], sys.argv[3]
real_import = builtins.__import__


def first_next(self, on_sent=None):
    modules = sorted(sys.modules)  # before the probe's own imports (time is built in: microseconds)
    import json, time

    cpu_s = time.process_time()
    with open(out + ".part", "w") as fh:
        json.dump({"cpu_s": cpu_s, "modules": modules}, fh)
    os.rename(out + ".part", out)
    os._exit(0)


def probe_import(*args, **kwargs):
    module = real_import(*args, **kwargs)
    api = sys.modules.get("lambda_otel.extensions_api")
    if api is not None and hasattr(api, "ExtensionsApiClient"):
        builtins.__import__ = real_import
        api.ExtensionsApiClient.next_event = first_next
    return module


builtins.__import__ = probe_import
sys.argv = [bootstrap, "", launcher]
exec(compile(open(bootstrap).read(), bootstrap, "exec"), {"__name__": "__main__", "__file__": bootstrap})
"""


def write_first_next_probe(folder: Path, python: str, bootstrap: Path, launcher: str) -> Path:
    """An extensions folder in ``folder`` whose one extension runs ``bootstrap`` under
    FIRST_NEXT_PROBE; its report is ``folder / "first-next.json"`` once it reached its first /next."""
    import shlex

    probe, ext_dir = folder / "first-next-probe.py", folder / "extensions"
    probe.write_text(FIRST_NEXT_PROBE)
    ext_dir.mkdir(parents=True, exist_ok=True)
    path = ext_dir / NAME
    args = " ".join(shlex.quote(str(a)) for a in (probe, bootstrap, launcher, folder / "first-next.json"))
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(python)} -I -S -B {args}\n")
    path.chmod(0o755)
    return ext_dir


def extension_env(layer: Layer, sink_endpoint: Optional[str], **extra: str) -> Dict[str, str]:
    """Environment for the function and the extension (Lambda gives both the same variables)."""
    receiver_port = free_port()
    env = {
        "PATH": layer.path_env(),
        "LAMBDA_OTEL_TELEMETRY_PORT": str(free_port()),
        "LAMBDA_OTEL_RECEIVER_PORT": str(receiver_port),
        # The function's SDK exports to the extension's receiver; the extension to the sink.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    if sink_endpoint:
        env["LAMBDA_OTEL_EXPORTER_ENDPOINT"] = sink_endpoint
    env.update(extra)
    return env


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


def quiet_stop(sim) -> None:
    """Stop a simulator without the tracebacks its API server prints when it kills a process that
    still holds a keep-alive connection (they are expected here and would bury the table)."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        sim.stop()


def print_rows(rows: Sequence[Row]) -> None:
    print(rst_table(rows), flush=True)


def standard_args(argv: Optional[Sequence[str]], description: str):
    """The command line every bench module shares when run on its own."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, not a measurement)")
    parser.add_argument("--layer", help="an already unzipped layer folder (skips ./build_layer.sh)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


def main_for(run: Callable[..., List[Row]], description: str, argv: Optional[Sequence[str]] = None) -> int:
    args = standard_args(argv, description)
    with Workspace(args.layer, keep=args.keep) as ws:
        print_rows(run(ws, quick=args.quick))
    return 0


# --- the standard load -----------------------------------------------------------------------------
# One simulated function (HANDLER_SOURCE, run by the real AWS RIC) with lambda-otel from the built
# layer or the no-op baseline extension, lambda-otel exporting to an OtlpSink that answers at once.
# Each invocation prints 10 lines of ~200 bytes and (lambda-otel only: nothing else listens on the
# receiver port) sends one span through the OTel SDK to the receiver; the simulator adds the
# platform events.

INIT_WAIT_S = 60.0
INVOKE_WAIT_S = 30.0


class Environment:
    """One simulator (one execution environment) and what it needs; ``close()`` undoes it all."""

    def __init__(self, ws: Workspace, variant: str, sink, timeout_s: float = 10.0,
                 sim_options: Optional[dict] = None, layer: Optional[Layer] = None, **extra_env: str) -> None:
        from lambda_otel.local.simulator import Simulator

        self.variant = variant  # "lambda-otel" or "noop"
        layer = layer or ws.layer  # another build (a --before-layer) when given
        function_dir = write_function(ws.mkdtemp("function-"))
        if variant == NAME:
            ext_dir: Path = layer.extensions_dir
        else:
            ext_dir = write_noop_extension(ws.mkdtemp("noop-ext-"))
        env = extension_env(layer, sink.endpoint if sink is not None else None, **extra_env)
        self.env: Dict[str, str] = env
        self.ext_name = NAME if variant == NAME else "noop"
        self.sim = Simulator(extensions_dir=str(ext_dir), handler="bench_function.handler",
                             handler_dir=str(function_dir), env=env, timeout_s=timeout_s,
                             init_timeout_s=INIT_WAIT_S, shutdown_budget_ms=2000, **(sim_options or {}))
        self.init = self.sim.start(timeout=INIT_WAIT_S)

    @property
    def pid(self) -> int:
        return self.init.extension_pids[self.ext_name]

    def invoke(self, lines: int = 10, span: Optional[bool] = None):
        payload = {"lines": lines, "span": self.variant == NAME if span is None else span}
        res = self.sim.invoke(payload, timeout=INVOKE_WAIT_S)
        if res.status != "success":
            tail = "\n".join(f"{s}: {line}" for s, line in self.sim.process_output(self.ext_name)[-20:])
            raise RuntimeError(f"{self.variant}: invocation ended {res.status} {res.error_type}\n{tail}")
        return res

    def final_flush_line(self) -> str:
        """The extension's one summary line of its final flush (sent, unsent, dropped by reason):
        printed with every short count, so a reader can tell lost from counted."""
        lines = [line for _, line in self.sim.process_output(self.ext_name) if "final flush:" in line]
        return lines[-1] if lines else "(the extension logged no final flush line)"

    def close(self) -> None:
        quiet_stop(self.sim)
