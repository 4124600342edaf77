"""Progress through a run's stages: a row of stage marks and a bar for the current stage."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from ofgr_tui.livestate import LiveState
from ofgr_tui.widgets.gpu_panel import bar

MARKS = {
    "done": ("✓", "green"),
    "running": ("▶", "bold yellow"),
    "pending": ("·", "dim"),
    "stopped": ("‖", "magenta"),
}


class StageProgress(Widget):
    """Set ``state`` (and call ``refresh``) whenever new events were folded in."""

    DEFAULT_CSS = """
    StageProgress { height: auto; }
    """

    state: reactive[LiveState | None] = reactive(None, always_update=True, layout=True)
    failed: reactive[bool] = reactive(False)
    halted: reactive[bool] = reactive(False)  # no process writes the run: nothing is "running"

    def render(self) -> RenderableType:
        st = self.state
        if st is None:
            return Text("no events yet", style="dim")
        row = Text()
        for name, stage in st.stages.items():
            mark, style = MARKS.get(stage.state, ("?", ""))
            if self.failed and stage.state in ("running", "stopped"):
                mark, style = "✗", "bold red"
            elif self.halted and stage.state == "running":
                mark, style = MARKS["stopped"]
            row.append(f"{mark}{name} ", style=style)
        lines: list[RenderableType] = [row]
        cur = st.stages.get(st.current_stage or "")
        if cur is not None and cur.state == "running" and not st.finished and not self.halted:
            frac = st.train_fraction() if cur.name == "train" else cur.fraction
            width = max(10, (self.size.width or 30) - 18)
            label = f"{cur.name:<8}"
            tail = f" {frac * 100:5.1f}%" if frac is not None else "   …"
            if cur.name != "train" and cur.total:
                tail = f" {cur.done}/{cur.total}"
            lines.append(Text(label) + bar(frac, width) + Text(tail))
        return Group(*lines)
