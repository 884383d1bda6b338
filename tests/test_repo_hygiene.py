"""The repository's own text speaks of the project alone.

Comments, docstrings and docs state a rule in the project's words ("Lambda delivers
``platform.runtimeDone`` about 25 ms after the function returns"), never as a pointer to a document
that is not in the repository (a section number of some reference file, a predecessor project) and
never with a path of one developer's machine: a reader of a checkout has neither. This test reads
every text file the project ships or runs (code, tests, benchmarks, docs, build and CI scripts) and
names each line that breaks the rule.
"""

from __future__ import annotations

import re
import unittest
from pathlib import Path
from typing import Iterator, List, Tuple

REPO = Path(__file__).resolve().parent.parent

# What is read: the project's own folders and top-level files. Generated or fetched content
# (.venv, .cache, build output, bytecode) is not the project's text.
ROOTS = ("lambda_otel", "tests", "bench", "docs", ".ci")
TOP_FILES = ("README.rst", "CHANGELOG.rst", "build_layer.sh", "setup.cfg", "setup.py")
SKIP_DIRS = {"__pycache__", ".venv", ".cache", ".git", "build", "dist", "layer-out"}
SKIP_SUFFIXES = {".pyc", ".zip", ".whl", ".so", ".gz", ".png", ".jpg"}


def _pattern(*parts: str) -> str:
    # Built from parts so that this file does not match its own patterns.
    return "".join(parts)


# (pattern, why it is refused). Case-insensitive.
RULES: Tuple[Tuple[str, str], ...] = (
    (_pattern(r"\b", "reference", r"\s*§"), "a section of a document outside the repository"),
    (_pattern(r"\b", "anchor", r"[- ](extension|§)"), "a document outside the repository"),
    # "(seed)" as a citation, not a call such as random.Random(seed)
    (_pattern(r"(?<!\w)\(", "seed", r"\)"), "a document outside the repository"),
    (_pattern(r"\b", "ADAPT", r"-\d+"), "an item of a document outside the repository"),
    (_pattern("Rust", r"\s+", "original"), "a predecessor outside the repository"),
    (_pattern("design", r"\s+", "card"), "a document outside the repository"),
    (_pattern(r"\b(python-costs|lambda-apis|platform-2026|real-clients|field-survey|", "anchor-extension", r")(\.md)?\b"),
     "a document outside the repository"),
    (_pattern("/", "work", "/"), "a path of a development machine"),
    (_pattern("/", "root", "/"), "a path of a development machine"),
    (_pattern(r"/home/[a-z_][a-z0-9_-]*/"), "a path of a development machine"),
)
COMPILED = tuple((re.compile(p, re.IGNORECASE), why) for p, why in RULES)


def project_files() -> Iterator[Path]:
    for name in TOP_FILES:
        path = REPO / name
        if path.is_file():
            yield path
    for root in ROOTS:
        base = REPO / root
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if not path.is_file() or path.suffix in SKIP_SUFFIXES:
                continue
            if SKIP_DIRS.intersection(path.relative_to(REPO).parts):
                continue
            yield path


def offences(text: str) -> List[Tuple[int, str, str]]:
    """(line number, the line, why) for every line that breaks a rule."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for regex, why in COMPILED:
            if regex.search(line):
                found.append((number, line.strip(), why))
                break
    return found


class RulesTest(unittest.TestCase):
    """The patterns catch what they are for, and leave ordinary words alone."""

    def test_external_references_and_machine_paths_are_caught(self):
        for line in (
            "Status codes (" + "reference §1.3, checks 1-4).",
            "The examples of " + "lambda-apis.md §2.2.",
            "as in the " + "Rust original's FlushManager",
            "see " + "anchor §7",
            "measured (" + "python-costs.md, conclusion 6)",
            "the design " + "card's packages",
            "ported from the Rust module (" + "seed)",
            "the venv is " + "/work/main/.venv",
            "interpreter in " + "/root/.pyenv/versions/3.11.7",
            "ADAPT" + "-001: keep the lock order",
        ):
            with self.subTest(line=line):
                self.assertTrue(offences(line), line)

    def test_ordinary_words_pass(self):
        for line in (
            "rng = random.Random(seed)  # a fixed seed per test",
            "self._random.seed(os.urandom(32))",
            "reseed() at a SnapStart restore",
            "hosts under the reserved .invalid TLD (RFC 6761 §6.4)",
            "see docs/design.md and docs/benchmarks.md",
            "Lambda unzips layers into /opt and starts /opt/extensions/*",
            "the function's code in /var/task",
        ):
            with self.subTest(line=line):
                self.assertEqual(offences(line), [], line)


class RepositoryTextTest(unittest.TestCase):
    def test_the_project_text_refers_to_nothing_outside_it(self):
        this_file = Path(__file__).resolve()
        found = []
        files = 0
        for path in project_files():
            if path.resolve() == this_file:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # not text
            files += 1
            for number, line, why in offences(text):
                found.append(f"{path.relative_to(REPO)}:{number}: {why}: {line[:120]}")
        self.assertGreater(files, 50, "the walk found the project's files")
        self.assertEqual(found, [], "state the rule itself instead:\n" + "\n".join(found))


if __name__ == "__main__":
    unittest.main()
