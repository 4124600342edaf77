"""Launch a run: pick a config from the configs folder or type a path, add ``--set`` overrides.

The config is validated here (strict schema, same code as ``ofgr run``) so mistakes show up as one line in
the dialog instead of a run that dies at once. Dismisses with ``(config_path, overrides)`` or ``None``.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from ofgr_core.common.errors import OfgrError
from ofgr_tui.launcher import parse_overrides
from ofgr_tui.widgets.path_input import PathSuggester


def list_configs(configs_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in configs_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    except OSError:
        return []


class LaunchDialog(ModalScreen[tuple[Path, list[str]] | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "launch", "Launch"),
    ]

    def __init__(self, configs_dir: Path) -> None:
        super().__init__()
        self.configs_dir = configs_dir
        self.configs = list_configs(configs_dir)

    def compose(self) -> ComposeResult:
        with Vertical(id="launch-box", classes="dialog"):
            yield Static("New run", classes="dialog-title")
            if self.configs:
                yield Label(f"Configs in {self.configs_dir}/ (enter picks)")
                yield OptionList(*(Option(p.name, id=str(p)) for p in self.configs), id="config-list")
            else:
                yield Label(f"No configs in {self.configs_dir}/: type a path below.", classes="dim")
            yield Label("Config file (→ completes)")
            yield Input(
                value=str(self.configs[0]) if self.configs else "",
                placeholder="path/to/config.yaml",
                suggester=PathSuggester((".yaml", ".yml")),
                id="config-path",
                compact=True,
            )
            yield Label("Overrides (KEY=VALUE, space separated)")
            yield Input(placeholder="train.epochs=3 model.name=resnet50", id="overrides", compact=True)
            yield Static("", id="launch-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Launch (ctrl+s)", id="launch", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        if self.configs:
            self.query_one("#config-list", OptionList).focus()
        else:
            self.query_one("#config-path", Input).focus()

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.query_one("#config-path", Input).value = event.option.id

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.query_one("#config-path", Input).value = event.option.id
        self.query_one("#overrides", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "config-path":
            self.query_one("#overrides", Input).focus()
        else:
            self.action_launch()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "launch":
            self.action_launch()
        else:
            self.action_cancel()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _error(self, text: str) -> None:
        self.query_one("#launch-error", Static).update(text)

    def action_launch(self) -> None:
        path_text = self.query_one("#config-path", Input).value.strip()
        if not path_text:
            self._error("choose a config file")
            return
        path = Path(path_text).expanduser()
        try:
            overrides = parse_overrides(self.query_one("#overrides", Input).value)
        except ValueError as e:
            self._error(str(e))
            return
        try:
            from ofgr_core.config import load_config

            load_config(path, overrides)
        except OfgrError as e:
            self._error(str(e))
            return
        self.dismiss((path, overrides))
