"""Filesystem completion for an ``Input``: suggests the first matching entry (right arrow accepts)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from textual.suggester import Suggester


class PathSuggester(Suggester):
    """Suggests the first existing path that extends what was typed; folders end with ``/``.

    Args:
        suffixes: Files with these suffixes are preferred (folders are always offered, to walk into them).
    """

    def __init__(self, suffixes: Iterable[str] = ()) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffixes = tuple(s.lower() for s in suffixes)

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value, self.suffixes)


def complete_path(value: str, suffixes: tuple[str, ...] = ()) -> str | None:
    if not value:
        return None
    expanded = os.path.expanduser(value)
    folder, prefix = os.path.split(expanded)
    try:
        names = sorted(os.listdir(folder or "."))
    except OSError:
        return None
    candidates = []
    for name in names:
        if (
            not name.startswith(prefix)
            or name == prefix
            or (name.startswith(".") and not prefix.startswith("."))
        ):
            continue
        full = os.path.join(folder, name)
        is_dir = os.path.isdir(full)
        if not is_dir and suffixes and not name.lower().endswith(suffixes):
            continue
        candidates.append((not is_dir, name, is_dir))
    if not candidates:
        return None
    _, name, is_dir = min(candidates, key=lambda c: (c[1].lower(), c[0]))
    # keep what the user typed (e.g. "~/") and append the rest of the name
    return value + name[len(prefix) :] + ("/" if is_dir else "")
