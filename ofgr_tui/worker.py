"""The TUI's worker process: queries, t-SNE projections and reports, answered over stdin/stdout as JSON lines.

The TUI never imports torch, faiss, scikit-learn or matplotlib itself (an image query loads the model: ~800 MB
in the process that does it; a t-SNE and a report add ~280 MB). It starts this module
(``python -m ofgr_tui.worker``), sends one request per line and reads the replies; the worker keeps models and
indexes loaded between requests. No Textual here.

Requests (``op`` defaults to ``query``):

- ``{"op": "query", "run_dir", "item_id", "image_path", "text", "k", "split"}``:
  ``ofgr_core.retrieval.query.query_run``; replies ``QueryResult.to_dict()``.
- ``{"op": "supports_text", "run_dir"}``: ``run_supports_text`` (whether the run's model reads text).
- ``{"op": "tsne", "run_dir", "max_points", "use_cache"}``: ``ofgr_core.reports.tsne.compute_tsne`` of every
  stored split; progress lines carry ``{"done", "total"}`` (iterations).
- ``{"op": "report", "run_dirs", "out"}``: ``ofgr_core.reports.report.write_report``; progress lines carry
  ``{"stage"}``; the reply names ``report.md`` and the cache files it wrote or updated in the run folders.
- ``{"op": "compare", "run_dirs", "baseline"}``: ``ofgr_core.reports.compare.compare_runs`` (its paired
  bootstrap holds ~100 MB while it runs); the reply is the ``Comparison`` pickled and base64-encoded (a
  dataclass tree of the same code; ``decode_comparison`` unpickles it and nothing but those dataclasses).

Replies: any number of ``{"progress": {...}}`` lines, then one ``{"ok": value}`` or
``{"error": one line, "type": exception class, "known": bool}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

Send = Callable[[dict[str, Any]], None]


def _query(request: dict[str, Any], send: Send) -> Any:
    from ofgr_core.retrieval.query import query_run

    result = query_run(
        request["run_dir"],
        item_id=request.get("item_id"),
        image_path=request.get("image_path"),
        text=request.get("text"),
        k=int(request.get("k", 10)),
        split=str(request.get("split", "unseen")),
    )
    return result.to_dict()


def _supports_text(request: dict[str, Any], send: Send) -> Any:
    from ofgr_core.retrieval.query import run_supports_text

    return bool(run_supports_text(request["run_dir"]))


def _tsne(request: dict[str, Any], send: Send) -> Any:
    from ofgr_core.reports.tsne import compute_tsne

    def on_event(ev: Any) -> None:
        if ev.type in ("stage_started", "stage_progress"):
            send({"progress": {"done": int(getattr(ev, "done", 0)), "total": ev.total}})

    r = compute_tsne(request["run_dir"], "all", max_points=int(request.get("max_points", 2000)),
                     use_cache=bool(request.get("use_cache", True)), on_event=on_event)  # fmt: skip
    return {"xy": r.xy.tolist(), "ids": r.ids, "fine": r.fine, "coarse": r.coarse, "split": r.split,
            "n_total": r.n_total, "note": r.note, "cached": r.cached, "cache_path": str(r.cache_path)}  # fmt: skip


def _files(run_dirs: list[Path]) -> dict[str, int]:
    """Files of the run folders' cache and eval folders (what a report may add), with their mtimes."""
    from ofgr_core.runs.folder import RunFolder

    out: dict[str, int] = {}
    for d in run_dirs:
        for folder in (RunFolder(d).cache_dir, RunFolder(d).eval_dir):
            try:
                out |= {str(p): p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}
            except OSError:
                continue
    return out


def _report(request: dict[str, Any], send: Send) -> Any:
    from ofgr_core.reports.report import write_report

    dirs = [Path(d) for d in request["run_dirs"]]
    before = _files(dirs)
    path = write_report(dirs, request["out"], progress=lambda stage: send({"progress": {"stage": stage}}))
    after = _files(dirs)
    written = sorted(p for p, t in after.items() if before.get(p) != t)
    return {"path": str(path), "caches": written}


# what a pickled Comparison holds: these dataclasses of ofgr_core.reports.compare, then plain values
COMPARISON_CLASSES = frozenset({"Comparison", "MetricRow", "RunCost", "Ratio", "Significance"})


def _compare(request: dict[str, Any], send: Send) -> Any:
    import base64
    import pickle

    from ofgr_core.reports.compare import compare_runs

    c = compare_runs(request["run_dirs"], baseline=int(request.get("baseline", 0)))
    return base64.b64encode(pickle.dumps(c)).decode("ascii")


def decode_comparison(reply: str) -> Any:
    """The ``Comparison`` of a ``compare`` reply. The unpickler resolves no global but the comparison's own
    dataclasses, so even a reply that did not come from this worker cannot run code (docs.python.org, pickle,
    "Restricting Globals")."""
    import base64
    import io
    import pickle

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "ofgr_core.reports.compare" and name in COMPARISON_CLASSES:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"a compare reply may hold only Comparison data, not {module}.{name}")

    return _Restricted(io.BytesIO(base64.b64decode(reply))).load()


OPS: dict[str, Callable[[dict[str, Any], Send], Any]] = {
    "compare": _compare,
    "query": _query,
    "supports_text": _supports_text,
    "tsne": _tsne,
    "report": _report,
}


def answer(request: dict[str, Any], send: Send = lambda _line: None) -> dict[str, Any]:
    """The final reply to one request (progress lines go to ``send``)."""
    from ofgr_core.common.errors import OfgrError

    op = OPS.get(str(request.get("op", "query")))
    if op is None:
        return {"error": f"unknown op {request.get('op')!r}", "type": "ValueError", "known": False}
    try:
        return {"ok": op(request, send)}
    except (OfgrError, OSError, ValueError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"error": text, "type": type(e).__name__, "known": True}
    except Exception as e:  # a bug: still one line for the screen, never a dead worker
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"error": f"{type(e).__name__}: {text}".rstrip(": "), "type": type(e).__name__, "known": False}


def serve(lines: IO[str], out: IO[str]) -> None:
    def send(reply: dict[str, Any]) -> None:
        out.write(json.dumps(reply, default=str) + "\n")
        out.flush()

    for line in lines:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as e:
            send({"error": f"bad request: {e}", "type": "ValueError", "known": False})
            continue
        send(answer(request, send))


def main() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # a stray print from a library must not corrupt the reply stream
    serve(sys.stdin, out)


if __name__ == "__main__":
    main()
