"""The import-layer check of scripts/check_layers.py (issue 10, item 4)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_layers.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "m2msec" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_source_tree_passes() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_a_cycle_hidden_in_a_function_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "",
        "tls/__init__.py": "",
        "tls/a.py": "from m2msec.tls import b\n",
        "tls/b.py": "def f() -> None:\n    from m2msec.tls.a import x\n",
    })
    assert _load().check(root) == ["import cycle: m2msec.tls.a <-> m2msec.tls.b"]


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "",
        "ids.py": (
            "import typing\nif typing.TYPE_CHECKING:\n    from m2msec.servers import gateway\n"
        ),
        "servers/__init__.py": "",
        "servers/gateway.py": "from m2msec.ids import CseId\n",
    })
    problems = _load().check(root)
    assert problems == [
        "m2msec/ids.py:3: m2msec.ids imports m2msec.servers.gateway (not a lower layer)",
        "import cycle: m2msec.ids <-> m2msec.servers.gateway",
    ]


def test_a_module_outside_every_layer_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"__init__.py": "", "newthing.py": ""})
    assert _load().check(root) == ["m2msec.newthing: unit 'newthing' has no layer in LAYERS"]
