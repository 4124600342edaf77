"""Startup stays light: importing the TUI and its screens pulls in no torch, faiss or sklearn."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "faiss", "sklearn", "timm", "open_clip", "scipy")


def test_importing_the_tui_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys, json\n"
        "import ofgr_tui.app\n"
        "from ofgr_tui.screens import runs, live, results, compare, embeddings, query\n"
        "from ofgr_tui.screens import launch, help, confirm\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_core_modules_owned_here_do_not_import_the_ui_or_heavy_libraries() -> None:
    code = (
        "import sys, json\n"
        "import ofgr_core.common.gpu, ofgr_core.reports.tsne, ofgr_core.reports.compare\n"
        f"print(json.dumps([m for m in {HEAVY + ('textual', 'rich')!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
