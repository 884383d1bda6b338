"""CPython interpreters of Lambda's Python runtimes (3.12, 3.13, 3.14) for the layer tests.

Lambda's current runtimes are newer than the Python this machine has, and the layer's bytecode must
be compiled by the target version. ``interpreter(version)`` returns a command that runs that
version, or None with the reason, trying in order:

1. ``python3.X`` on PATH or in pyenv (a developer machine that has it);
2. Debian's own build, from the registry this machine reaches: ``python3.13`` is in Debian 13
   (trixie), ``python3.14`` in unstable (sid). The packages are downloaded with apt-get under a
   private configuration (its own sources, lists, cache and an empty dpkg status, so nothing on the
   machine changes) and unpacked into ``.cache/pythons/<version>/`` in the repository (gitignored),
   together with the C library they were built against; a small wrapper runs the interpreter with
   that C library's loader, so ``sys.executable`` is the wrapper and subprocesses work too.

Python 3.12 is in no Debian suite any more, and the PyPI and npm installers of portable CPython
builds download them from elsewhere at install time, which this machine cannot reach: 3.12 is
skipped here with that reason unless the machine has it (1.).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "pythons"
SUITES = {"3.13": "trixie", "3.14": "sid"}  # the Debian suite whose python3.X we take
APT_TIMEOUT_S = 300  # whole download, a bound for a stuck mirror (not a performance figure)
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"

_found: Dict[str, Tuple[Optional[str], str]] = {}


def interpreter(version: str) -> Tuple[Optional[str], str]:
    """(command, how it was found) or (None, why not). Cached per process."""
    if version not in _found:
        _found[version] = _local(version) or _debian(version)
    return _found[version]


def _version_of(command: str) -> Optional[str]:
    try:
        out = subprocess.run([command, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _local(version: str) -> Optional[Tuple[str, str]]:
    if "%d.%d" % sys.version_info[:2] == version:
        return sys.executable, "this interpreter"
    candidates = [shutil.which("python" + version)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted((str(p / "bin" / ("python" + version)) for p in pyenv.glob(version + ".*")), reverse=True)
    for candidate in filter(None, candidates):
        if _version_of(candidate) == version:
            return candidate, "found on this machine"
    return None


def _debian(version: str) -> Tuple[Optional[str], str]:
    suite = SUITES.get(version)
    if suite is None:
        return None, (f"no Python {version} here: Debian ships none any more (trixie has 3.13, sid 3.14) and the "
                      "PyPI/npm installers of portable CPython builds download them from hosts this machine cannot reach")
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None or not os.path.exists(KEYRING):
        return None, f"no Python {version} here and no apt-get/dpkg-deb/Debian keyring to get Debian's build"
    root = CACHE / version
    wrapper = root / "usr" / "bin" / f"python{version}-run"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes must not unpack into one folder at once
        if not (wrapper.exists() and _version_of(str(wrapper)) == version):
            error = _unpack(version, suite, root)
            if error:
                return None, f"could not get Debian's python{version} ({suite}): {error}"
    if _version_of(str(wrapper)) != version:
        return None, f"Debian's python{version} ({suite}) was unpacked but does not run here"
    return str(wrapper), f"Debian {suite} python{version}, unpacked into {root.relative_to(REPO)}"


def _unpack(version: str, suite: str, root: Path) -> Optional[str]:
    work = CACHE / f".apt-{version}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("lists/partial", "archives/partial", "etc"):
        (work / sub).mkdir(parents=True)
    (work / "etc" / "sources.list").write_text(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n")
    (work / "status").write_text("")
    options = [
        f"-oDir::Etc::SourceList={work}/etc/sources.list", "-oDir::Etc::SourceParts=/nonexistent",
        f"-oDir::State={work}", f"-oDir::State::Lists={work}/lists", f"-oDir::State::status={work}/status",
        f"-oDir::Cache={work}", f"-oDir::Cache::Archives={work}/archives", "-oDebug::NoLocking=1",
        "-oAPT::Install-Recommends=0", "-oAPT::Get::AllowUnauthenticated=0", "-qq",
    ]
    for step in (["update"], ["-y", "--download-only", "install", f"python{version}"]):
        try:
            proc = subprocess.run(["apt-get", *options, *step], capture_output=True, text=True,
                                  timeout=APT_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"apt-get {step[-1]} took longer than {APT_TIMEOUT_S} s"
        if proc.returncode != 0:
            return f"apt-get {step[-1]} failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
    debs = sorted((work / "archives").glob("*.deb"))
    if not debs:
        return "apt-get downloaded nothing"
    root.mkdir(parents=True)
    for deb in debs:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()[-200:]}"
    shutil.rmtree(work, ignore_errors=True)
    loader = next((p for p in (root / "usr/lib64/ld-linux-x86-64.so.2", root / "usr/lib/ld-linux-aarch64.so.1",
                               root / "lib64/ld-linux-x86-64.so.2", root / "lib/ld-linux-aarch64.so.1") if p.exists()), None)
    libdir = next((p for p in (root / "usr/lib/x86_64-linux-gnu", root / "usr/lib/aarch64-linux-gnu") if p.is_dir()), None)
    if loader is None or libdir is None:
        return "the packages hold no C library loader for this machine"
    wrapper = root / "usr" / "bin" / f"python{version}-run"
    # --argv0: Python finds its prefix and sets sys.executable from argv[0], i.e. this wrapper, so
    # `sys.executable -m ...` in a subprocess comes back through here.
    wrapper.write_text(
        "#!/bin/sh\n"
        f"# Debian {suite} python{version} with its own C library (unpacked by tests/interpreters.py).\n"
        f'exec "{loader}" --library-path "{libdir}" --argv0 "$0" "{root}/usr/bin/python{version}" "$@"\n')
    wrapper.chmod(0o755)
    return None


if __name__ == "__main__":
    for v in sys.argv[1:] or ["3.12", "3.13", "3.14"]:
        print(v, *interpreter(v))
