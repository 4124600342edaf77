"""Benchmark suites: a named list of runs that ``ofgr bench`` executes in order, then compares in a report.

A suite is a YAML file in ``configs/benchmarks/`` (or any path)::

    name: demo
    description: what it compares
    data: {0: synthetic-demo}     # with --data-root DIR: data.sources.0.root = DIR/synthetic-demo
    set: [train.epochs=12]        # overrides for every run (before each run's own and the command line's);
                                  # {data_root} stands for --data-root (default: data)
    runs:
      - name: tinycnn_arcface_htriplet
        config: configs/demo.yaml
        set: [loss.htriplet.weight=1.0]

State lives in ``RUNS_DIR/bench.json`` (suite name -> run name -> run id). A run that finished (metrics.json
present) is skipped; an interrupted or failed one is resumed from its last checkpoint in the same folder (or
started again when it never reached one); a running one stops the suite with an error. Once every run has
finished, the comparison report is written (``ofgr_core.reports.report``), by default to ``RUNS_DIR/report``.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ofgr_core.common.atomic import atomic_write_json, atomic_write_text
from ofgr_core.common.errors import ConfigError, NotFoundError, OfgrError
from ofgr_core.runs.eventlog import EventWriter
from ofgr_core.runs.events import Event, Log
from ofgr_core.runs.folder import RunFolder, create_run_dir
from ofgr_core.runs.state import load_run, read_json

if TYPE_CHECKING:
    from ofgr_core.config import Config
    from ofgr_core.reports.report import ReportOptions

SUITES_DIR = Path("configs") / "benchmarks"
STATE_FILE = "bench.json"
_SUITE_KEYS = {"name", "description", "data", "set", "runs"}
_RUN_KEYS = {"name", "config", "set"}
Emit = Callable[[Event], None]


@dataclass(frozen=True)
class SuiteRun:
    name: str
    config: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    runs: tuple[SuiteRun, ...]
    description: str = ""
    data: dict[int, str] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    def missing_configs(self) -> list[SuiteRun]:
        return [r for r in self.runs if not r.config.is_file()]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def find_suite(ref: str) -> Path:
    """A suite file from a path, or a name in ``configs/benchmarks/`` (of the current folder, then of ofgr)."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    for base in (Path.cwd(), _repo_root()):
        for cand in (base / SUITES_DIR / f"{ref}.yaml", base / SUITES_DIR / f"{ref}.yml"):
            if cand.is_file():
                return cand
    names = sorted(q.stem for base in (Path.cwd(), _repo_root()) for q in (base / SUITES_DIR).glob("*.yaml"))
    raise NotFoundError(f"benchmark suite {ref!r} not found (known: {', '.join(dict.fromkeys(names)) or 'none'}; "
                        f"or give a path to a suite .yaml)")


def _resolve_config(path: str, suite_path: Path) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    # relative to the working folder, then to the checkout that holds the suite (configs/benchmarks/..)
    for base in (Path.cwd(), suite_path.resolve().parent.parent.parent, _repo_root()):
        if (base / p).is_file():
            return base / p
    return suite_path.resolve().parent.parent.parent / p


def _str_list(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: 'set' must be a list of 'key=value' strings")
    return tuple(value)


def load_suite(ref: str | os.PathLike[str]) -> Suite:
    """Read and check a suite file.

    Raises:
        NotFoundError: no such suite.
        ConfigError: unknown keys, missing run names/configs, duplicate run names.
    """
    path = find_suite(str(ref))
    from ofgr_core.common.textio import read_yaml_file

    doc = read_yaml_file(path, error=ConfigError, what="suite file")  # bounded: a YAML bomb is refused
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with 'name' and 'runs'")
    unknown = set(doc) - _SUITE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(_SUITE_KEYS))})")
    items = doc.get("runs")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: 'runs' must be a non-empty list of {{name, config, set}}")
    out, seen = [], set()
    for i, item in enumerate(items):
        where = f"{path}: runs[{i}]"
        if not isinstance(item, dict) or not {"name", "config"} <= set(item):
            raise ConfigError(f"{where}: needs 'name' and 'config'")
        unknown = set(item) - _RUN_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: name, config, set)")
        name = str(item["name"])
        if name in seen:
            raise ConfigError(f"{where}: duplicate run name {name!r}")
        seen.add(name)
        out.append(SuiteRun(name, _resolve_config(str(item["config"]), path), _str_list(item.get("set"), where)))
    data = doc.get("data") or {}
    if not isinstance(data, dict) or not all(isinstance(k, int) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"{path}: 'data' must map source indexes to folder names, e.g. {{0: stanford_cars}}")
    return Suite(str(doc.get("name") or path.stem), path, tuple(out), str(doc.get("description") or ""),
                 dict(data), _str_list(doc.get("set"), str(path)))


