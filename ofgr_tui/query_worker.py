"""A query worker process: answers ``ofgr_core.retrieval.query.query_run`` requests over stdin/stdout as JSON lines.

The TUI never imports torch or faiss itself (an image query loads the model: ~800 MB in the process that
does it). It starts this module once (``python -m ofgr_tui.query_worker``), sends one request per line and
reads one reply per line; the worker keeps the model and indexes loaded between queries. No Textual here.

Request: ``{"run_dir", "item_id", "image_path", "text", "k", "split"}``, or ``{"op": "supports_text", "run_dir"}``
(``ofgr_core.retrieval.query.run_supports_text``: whether the run's model takes text queries).
Reply: ``{"ok": QueryResult.to_dict()}`` (``{"ok": bool}`` for ``supports_text``) or
``{"error": one line, "type": exception class, "known": bool}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def answer(request: dict[str, Any]) -> dict[str, Any]:
    from ofgr_core.common.errors import OfgrError
    from ofgr_core.retrieval.query import query_run, run_supports_text

    try:
        if request.get("op") == "supports_text":
            return {"ok": bool(run_supports_text(request["run_dir"]))}
        result = query_run(
            request["run_dir"],
            item_id=request.get("item_id"),
            image_path=request.get("image_path"),
            text=request.get("text"),
            k=int(request.get("k", 10)),
            split=str(request.get("split", "unseen")),
        )
    except (OfgrError, OSError, ValueError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"error": text, "type": type(e).__name__, "known": True}
    except Exception as e:  # a bug: still one line for the panel, never a dead worker
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"error": f"{type(e).__name__}: {text}".rstrip(": "), "type": type(e).__name__, "known": False}
    return {"ok": result.to_dict()}


def main() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # a stray print from a library must not corrupt the reply stream
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as e:
            reply: dict[str, Any] = {"error": f"bad request: {e}", "type": "ValueError", "known": False}
        else:
            reply = answer(request)
        out.write(json.dumps(reply, default=str) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
