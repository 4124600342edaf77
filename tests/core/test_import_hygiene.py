"""The architecture's import rules (STYLE.md habit 1): core never imports the UI; only the CLI imports
typer/rich; the CLI and the TUI start without importing torch."""

import importlib
import pkgutil
import subprocess
import sys

import ofgr_core


def core_modules() -> list[str]:
    names = []
    for m in pkgutil.walk_packages(ofgr_core.__path__, "ofgr_core."):
        if not m.name.endswith("__main__"):
            names.append(m.name)
    return sorted(names)


def modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_library_modules_never_import_ui_or_cli_libraries():
    library = [m for m in core_modules() if not m.startswith("ofgr_core.cli")]
    assert "ofgr_core.workflows.pipeline" in library
    loaded = modules_after_import(", ".join(library))
    for forbidden in ("textual", "typer", "rich"):
        assert forbidden not in loaded, f"a library module of ofgr_core imports {forbidden}"
    assert not any(m == "ofgr_tui" or m.startswith("ofgr_tui.") for m in loaded)


def test_cli_never_imports_the_tui():
    loaded = modules_after_import("ofgr_core.cli")
    assert "textual" not in loaded
    assert not any(m.startswith("ofgr_tui") for m in loaded)


def test_cli_import_does_not_import_torch():
    loaded = modules_after_import("ofgr_core.cli")
    assert "torch" not in loaded
    assert "faiss" not in loaded


def test_ofgr_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from ofgr_core.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_all_core_modules_import():
    for name in core_modules():
        importlib.import_module(name)
