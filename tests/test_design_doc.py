"""docs/design.md is a contract: every class, member and signature it names must exist in the code.

The page is what a newcomer reads first; a name that moved or a parameter that was renamed makes it
lie. The check is deliberately simple: it reads the backticked names of the page and looks them up.

* ``Class.member`` / ``module.function``: the class (or module) exists and has the member
  (a class attribute, a method, a dataclass field, or an attribute the class assigns on ``self``).
* ``Name(a, b=..., c: T)``: a class or function of that name exists and accepts every named parameter.
* ``lambda_otel/x.py`` and ``lambda_otel.x.Y``: the file or the dotted object exists.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import unittest
from pathlib import Path

import lambda_otel

REPO = Path(__file__).resolve().parent.parent
DESIGN = REPO / "docs" / "design.md"

_MEMBER = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)(\(.*?\))?(\s*->.*)?$")
_CALL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\((.*?)\)(\s*->.*)?$")
_PATH = re.compile(r"^(lambda_otel|tests|bench|docs)/[\w/]*(\.py)?/?$")
_DOTTED = re.compile(r"^lambda_otel(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _modules():
    mods = {"lambda_otel": lambda_otel}
    for info in pkgutil.walk_packages(lambda_otel.__path__, "lambda_otel."):
        try:
            mods[info.name] = importlib.import_module(info.name)
        except Exception:  # pragma: no cover - a module that cannot import fails other tests
            continue
    return mods


def _self_attributes(cls) -> set:
    """Attributes a class assigns on ``self`` anywhere in its body (instance state the docs may name)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError, SyntaxError):
        return set()
    names = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                names.add(target.attr)
    return names


def _params(obj) -> set | None:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None  # accepts anything by keyword
    params = set(sig.parameters) - {"self"}
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields:
        params |= set(fields)
    return params


def _arg_names(args: str) -> list:
    names = []
    depth = 0
    current = ""
    for ch in args:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += ch
    names.append(current)
    out = []
    for part in names:
        part = part.strip()
        m = re.match(r"^\*{0,2}([A-Za-z_][A-Za-z0-9_]*)\s*(=|:|$)", part)
        if m and part not in ("...",):
            out.append(m.group(1))
    return out


class DesignDocTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.modules = _modules()
        cls.classes = {}
        cls.functions = {}
        for mod in cls.modules.values():
            for name, obj in vars(mod).items():
                if inspect.isclass(obj) and getattr(obj, "__module__", "").startswith("lambda_otel"):
                    cls.classes.setdefault(name, obj)
                    for mname, member in vars(obj).items():
                        if callable(member) or isinstance(member, (staticmethod, classmethod)):
                            cls.functions.setdefault(mname, []).append(getattr(obj, mname))
                elif inspect.isfunction(obj) and obj.__module__.startswith("lambda_otel"):
                    cls.functions.setdefault(name, []).append(obj)
        cls.tokens = sorted(set(re.findall(r"`([^`\n]+)`", DESIGN.read_text(encoding="utf-8"))))

    def _has_member(self, owner, member: str) -> bool:
        if hasattr(owner, member):
            return True
        if inspect.isclass(owner):
            fields = getattr(owner, "__dataclass_fields__", {}) or {}
            return member in fields or member in _self_attributes(owner)
        return False

    def _owners(self, name: str) -> list:
        """The class of that name, or the module of that name and the class it is the instance of
        (``config.function`` names a field of the ``Config`` that ``config`` stands for)."""
        if name in self.classes:
            return [self.classes[name]]
        owners = [mod for modname, mod in self.modules.items() if modname.rsplit(".", 1)[-1] == name]
        camel = "".join(part.capitalize() for part in name.split("_"))
        if owners and camel in self.classes:
            owners.append(self.classes[camel])
        return owners

    def test_named_members_exist(self):
        missing = []
        for token in self.tokens:
            m = _MEMBER.match(token)
            if not m or token.endswith(".py") or token.startswith("lambda_otel."):
                continue
            owners = self._owners(m.group(1))
            if not owners:
                continue  # not a name of ours (e.g. a protobuf field, an HTTP path)
            owner = next((o for o in owners if self._has_member(o, m.group(2))), None)
            if owner is None:
                missing.append(token)
                continue
            if m.group(3) and m.group(3) != "()":
                member = getattr(owner, m.group(2), None)
                params = _params(member) if callable(member) else None
                unknown = [a for a in _arg_names(m.group(3)[1:-1]) if params is not None and a not in params]
                if unknown:
                    missing.append(f"{token} (no parameter {', '.join(unknown)})")
        self.assertEqual(missing, [], "docs/design.md names members that do not exist")

    def test_named_signatures_match(self):
        wrong = []
        for token in self.tokens:
            m = _CALL.match(token)
            if not m:
                continue
            name, args = m.group(1), m.group(2)
            candidates = [self.classes[name]] if name in self.classes else self.functions.get(name, [])
            if not candidates:
                continue  # not a name of ours (protobuf's ByteSize(), prose)
            wanted = _arg_names(args)
            if any(p is None or all(a in p for a in wanted) for p in map(_params, candidates)):
                continue
            wrong.append(token)
        self.assertEqual(wrong, [], "docs/design.md gives signatures the code does not have")

    def test_named_files_and_dotted_names_exist(self):
        missing = []
        for token in self.tokens:
            if _PATH.match(token):
                if not (REPO / token.rstrip("/")).exists():
                    missing.append(token)
            elif _DOTTED.match(token):
                parts = token.split(".")
                if ".".join(parts[:2]) not in self.modules:
                    continue  # a metric name such as lambda_otel.dropped, not a Python name
                for cut in range(len(parts), 0, -1):
                    modname = ".".join(parts[:cut])
                    if modname in self.modules:
                        obj = self.modules[modname]
                        ok = True
                        for attr in parts[cut:]:
                            if not hasattr(obj, attr):
                                ok = False
                                break
                            obj = getattr(obj, attr)
                        if not ok:
                            missing.append(token)
                        break
                else:
                    missing.append(token)
        self.assertEqual(missing, [], "docs/design.md names files or objects that do not exist")


if __name__ == "__main__":
    unittest.main()