def run_overrides(suite: Suite, run: SuiteRun, data_root: str | os.PathLike[str] | None,
                  extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Overrides of one run: suite-wide, data roots under ``data_root``, the run's own, then the command line's.

    ``{data_root}`` in the suite's own overrides stands for ``data_root`` (``data`` when none is given), so a
    suite can point a run at files that live beside its datasets (e.g. pretrained weights).
    """
    root = str(data_root) if data_root is not None else "data"
    out = [o.replace("{data_root}", root) for o in suite.overrides]
    if data_root is not None:
        out += [f"data.sources.{i}.root={Path(data_root) / sub}" for i, sub in sorted(suite.data.items())]
    return out + [o.replace("{data_root}", root) for o in run.overrides] + list(extra)


def _read_state(runs_dir: Path) -> dict[str, Any]:
    state = read_json(runs_dir / STATE_FILE)
    return state if isinstance(state, dict) else {}


@dataclass
class BenchResult:
    run_dirs: list[Path]
    ran: list[str]
    skipped: list[str]
    resumed: list[str]
    report: Path | None = None


def start_run(cfg: Config, runs_dir: Path, *, config_path: str, overrides: list[str]) -> Path:
    """A new run folder with config.yaml and env.json, as ``ofgr run`` writes them."""
    from ofgr_core.common.envinfo import collect_env
    from ofgr_core.config import dump_config

    run_dir = create_run_dir(runs_dir, cfg.name)
    folder = RunFolder(run_dir)
    atomic_write_text(folder.config, dump_config(cfg))
    atomic_write_json(folder.env, collect_env(cfg.seed, cfg.device, {
        "config_path": config_path, "overrides": overrides, "world_size": 1, "pid": os.getpid(),
        "command_line": shlex.join(sys.argv)}))
    return run_dir


def run_suite(
    suite: Suite,
    runs_dir: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    emit: Emit = lambda e: None,
    report_dir: str | os.PathLike[str] | None = None,
    write_report: bool = True,
    report_kwargs: ReportOptions | None = None,
) -> BenchResult:
    """Run every run of ``suite`` not yet finished (in order), then write the comparison report.

    Raises:
        ConfigError: a config file of the suite is missing or invalid, or a run of the suite is still running.
        KeyboardInterrupt: passed on after the current run is marked interrupted (``ofgr bench`` resumes it).
    """
    from ofgr_core.workflows.pipeline import execute_run

    runs_dir = Path(runs_dir)
    configs = _suite_configs(suite, data_root, overrides)  # every config checked before the first long run
    runs_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(runs_dir)
    if state.get("suite") not in (None, suite.name):
        raise ConfigError(f"{runs_dir} holds suite {state.get('suite')!r}, not {suite.name!r}; use another "
                          "--runs-dir")
    ids: dict[str, str] = dict(state.get("runs") or {})
    result = BenchResult([], [], [], [])

    def save_state() -> None:
        atomic_write_json(runs_dir / STATE_FILE, {"suite": suite.name, "suite_path": str(suite.path),
                                                      "runs": ids, "data_root": str(data_root) if data_root
                                                      else None, "overrides": list(overrides)})

    n = len(configs)
    for i, (r, cfg, ov) in enumerate(configs, start=1):
        tag = f"bench {suite.name} [{i}/{n}] {r.name}"
        run_dir = runs_dir / ids[r.name] if r.name in ids else None
        resume = False
        if run_dir is not None and run_dir.is_dir():
            action, cfg = _earlier_attempt(tag, run_dir, cfg, emit)
            if action == "skip":
                result.skipped.append(r.name)
                result.run_dirs.append(run_dir)
                continue
            resume = action == "resume"
            if not resume:
                run_dir = None
        if run_dir is None or not run_dir.is_dir():
            run_dir = start_run(cfg, runs_dir, config_path=str(r.config), overrides=ov)
            ids[r.name] = run_dir.name
            save_state()
            emit(Log(f"{tag}: starting {run_dir.name}"))
        folder = RunFolder(run_dir)
        with EventWriter(folder.events) as writer:
            status, _ = execute_run(cfg, run_dir, writer, emit, resume=resume,
                                    config_path=str(folder.config if resume else r.config))
        if status != "finished":
            raise KeyboardInterrupt(f"{tag}: {status}")
        (result.resumed if resume else result.ran).append(r.name)
        result.run_dirs.append(run_dir)
    save_state()
    if write_report:
        from ofgr_core.reports.report import write_report as _write

        out = Path(report_dir) if report_dir is not None else runs_dir / "report"
        emit(Log(f"bench {suite.name}: writing the comparison report to {out}"))
        result.report = _write(result.run_dirs, out, progress=lambda s: emit(Log(s)), **(report_kwargs or {}))
    return result


def _suite_configs(suite: Suite, data_root: str | os.PathLike[str] | None, overrides: list[str] | tuple[str, ...]
                   ) -> list[tuple[SuiteRun, Config, list[str]]]:
    """Each run's loaded config (named after the run) and its overrides.

    Raises:
        ConfigError: a config file is missing or invalid.
    """
    from ofgr_core.config import load_config

    missing = suite.missing_configs()
    if missing:
        raise ConfigError(f"suite {suite.name}: config {missing[0].config} of run {missing[0].name!r} not found"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    configs = []
    for r in suite.runs:
        ov = run_overrides(suite, r, data_root, overrides)
        try:
            cfg = load_config(str(r.config), ov)
        except OfgrError as e:
            raise ConfigError(f"suite {suite.name}, run {r.name!r}: {e}") from None
        cfg.name = r.name
        configs.append((r, cfg, ov))
    return configs


def _earlier_attempt(tag: str, run_dir: Path, cfg: Config, emit: Emit
                     ) -> tuple[Literal["skip", "resume", "restart"], Config]:
    """What to do with a suite run's existing folder, and the config to run it with.

    ``skip``: it finished (kept even when the suite's config has changed since, with a warning); ``resume``:
    it stopped after a checkpoint, and resumes with its stored config; ``restart``: it stopped before one.

    Raises:
        ConfigError: it is still running.
    """
    from ofgr_core.config import dump_config, load_config

    info = load_run(run_dir)
    folder = RunFolder(run_dir)
    if info.status == "finished" and folder.metrics.is_file():
        stored = folder.config.read_text() if folder.config.is_file() else ""
        if stored.strip() != dump_config(cfg).strip():
            emit(Log(f"{tag}: finished with a different config than the suite now gives; kept "
                     f"(delete {run_dir} to rerun it)", level="warning"))
        emit(Log(f"{tag}: finished already ({run_dir.name}), skipped"))
        return "skip", cfg
    if info.status == "running":
        raise ConfigError(f"{tag}: {run_dir.name} is still running; wait for it or stop it first")
    if folder.checkpoint("last").is_file():
        stored_cfg = load_config(folder.config)
        emit(Log(f"{tag}: {info.status}, resuming {run_dir.name} from its last checkpoint"))
        return "resume", stored_cfg
    emit(Log(f"{tag}: {info.status} before its first checkpoint; starting it again"))
    return "restart", cfg
