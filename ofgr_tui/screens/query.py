"""Query a run's gallery: an image path (with completion), an item picked from the run's dataset, or text.

Shows ranked results with scores, hit/miss marks, labels and paths, and (``ctrl+b``; shown by default from
100 columns) thumbnails of the query and the highlighted result. Queries go through
``ofgr_core.retrieval.query.query_run`` (the same function as ``ofgr query``) in the app's query worker process,
so torch and faiss never load into the TUI; its one-line errors (e.g. text on a non-CLIP run) show in the panel
and clear the previous results. The item picker folds away after a search (``ctrl+g`` opens it again).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Header, Input, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option
from textual.worker import Worker

from ofgr_core.runs.folder import RunFolder
from ofgr_tui.screens.base import OfgrScreen
from ofgr_tui.widgets.keybar import KeyBar
from ofgr_tui.widgets.path_input import PathSuggester

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_ITEMS = 300  # options shown at once in the item picker; the filter narrows the rest
THUMBS_FROM = 100  # columns from which thumbnails are shown without asking (ctrl+b toggles them)
SELF_SCORE = 0.99  # a hit this close may be the query image itself: its file is compared
PAD = 2  # a DataTable cell's padding


def mark(hit: bool | None) -> Text:
    if hit is None:
        return Text("·", style="dim")
    return Text("✓", style="bold green") if hit else Text("✗", style="bold red")


def marks(fine: bool | None, coarse: bool | None, *, itself: bool = False) -> Text:
    """The fine and coarse hit marks in one cell (``= =`` for the query image itself)."""
    if itself:
        return Text("= =", style="bold cyan")
    return mark(fine) + Text(" ") + mark(coarse)


def same_image(a: str | None, b: str | None) -> bool:
    """Whether two paths hold the same image: the same file, or two files with the same bytes."""
    if not a or not b:
        return False
    try:
        if os.path.samefile(a, b):
            return True
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


def find_itself(query_path: str | None, hits: list[Any]) -> int | None:
    """The index of the hit that is the query image itself (a gallery copy of it), if any."""
    for i, h in enumerate(hits):
        if float(h.score) >= SELF_SCORE and same_image(query_path, h.path):
            return i
    return None


def looks_like_text(value: str) -> bool:
    """Words rather than a path: a space, no path separator, no file suffix, and no such file or folder."""
    return (" " in value and os.sep not in value and "/" not in value and not Path(value).suffix
            and not Path(value).expanduser().exists())


def display_paths(paths: list[str], cwd: str | None = None) -> list[str]:
    """Paths as short as they can be while telling them apart.

    Under the working directory: relative to it. Elsewhere: the folder all of them share is left out
    (``…/`` marks where), so the part that differs (class folder, file name) is what shows.
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    absolute = [os.path.abspath(p) if p else "" for p in paths]
    if absolute and all(p and (p == cwd or p.startswith(cwd + os.sep)) for p in absolute):
        return [os.path.relpath(p, cwd) for p in absolute]
    real = [p for p in absolute if p]
    if len(real) < 2:
        return [("…/" + os.path.join(*Path(p).parts[-3:])) if len(Path(p).parts) > 3 else p for p in absolute]
    try:
        common = os.path.commonpath(real)
    except ValueError:
        return list(paths)
    if common in ("", os.sep):
        return list(paths)
    return ["…/" + os.path.relpath(p, common) if p else "" for p in absolute]


