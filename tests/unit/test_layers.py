"""Imports run one way (issue 20): the pure core (schemas, then features, then
state, then controls) imports nothing above it; the Kafka clients and control
sources (``connectors.kafka``, ``.events``, ``.control_sources``) sit below the
stream wiring; the stream wiring below the edge connectors (SDK, HTTP ingest,
reports, files, the simulator); the command line and the demo (``app/``, the
package root) on top. Every import of a ``tripwire`` module, at module level or
inside a function, is read from the source and checked; a new arrow running
back fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"app": "tripwire", "state": "tripwire.state", "schemas": "tripwire.schemas",
           "features": "tripwire.features",
           "controls": "tripwire.controls", "connectors": "tripwire.connectors",
           "streams": "tripwire.streams"}

CORE = ("tripwire.schemas", "tripwire.features", "tripwire.state", "tripwire.controls")
CLIENTS = ("tripwire.connectors.kafka", "tripwire.connectors.events",
           "tripwire.connectors.control_sources")
LEAVES = ("tripwire.config", "tripwire.errors")  # settings and errors: anyone may read them
# a module (by the longest prefix) -> what it may import (prefixes), besides itself and
# the package root (``tripwire``, for its version)
MAY = {
    "tripwire.schemas": ("tripwire.schemas",),
    "tripwire.features": ("tripwire.schemas", "tripwire.features"),
    "tripwire.state": ("tripwire.schemas", "tripwire.state"),
    "tripwire.controls": CORE,
    **{c: (*CORE, *CLIENTS) for c in CLIENTS},
    "tripwire.streams": (*CORE, *CLIENTS, "tripwire.streams", *LEAVES),
    "tripwire.connectors": (*CORE, "tripwire.connectors", "tripwire.streams", *LEAVES),
    "tripwire.config": ("tripwire.features",),
    "tripwire.errors": (),
}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path, known: set[str] | None = None) -> set[str]:
    """The tripwire modules ``path`` imports (``from a import b``: ``a.b`` when
    that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & (known or set())
            found.update(subs or {node.module})
    return {m for m in found if m == "tripwire" or m.startswith("tripwire.")}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_imports_run_one_way() -> None:
    modules = _modules()
    assert "tripwire.streams.loop" in modules and "tripwire.cli" in modules
    wrong = []
    for module, path in sorted(modules.items()):
        rule = max((p for p in MAY if _within(module, (p,))), key=len, default=None)
        if rule is None:  # the command line, the demo, the broker launcher: on top
            continue
        for target in sorted(_imports(path, set(modules))):
            if target == "tripwire" or _within(target, (module,)) or \
                    _within(target, MAY[rule]):
                continue
            wrong.append(f"{module} imports {target}")
    assert not wrong, "imports running back:\n" + "\n".join(wrong)


def test_the_check_sees_an_arrow_running_back(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tripwire.streams.loop import BatchLoop\n")
    assert _imports(bad) == {"tripwire.streams.loop"}
    assert not _within("tripwire.streams.loop", MAY["tripwire.features"])
