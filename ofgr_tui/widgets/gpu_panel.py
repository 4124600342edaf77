"""One block per GPU: utilisation, memory used/total, temperature, power; or why there is none."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from ofgr_core.common.gpu import GpuSnapshot, GpuStats


def bar(fraction: float | None, width: int) -> Text:
    """A text bar that reads in monochrome too: filled blocks then light shade."""
    width = max(1, width)
    if fraction is None:
        return Text("·" * width, style="dim")
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    style = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim")


def no_gpu_lines(reason: str | None) -> list[Text]:
    """What the user needs to know first (no GPU: runs use the CPU), then the technical reason, dimmed."""
    reason = (reason or "").strip()
    if reason.startswith("no GPU monitoring"):
        head = "GPU use not shown (nvidia-ml-py missing)"
        detail = "pip install nvidia-ml-py to see GPU use here"
    elif reason.startswith("no GPU") or not reason:
        head = "No GPU found: runs here train on the CPU"
        detail = reason.split(":", 1)[1].strip() if ":" in reason else ""
    else:
        head = "GPU not readable"
        detail = reason.split(":", 1)[1].strip() if ":" in reason else reason
    lines = [Text(head, style="bold")]
    if detail:
        lines.append(Text(f"({detail})", style="dim"))
    return lines


def _gib(mb: float | None) -> str:
    return "?" if mb is None else f"{mb / 1024:.1f}"


class GpuPanel(Widget):
    """Set ``snapshot``; the panel re-renders. ``None`` means no sample yet."""

    DEFAULT_CSS = """
    GpuPanel { height: auto; }
    """

    snapshot: reactive[GpuSnapshot | None] = reactive(None, layout=True)

    def render(self) -> RenderableType:
        snap = self.snapshot
        if snap is None:
            return Text("GPU: reading…", style="dim")
        if not snap.gpus:
            return Group(*no_gpu_lines(snap.reason))
        width = max(20, self.size.width or 30)
        return Group(*(self._gpu(g, width) for g in snap.gpus))

    def _gpu(self, g: GpuStats, width: int) -> RenderableType:
        barw = max(6, width - 18)
        title = Text.assemble((f"GPU{g.index} ", "bold"), (g.name[: max(4, width - 6)], ""))
        util = Text("util ") + bar(None if g.util_pct is None else g.util_pct / 100, barw)
        util += Text(f" {g.util_pct:3.0f}%" if g.util_pct is not None else "   ?%")
        mem = Text("mem  ") + bar(g.mem_fraction, barw)
        pct = g.mem_fraction
        mem += Text(f" {pct * 100:3.0f}%" if pct is not None else "   ?%")
        temp = "?" if g.temperature_c is None else f"{g.temperature_c:.0f}°C"
        power = "?" if g.power_w is None else f"{g.power_w:.0f}"
        if g.power_limit_w:
            power += f"/{g.power_limit_w:.0f}"
        info = Text(f"     {_gib(g.mem_used_mb)}/{_gib(g.mem_total_mb)} GiB  {temp}  {power} W", style="dim")
        return Group(title, util, mem, info)
