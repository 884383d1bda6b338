"""Ready time: process spawn → first ``/event/next``, from the built layer, under the simulator.

lambda-otel: the simulator starts the layer's launcher (``extensions/lambda-otel``, which execs
``python3 -I -S -B .../layer_bootstrap.py``) and records the instant just before the fork
(``ExtensionInfo.spawned_at``) and the instant the extension's first ``/next`` arrived
(``first_next_at``); the extension registers, binds, builds its pipeline and subscribes in between.
No function runtime is started, so nothing else competes for the CPU during that time.
Baseline: the same interpreter started the way the launcher starts it, ``python3 -I -S -B -c pass``,
spawn → exit. A literal ``python3 -c pass`` is timed in the same rounds and shown for information
only: on this build machine its ``site`` step runs a sandbox ``.pth`` file that imports ``certifi``
(~35 ms), which says nothing about Lambda's interpreter and would flatter the ratio.

Goal: ≤ 3× the baseline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NAME, Row, Workspace, extension_env, interleaved, main_for, quiet_stop

GOAL_RATIO = 3.0
INIT_WAIT_S = 30.0


def ready_once(ws: Workspace) -> float:
    """One cold start of the layer's extension; ms from spawn to its first /next."""
    from lambda_otel.local.simulator import Simulator

    layer = ws.layer
    env = extension_env(layer, "http://127.0.0.1:9", LAMBDA_OTEL_LOG_LEVEL="warning")
    sim = Simulator(extensions_dir=str(layer.extensions_dir), env=env, init_timeout_s=INIT_WAIT_S)
    try:
        sim.start(wait=False)  # no runtime process: we only wait for the extension
        info = sim.wait_for(lambda: next((e for e in sim.extensions if e.name == NAME and e.first_next_at), None),
                            INIT_WAIT_S, "the extension's first /next")
        if info.spawned_at is None:
            raise RuntimeError("the simulator recorded no spawn instant for the extension")
        return (info.first_next_at.mono - info.spawned_at.mono) * 1000.0
    finally:
        quiet_stop(sim)


def bare_python_once(ws: Workspace, flags: Sequence[str] = ("-I", "-S", "-B")) -> float:
    """``python3 [flags] -c pass``: ms from just before the fork to the exit (wait() without a timeout)."""
    argv = [ws.layer.python3, *flags, "-c", "pass"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.wait()
    elapsed = (time.monotonic() - started) * 1000.0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited with {proc.returncode}")
    return elapsed


def run(ws: Workspace, quick: bool = False) -> List[Row]:
    rounds = 3 if quick else 30
    ready_once(ws)  # warm-up: page cache, the simulator's imports
    bare_python_once(ws)
    stats = interleaved({
        "ours": lambda: ready_once(ws),
        "base": lambda: bare_python_once(ws),
        "site": lambda: bare_python_once(ws, ()),
    }, rounds)
    ours, base, site = stats["ours"], stats["base"], stats["site"]
    row = Row("ready", "spawn → first /next (layer, .pyc)", ours, base, "ms", f"≤ {GOAL_RATIO:g}×",
              met=None, base_label="python3 -I -S -B -c pass", note=f"{rounds} interleaved rounds")
    row.met = row.ratio is not None and row.ratio <= GOAL_RATIO
    info = Row("ready", "same, vs a literal python3 -c pass (info)", ours, site, "ms", "–", met=None,
               base_label="python3 -c pass", note="this machine's site step imports certifi (sandbox .pth)")
    return [row, info]


def main(argv=None) -> int:
    return main_for(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