def left_cut(text: str, width: int) -> str:
    """The end of ``text`` in ``width`` cells (a path's file name is what tells results apart)."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def read_items(run_dir: Path, split: str) -> list[dict[str, str]]:
    try:
        with open(RunFolder(run_dir).embeddings_csv(split), newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


class QueryScreen(OfgrScreen[None]):
    HELP_TITLE = "Query"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+p", "mode('path')", "Path"),
        Binding("ctrl+g", "mode('item')", "Item"),
        Binding("ctrl+t", "mode('text')", "Text"),
        Binding("ctrl+o", "toggle_split", "Split"),
        Binding("ctrl+b", "toggle_thumbs", "Thumbnails"),
        Binding("ctrl+l", "focus_results", "Results", show=False),
    ]

    @dataclass
    class Answered(Message):
        result: Any  # ofgr_core.retrieval.query.QueryResult, as attributes
        query_path: str | None
        itself: int | None = None  # the result that is the query image itself (same file or bytes)

    @dataclass
    class ItemsLoaded(Message):
        items: list[dict[str, str]]

    def __init__(self, run_dir: Path, *, k: int = 10) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.k = k
        self.split = "unseen"
        self.items: list[dict[str, str]] = []
        self.result: Any = None
        self.query_path: str | None = None
        self.itself: int | None = None
        self.supports_text: bool | None = None  # ofgr_core.retrieval.query.run_supports_text, asked when the tab opens
        self._text_asked = False
        self._text_query = False
        self.thumbs: bool | None = None  # None: by the terminal's width (THUMBS_FROM)

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="query-tabs"):
            with TabPane("Image path", id="tab-path"):
                yield Input(
                    placeholder="path/to/image.jpg (→ completes, enter searches)",
                    suggester=PathSuggester(IMAGE_SUFFIXES),
                    id="query-path",
                    compact=True,
                )
            with TabPane("Dataset item", id="tab-item"):
                yield Input(
                    placeholder="filter by id, class or path; ↓↑ pick, enter searches", id="item-filter", compact=True
                )
                yield OptionList(id="item-list")
            with TabPane("Text", id="tab-text"):
                yield Input(placeholder="a red convertible (CLIP runs only)", id="query-text", compact=True)
        yield Static(id="query-status")
        with Horizontal(id="query-main"):
            yield DataTable(id="query-results", cursor_type="row", zebra_stripes=True)
            with Vertical(id="query-thumbs"):
                yield Static("query", classes="thumb-title")
                yield Vertical(id="thumb-query", classes="thumb")
                yield Static("result", classes="thumb-title", id="thumb-result-title")
                yield Vertical(id="thumb-result", classes="thumb")
        yield KeyBar()

    def on_mount(self) -> None:
        self.title = self.run_dir.name
        self._subtitle()
        self._show_thumbs()
        self._columns()
        self._status(
            Text("type an image path, pick a dataset item, or type text; enter searches", style="dim")
        )
        self._load_items(self.split)
        self.query_one("#query-path", Input).focus()

    def on_resize(self, event: events.Resize) -> None:
        self._show_thumbs()
        self._columns()
        if self.result is not None:
            self._fill(self.result)

    # ------------------------------------------------------------------------------------ text
    @dataclass
    class TextSupport(Message):
        supported: bool | None  # None: could not tell (the worker said why in ``why``)
        why: str = ""

    @work(thread=True, exclusive=True, group="text-support", exit_on_error=False, name="text support")
    def _check_text(self) -> None:
        """Ask the core (in the query worker: it looks at the model family) whether text queries work here."""
        try:
            ok: bool | None = self.ofgr.query_client.supports_text(str(self.run_dir.absolute()))
            why = ""
        except Exception as e:  # noqa: BLE001  (an old run, a damaged config: the text box stays usable)
            ok, why = None, str(e)
        self.post_message(self.TextSupport(ok, why))

    def on_query_screen_text_support(self, message: TextSupport) -> None:
        self.supports_text = message.supported
        box = self.query_one("#query-text", Input)
        if message.supported:
            box.placeholder = "a red convertible: describe what to find (this run's model reads text)"
        elif message.supported is False:
            box.placeholder = "this run's model has no text encoder: text queries need a CLIP run"

    def _subtitle(self) -> None:
        self.sub_title = f"query · {self.split} gallery"

    def _status(self, text: Text | str) -> None:
        self.query_one("#query-status", Static).update(text)

    # ----------------------------------------------------------------------------------- items
    @work(thread=True, exclusive=True, group="items", exit_on_error=False, name="items")
    def _load_items(self, split: str) -> None:
        self.post_message(self.ItemsLoaded(read_items(self.run_dir, split)))

    def on_query_screen_items_loaded(self, message: ItemsLoaded) -> None:
        self.items = message.items
        self._filter_items(self.query_one("#item-filter", Input).value)

    def _filter_items(self, text: str) -> None:
        needle = text.strip().lower()
        shown = []
        for row in self.items:
            hay = f"{row.get('id', '')} {row.get('fine', '')} {row.get('coarse', '')} {row.get('path', '')}"
            if not needle or needle in hay.lower():
                shown.append(row)
                if len(shown) >= MAX_ITEMS:
                    break
        ol = self.query_one("#item-list", OptionList)
        ol.clear_options()
        if not self.items:
            ol.add_option(Option(f"no stored {self.split} embeddings in this run", disabled=True))
            return
        ol.add_options(
            Option(f"{r.get('id', '?')}  {r.get('fine', '?')} / {r.get('coarse', '?')}", id=r.get("id"))
            for r in shown
        )

    def _picker(self, show: bool) -> None:
        """The item list is open while an item is being picked and folds away after a search."""
        self.query_one("#item-list", OptionList).display = show

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "item-filter":
            self._picker(True)
            self._filter_items(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if event.input.id == "query-path":
            if value and looks_like_text(value):
                # words typed into the path box (it is the tab that opens first): say where they belong
                self.worker_failed(None, f"{value!r} is not an image file; for a text query use the Text tab "
                                   "(ctrl+t)")  # fmt: skip
            elif value:
                self.search(image_path=value)
        elif event.input.id == "query-text":
            if value and self.supports_text is False:
                # say it here at once; the engine would give the same answer after loading the model
                self.worker_failed(None, "this run's model has no text encoder: text queries need a CLIP run "
                                   "(model.kind: clip)")  # fmt: skip
            elif value:
                self.search(text=value)
        elif event.input.id == "item-filter":
            ol = self.query_one("#item-list", OptionList)
            if ol.option_count and ol.highlighted is None:
                ol.highlighted = 0
            if ol.highlighted is not None:
                option = ol.get_option_at_index(ol.highlighted)
                if option.id:
                    self.search(item_id=option.id)

    def on_key(self, event: events.Key) -> None:
        """↓/↑ in the item filter move the highlight in the list below; typing stays in the filter."""
        box = self.query_one("#item-filter", Input)
        if not box.has_focus or event.key not in ("down", "up", "pagedown", "pageup"):
            return
        event.stop()
        event.prevent_default()
        ol = self.query_one("#item-list", OptionList)
        self._picker(True)
        if not ol.option_count:
            return
        step = {"down": 1, "up": -1, "pagedown": 5, "pageup": -5}[event.key]
        current = ol.highlighted if ol.highlighted is not None else -1
        ol.highlighted = max(0, min(ol.option_count - 1, current + step))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.search(item_id=event.option.id)

    # ---------------------------------------------------------------------------------- search
    def search(
        self, *, item_id: str | None = None, image_path: str | None = None, text: str | None = None
    ) -> None:
        what = item_id or image_path or text
        self._status(Text(f"searching {self.split} gallery for {what!r}…", style="dim"))
        qpath = image_path
        if item_id is not None:
            qpath = next((r.get("path") for r in self.items if r.get("id") == item_id), None)
            self._picker(False)  # the results get the rows; ctrl+g or typing opens the list again
            self.query_one("#query-results", DataTable).focus()
        self._search(item_id, image_path, text, self.split, qpath)

    @work(thread=True, exclusive=True, group="query", exit_on_error=False, name="query")
    def _search(
        self, item_id: str | None, image_path: str | None, text: str | None, split: str, qpath: str | None
    ) -> None:
        if image_path is not None:  # the worker may not share our idea of "." forever: send it resolved
            image_path = str(Path(image_path).expanduser().absolute())
        result = self.ofgr.query_client.query(
            run_dir=str(self.run_dir.absolute()), item_id=item_id, image_path=image_path, text=text,
            k=self.k, split=split,
        )  # fmt: skip
        # a path query whose image the engine did not recognise (another path to it, a copy) finds itself
        itself = find_itself(image_path, result.results) if image_path and not result.query_fine else None
        self.post_message(self.Answered(result, qpath, itself))

    def worker_failed(self, worker: Worker[None] | None, text: str) -> None:
        """A failed query leaves no results of an earlier one on screen."""
        self._status(Text(text, style="bold red"))
        self.result = None
        self.query_one("#query-results", DataTable).clear()
        for box in ("#thumb-query", "#thumb-result"):
            self.query_one(box, Vertical).remove_children()

    def on_query_screen_answered(self, message: Answered) -> None:
        self.result = r = message.result
        self.query_path = message.query_path
        self.itself = message.itself
        self._text_query = str(getattr(r, "query", "")).startswith("text ")
        if self.itself is not None:  # its labels are the query's: mark the others against them
            me = r.results[self.itself]
            for h in r.results:
                h.hit_fine, h.hit_coarse = h.fine == me.fine, h.coarse == me.coarse
        hits = [h for i, h in enumerate(r.results) if h.hit_fine and i != self.itself]
        head = Text(f"{r.query}", style="bold")
        if getattr(r, "query_fine", None):
            head.append(f"  ({r.query_fine} / {r.query_coarse})")
        space = getattr(r, "space", None)
        if self._text_query and space:
            head.append(f"  searched the {'raw CLIP' if space == 'raw' else space} space", style="cyan")
        head.append(f"  {len(r.results)} results")
        if self.itself is not None:
            me = r.results[self.itself]
            head.append(f"\nresult {me.rank} is this image itself ({me.fine} / {me.coarse}); the marks use "
                        "its labels", style="cyan")  # fmt: skip
        if r.results and r.results[0].hit_fine is not None:
            head.append(f", {len(hits)} fine hits", style="green" if hits else "red")
        self._status(head)
        self._fill(r)
        self._thumb("#thumb-query", self.query_path)
        if r.results:
            t = self.query_one("#query-results", DataTable)
            t.move_cursor(row=0)
            self._thumb("#thumb-result", r.results[0].path)

    # ---------------------------------------------------------------------------------- table
    def _table_width(self) -> int:
        width = self.size.width or 80
        if self.query_one("#query-thumbs").display:
            width -= max(24, min(80, int(width * 0.35)))
        return width - 2  # a scrollbar

    def _columns(self) -> None:
        """Columns fitted to the width: rank, score, the marks, the classes, and the path with what is left
        (its end: the file name); the coarse class goes first when room is short."""
        t = self.query_one("#query-results", DataTable)
        hits = self.result.results if self.result is not None else []
        fine_w = min(22, max([len(h.fine) for h in hits] + [10]))
        coarse_w = min(12, max([len(h.coarse) for h in hits] + [6]))
        width = self._table_width()
        fixed = {"#": 2, "score": 5, "f c": 3, "fine class": fine_w}
        path_w = width - sum(w + PAD for w in fixed.values()) - PAD
        cols = dict(fixed)
        if path_w - coarse_w - PAD >= 24:
            cols["coarse"] = coarse_w
            path_w -= coarse_w + PAD
        cols["path"] = max(12, path_w)
        if [str(c.label) for c in t.columns.values()] == list(cols) and [
            c.width for c in t.columns.values()
        ] == list(cols.values()):
            return
        t.clear(columns=True)
        for name, w in cols.items():
            t.add_column(name, key=name, width=w)

    def _fill(self, r: Any) -> None:
        self._columns()
        t = self.query_one("#query-results", DataTable)
        t.clear()
        widths = {str(c.label): c.width for c in t.columns.values()}
        shown = display_paths([h.path for h in r.results])
        for i, (h, path) in enumerate(zip(r.results, shown, strict=True)):
            cells: dict[str, str | Text] = {
                "#": str(h.rank),
                "score": f"{h.score:.3f}",
                "f c": marks(h.hit_fine, h.hit_coarse, itself=i == self.itself),
                "fine class": h.fine[: widths.get("fine class", 20)],
                "coarse": h.coarse[: widths.get("coarse", 12)],
                "path": left_cut(path, widths.get("path", 30)),
            }
            t.add_row(*(cells[name] for name in widths), key=str(h.rank))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.result is not None and 0 <= event.cursor_row < len(self.result.results):
            self._thumb("#thumb-result", self.result.results[event.cursor_row].path)

    # ------------------------------------------------------------------------------- thumbnails
    def _show_thumbs(self) -> None:
        pane = self.query_one("#query-thumbs")
        wanted = self.thumbs if self.thumbs is not None else (self.size.width or 80) >= THUMBS_FROM
        pane.display = wanted and self.ofgr.images != "off"

    def _thumb(self, container_id: str, path: str | None) -> None:
        mode = self.ofgr.images
        if mode == "off" or not self.query_one("#query-thumbs").display:
            return
        box = self.query_one(container_id, Vertical)
        box.remove_children()
        widget: Widget
        if path and Path(path).is_file():
            try:
                if mode == "halfcell":
                    from textual_image.widget import HalfcellImage

                    widget = HalfcellImage(path)
                else:
                    from textual_image.widget import Image

                    widget = Image(path)
            except Exception as e:  # unreadable image or unsupported terminal: say so, don't crash
                widget = Static(Text(f"no preview: {e}", style="dim"))
        else:
            empty = "a text query" if container_id == "#thumb-query" and self._text_query else "no image"
            widget = Static(Text(empty if not path else f"not found: {path}", style="dim"))
        box.mount(widget)

    def action_toggle_thumbs(self) -> None:
        if self.ofgr.images == "off":
            self.notify("thumbnails are off (ofgr-tui --images off)", severity="warning")
            return
        self.thumbs = not self.query_one("#query-thumbs").display
        self._show_thumbs()
        self._columns()
        if self.result is not None:
            self._fill(self.result)
            self._thumb("#thumb-query", self.query_path)
            t = self.query_one("#query-results", DataTable)
            row = t.cursor_row if 0 <= t.cursor_row < len(self.result.results) else 0
            if self.result.results:
                self._thumb("#thumb-result", self.result.results[row].path)

    # ---------------------------------------------------------------------------------- actions
    def action_toggle_split(self) -> None:
        self.split = "seen" if self.split == "unseen" else "unseen"
        self._subtitle()
        self._load_items(self.split)
        self.notify(f"gallery: {self.split}", timeout=2)

    def action_mode(self, mode: str) -> None:
        self.query_one("#query-tabs", TabbedContent).active = f"tab-{mode}"
        target = {"path": "#query-path", "item": "#item-filter", "text": "#query-text"}[mode]
        if mode == "item":
            self._picker(True)
        self.query_one(target, Input).focus()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # keep the keyboard in the active tab's input
        pane = event.pane.id or ""
        if pane == "tab-text" and self.supports_text is None and not self._text_asked:
            # asked only when the text tab opens: the answer imports the model code in the worker, which
            # must not delay the first image or item query
            self._text_asked = True
            self._check_text()
        target = {"tab-path": "#query-path", "tab-item": "#item-filter", "tab-text": "#query-text"}.get(pane)
        if target:
            self.query_one(target, Input).focus()

    def action_focus_results(self) -> None:
        self.query_one("#query-results", DataTable).focus()
