"""Layer size: the zip ``./build_layer.sh`` writes, and its unzipped size.

Baseline: the same layer without lambda-otel's own code (``lambda-otel/lambda_otel/`` and the
launcher), i.e. what the four dependencies (with their own dependencies and bytecode) weigh.
Goal: the zip ≤ 3 MB (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import List

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NAME, Row, Stats, Workspace, main_for

GOAL_ZIP_MB = 3.0
OWN_PREFIXES = (f"{NAME}/lambda_otel/", f"extensions/{NAME}")


def sizes(zip_path: Path):
    """(zip bytes, unzipped bytes, files), for everything and for the dependencies alone."""
    total = {"zip": zip_path.stat().st_size, "unzipped": 0, "files": 0}
    deps = {"zip": 0, "unzipped": 0, "files": 0}
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            total["unzipped"] += info.file_size
            total["files"] += 1
            if not info.filename.startswith(OWN_PREFIXES):
                deps["unzipped"] += info.file_size
                deps["zip"] += info.compress_size + 30 + len(info.filename)  # + local header
                deps["files"] += 1
    return total, deps


def run(ws: Workspace, quick: bool = False) -> List[Row]:
    zip_path = ws.layer.zip_path
    if zip_path is None:
        raise RuntimeError("no layer zip (give --layer a folder unzipped from out/*.zip, or let the bench build)")
    total, deps = sizes(zip_path)
    mb = 1_000_000
    return [
        Row("layer", "zip", Stats([total["zip"] / mb]), Stats([deps["zip"] / mb]), "MB", f"≤ {GOAL_ZIP_MB:g} MB",
            met=total["zip"] / mb <= GOAL_ZIP_MB, base_label="dependencies only",
            note=f"{zip_path.name}, {total['zip']:,} B; dependencies' entries (approx.) {deps['zip']:,} B"),
        Row("layer", f"unzipped ({total['files']} files)", Stats([total["unzipped"] / mb]),
            Stats([deps["unzipped"] / mb]), "MB", "–", met=None, base_label=f"dependencies only ({deps['files']} files)"),
    ]


def main(argv=None) -> int:
    return main_for(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
