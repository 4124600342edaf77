"""Launch a run: pick a config from the configs folder or type a path, add ``--set`` overrides.

The config is validated here (strict schema, same code as ``ofgr run``) so mistakes show up as one line in
the dialog, under the field they belong to, instead of a run that dies at once. The dialog fits 80x24.
Dismisses with ``(config_path, overrides)`` or ``None``.
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

# the config preselected when the folder has it: the embedded default, whose data is generated on first use
DEFAULT_CONFIG = "demo.yaml"


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
        # never a config whose data may be missing: only the demo's (generated) is preselected
        self.preselected = next((p for p in self.configs if p.name == DEFAULT_CONFIG), None)

    def compose(self) -> ComposeResult:
        with Vertical(id="launch-box", classes="dialog"):
            yield Static("New run", classes="dialog-title")
            if self.configs:
                yield Label("Config: enter picks one, or type a path (→ completes)")
                configs = OptionList(*(Option(p.name, id=str(p)) for p in self.configs), id="config-list")
                configs.border_title = f"{self.configs_dir}/"
                yield configs
            else:
                yield Label(f"Config: no configs in {self.configs_dir}/, type a path (→ completes)")
            yield Input(
                value=str(self.preselected) if self.preselected else "",
                placeholder="path/to/config.yaml",
                suggester=PathSuggester((".yaml", ".yml")),
                id="config-path",
                compact=True,
            )
            yield Static("", id="config-error", classes="field-error")
            yield Label("Overrides: KEY=VALUE, space separated (optional)")
            yield Input(placeholder="none (e.g. train.epochs=3)", id="overrides", compact=True)
            yield Static("", id="overrides-error", classes="field-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Launch ctrl+s", id="launch", variant="primary", compact=True)
                yield Button("Cancel esc", id="cancel", compact=True)

    def on_mount(self) -> None:
        if self.configs:
            ol = self.query_one("#config-list", OptionList)
            if self.preselected is not None:
                ol.highlighted = self.configs.index(self.preselected)
            ol.focus()
        else:
            self.query_one("#config-path", Input).focus()
        for box in self.query(".field-error"):
            box.display = False

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.query_one("#config-path", Input).value = event.option.id
            self._error("#config-error", "")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.query_one("#config-path", Input).value = event.option.id
        self.query_one("#overrides", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        # an edited field's old error no longer applies
        self._error("#config-error" if event.input.id == "config-path" else "#overrides-error", "")

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

    def _error(self, field: str, text: str) -> None:
        box = self.query_one(field, Static)
        box.update(text)
        box.display = bool(text)

    def action_launch(self) -> None:
        from ofgr_core.config import load_config

        self._error("#config-error", "")
        self._error("#overrides-error", "")
        path_text = self.query_one("#config-path", Input).value.strip()
        if not path_text:
            self._error("#config-error", "choose a config file")
            return
        path = Path(path_text).expanduser()
        try:
            load_config(path, [])  # the file on its own first: its errors belong under its field
        except OfgrError as e:
            self._error("#config-error", str(e))
            self.query_one("#config-path", Input).focus()
            return
        try:
            overrides = parse_overrides(self.query_one("#overrides", Input).value)
            load_config(path, overrides)
        except (OfgrError, ValueError) as e:
            self._error("#overrides-error", without_origin(str(e), str(path), overrides))
            self.query_one("#overrides", Input).focus()
            return
        self.dismiss((path, overrides))


def without_origin(message: str, path: str, overrides: list[str]) -> str:
    """The error without its ``CONFIG with --set ...:`` prefix (the two fields above show both), so the
    reason is what fills the lines under the field; the whole message when it is not of that form."""
    shown = " ".join(o if len(o) <= 80 else o[:77] + "..." for o in overrides)  # as ofgr_core.config names them
    origin = f"{path} with --set {shown}: "
    return message[len(origin) :] if message.startswith(origin) else message
