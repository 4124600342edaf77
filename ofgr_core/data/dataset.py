"""From the ``data`` config section to one validated, merged dataset.

``load_dataset`` builds every source's table through its adapter, maps the sources' labels onto one unified
taxonomy (when ``data.taxonomy`` names one), checks that every image decodes (unreadable files are skipped and
reported, never a crash mid-run), removes exact duplicates found by content hash, and encodes labels. What was
dropped and why goes into ``PreparedData.report`` (the run's ``data_report.json``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from ofgr_core.common.errors import DataError
from ofgr_core.common.integrity import (
    CacheCorrupt,
    CacheHeader,
    checksum,
    crc32,
    header_path,
    read_header,
    rebuild_note,
    verify_header,
    write_header,
)
from ofgr_core.common.threads import usable_cpus
from ofgr_core.config import DataConfig
from ofgr_core.data.base import DatasetTable, create_table
from ofgr_core.data.common import worker_start_method
from ofgr_core.data.labels import Hierarchy

if TYPE_CHECKING:
    from ofgr_core.data.taxonomy import Taxonomy

Progress = Callable[[int, int], None]

SIZE_BINS = (1, 2, 5, 10, 20, 50, 100, 200, 500)  # class-size histogram edges (images per class)
_LIST_LIMIT = 200  # report lists longer than this are cut (with a count) to keep data_report.json readable


@dataclass
class PreparedData:
    """A merged dataset ready for splitting.

    Attributes:
        table: one row per usable image.
        hierarchy: class names per level.
        labels: (N, L) int64 class ids, column 0 = fine.
        report: what was skipped or removed and why (written to ``data_report.json``).
    """

    table: DatasetTable
    hierarchy: Hierarchy
    labels: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------- checking
@dataclass(frozen=True)
class ImageCheck:
    """Outcome of reading one image file: its content hash, size, and why it is unusable (None if usable)."""

    reason: str | None
    digest: str = ""
    width: int = 0
    height: int = 0


# One image's check: (reason it is unusable or None, content digest, width, height).
_Check = tuple[str | None, bytes, int, int]


def _inspect(path: str) -> _Check:
    """(reason or None, raw 16-byte blake2b digest or b"", width, height) of one file, read once."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return "missing file", b"", 0, 0
    except OSError as e:
        return f"cannot read: {e.strerror or e}", b"", 0, 0
    digest = hashlib.blake2b(raw, digest_size=16).digest()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            width, height = im.size
            if width < 1 or height < 1:
                return "empty image", digest, 0, 0
            # decoding at reduced scale still reads every byte of a JPEG, so truncation is caught, ~4x faster
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
    except Exception as e:  # PIL raises many types for corrupt/truncated/non-image files
        # no object addresses in the reason: it must read the same in every process and every run
        message = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", f"{type(e).__name__}: {e}")
        return message.splitlines()[0][:200], digest, 0, 0
    return None, digest, width, height


def inspect_image(path: str) -> ImageCheck:
    """Read one file once: hash its bytes and fully decode them (catches truncated and non-image files)."""
    reason, digest, width, height = _inspect(path)
    return ImageCheck(reason, digest.hex(), width, height)


def check_image(path: str) -> str | None:
    """Fully decode one image; return the reason it is unusable, or None."""
    return inspect_image(path).reason


def _inspect_chunk(paths: list[str]) -> list[_Check]:
    return [_inspect(p) for p in paths]


@dataclass
class ImageChecks:
    """Check results of N images as columns (a million rows cost ~30 MB, not a Python object per image).

    Attributes:
        digests: (N, 16) uint8 raw blake2b-128 content hashes (zeros when the file could not be read).
        widths: (N,) int32 pixel widths (0 when unusable).
        heights: (N,) int32.
        reasons: row -> why the image is unusable; rows not in it are usable.
    """

    digests: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    reasons: dict[int, str]
    notes: list[str] = field(default_factory=list)  # warnings about the memo (rebuilt, and why)

    @classmethod
    def empty(cls, n: int) -> ImageChecks:
        return cls(np.zeros((n, 16), np.uint8), np.zeros(n, np.int32), np.zeros(n, np.int32), {})

    def __len__(self) -> int:
        return len(self.widths)

    def hexdigest(self, i: int) -> str:
        """Hex content hash of row ``i`` ("" when the file could not be read)."""
        raw = self.digests[i].tobytes()
        return raw.hex() if any(raw) else ""

    def hexdigests(self) -> list[str]:
        return [self.hexdigest(i) for i in range(len(self))]

    def __getitem__(self, i: int) -> ImageCheck:
        return ImageCheck(self.reasons.get(i), self.hexdigest(i), int(self.widths[i]), int(self.heights[i]))

    def set(self, i: int, result: tuple[str | None, bytes, int, int]) -> None:
        reason, digest, width, height = result
        if digest:
            self.digests[i] = np.frombuffer(digest, np.uint8)
        self.widths[i], self.heights[i] = width, height
        if reason is not None:
            self.reasons[i] = reason


# one fixed-size record per checked file, appended as results arrive (an interrupted check resumes from it)
MEMO_DTYPE = np.dtype([("key", "<u8"), ("size", "<i8"), ("mtime", "<i8"), ("digest", "u1", (16,)),
                       ("width", "<i4"), ("height", "<i4"), ("bad", "u1")])
MEMO_FILE = "image_checks.bin"
MEMO_REASONS = "image_checks_reasons.jsonl"
MEMO_KIND, MEMO_VERSION = "image-check-memo", 2
_MEMO_FLUSH_S = 2.0


def _path_key(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                          "little")


def _reason_line(key: int, size: int, mtime: int, reason: str) -> str:
    """One line of the reasons file: the JSON record, a tab, and the CRC-32 of the JSON's bytes (8 hex digits)."""
    payload = json.dumps({"key": key, "size": size, "mtime": mtime, "reason": reason})  # ASCII: no raw tab
    return f"{payload}\t{crc32(payload.encode('ascii')):08x}"


def _reason_from_line(line: bytes) -> tuple[tuple[int, int, int], str] | None:
    """``((key, size, mtime), reason)`` of a line ``_reason_line`` wrote, or None for a line whose checksum does not
    match its bytes (damaged, or written before lines carried one): its file is then checked again."""
    payload, tab, tag = line.rstrip(b"\r\n").rpartition(b"\t")
    if not tab or len(tag) != 8:
        return None
    try:
        if crc32(payload) != int(tag, 16):
            return None
        r = json.loads(payload)
        return (int(r["key"]), int(r["size"]), int(r["mtime"])), str(r["reason"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


class CheckMemo:
    """Per-file check results kept across runs in ``<folder>/image_checks.bin``.

    Records are keyed by a 64-bit hash of the path and stamped with the file's size and mtime (a changed
    file is re-read). They are appended in batches while checking, so a run killed after 600k of 1M images
    re-reads only the other 400k. Reasons of unusable files go to a small JSON-lines side file, each line ending
    in the CRC-32 of its bytes: a line that does not match is ignored, and its file is checked again.

    The memo verifies itself (``ofgr_core/common/integrity.py``): ``image_checks.bin.header.json`` holds the
    format version, the record dtype, the record count and the CRC-32 of every record byte, updated (under a
    file lock, so two runs may share a memo) after each append. On open, bytes past the count are a torn append
    and are cut; a missing or foreign header, a short file or a checksum mismatch discards the whole memo with
    one warning line (``rebuilt``): every image is checked again, never answered from damaged records.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.path = folder / MEMO_FILE if folder else None
        self._pending: list[np.ndarray] = []
        self._pending_reasons: list[str] = []
        self._last_flush = time.monotonic()
        self.rebuilt: str | None = None
        records = np.zeros(0, MEMO_DTYPE)
        self.reasons: dict[tuple[int, int, int], str] = {}
        if self.path is not None and (self.path.exists() or header_path(self.path).exists()):
            try:
                records = self._read_verified(self.path)
            except CacheCorrupt as e:
                self.rebuilt = rebuild_note(self.path, f"{e}; every image is checked again")
                for stale in (header_path(self.path), self.path, self.path.with_name(MEMO_REASONS)):
                    with contextlib.suppress(OSError):
                        stale.unlink()
            reasons_path = self.path.with_name(MEMO_REASONS)
            if len(records) and reasons_path.is_file():
                with contextlib.suppress(OSError), reasons_path.open("rb") as f:
                    for line in f:
                        r = _reason_from_line(line)
                        if r is not None:
                            self.reasons[r[0]] = r[1]
        # the last record of a key wins (a re-checked file appends a newer one)
        if len(records):
            order = np.argsort(records["key"], kind="stable")
            keys = records["key"][order]
            last = np.r_[keys[1:] != keys[:-1], True]
            records = records[order[last]]
        self.records = records
        self.superseded = 0

    @staticmethod
    def _read_verified(path: Path) -> np.ndarray:
        """The records of a memo file whose header, size and checksum agree; a torn last append is cut."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CacheCorrupt(f"{path}: missing, but its header exists") from None
        except OSError as e:
            raise CacheCorrupt(f"{path}: unreadable ({e.strerror or e})") from None
        h = verify_header(path, kind=MEMO_KIND, version=MEMO_VERSION, dtype=str(MEMO_DTYPE.descr),
                          shape=(MEMO_DTYPE.itemsize,))
        whole = h.count * MEMO_DTYPE.itemsize
        if len(raw) < whole:
            raise CacheCorrupt(f"{path}: {len(raw)} bytes, its header counts {h.count} records ({whole} bytes)")
        if checksum(raw[:whole]) != h.index_checksum:
            raise CacheCorrupt(f"{path}: the records do not match their checksum (damaged or overwritten)")
        if whole < len(raw):  # a torn append (killed mid-write, before the header): cut it
            with contextlib.suppress(OSError):
                os.truncate(path, whole)
        records: np.ndarray = np.frombuffer(raw[:whole], MEMO_DTYPE).copy()
        return records

    def lookup(self, keys: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray) -> np.ndarray:
        """Index into ``records`` of each key whose stamp still matches, else -1."""
        if not len(self.records) or not len(keys):
            return np.full(len(keys), -1, np.int64)
        pos = np.searchsorted(self.records["key"], keys).clip(0, len(self.records) - 1)
        rec = self.records[pos]
        ok = (rec["key"] == keys) & (rec["size"] == sizes) & (rec["mtime"] == mtimes) & (sizes >= 0)
        return np.where(ok, pos, -1)

    def reason(self, index: int) -> str | None:
        r = self.records[index]
        return self.reasons.get((int(r["key"]), int(r["size"]), int(r["mtime"])))

    def add(self, key: int, size: int, mtime: int, result: tuple[str | None, bytes, int, int]) -> None:
        if self.path is None or size < 0:
            return
        reason, digest, width, height = result
        rec = np.zeros(1, MEMO_DTYPE)
        rec["key"], rec["size"], rec["mtime"] = key, size, mtime
        if digest:
            rec["digest"][0] = np.frombuffer(digest, np.uint8)
        rec["width"], rec["height"], rec["bad"] = width, height, reason is not None
        self._pending.append(rec)
        if reason is not None:
            self._pending_reasons.append(_reason_line(key, size, mtime, reason))
        if time.monotonic() - self._last_flush > _MEMO_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Append pending records (reasons first: a record is only trusted once its reason is on disk)."""
        self._last_flush = time.monotonic()
        if self.path is None or not self._pending:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._pending_reasons:
                with open(self.path.parent / MEMO_REASONS, "a", encoding="utf-8") as f:
                    f.write("\n".join(self._pending_reasons) + "\n")
            self._append(self.path, np.concatenate(self._pending).tobytes())
        except OSError:
            self.path = None  # a read-only or full cache folder only costs a re-check next time
        self._pending, self._pending_reasons = [], []

    @staticmethod
    def _append(path: Path, data: bytes) -> None:
        """Append records and extend the header's count and checksum, under an exclusive lock on the file."""
        with open(path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                try:
                    h: CacheHeader | None = read_header(path)
                except CacheCorrupt:
                    h = None
                size = f.seek(0, os.SEEK_END)
                count = h.count if h is not None else 0
                if h is None or size != count * MEMO_DTYPE.itemsize:
                    # no header (a new memo), or bytes past the count (a torn append): start at the count
                    f.truncate(count * MEMO_DTYPE.itemsize)
                    if h is None:
                        count = 0
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                prev = h.index_checksum if h is not None else None
                write_header(path, CacheHeader(MEMO_KIND, MEMO_VERSION, str(MEMO_DTYPE.descr),
                                               (MEMO_DTYPE.itemsize,), count + len(data) // MEMO_DTYPE.itemsize,
                                               checksum(data, prev)))
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _stamps(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.full(len(paths), -1, np.int64)
    mtimes = np.zeros(len(paths), np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
    return sizes, mtimes


PROCESS_MIN = 2000  # below this many files a thread pool is quicker than starting processes
_CHUNK = 256
_PROGRESS_EVERY_S = 0.25  # progress callbacks at most this often


def default_workers() -> int:
    """Worker processes for data preparation: every core the process may use."""
    return usable_cpus()



def check_images(paths: list[str], progress: Progress | None = None, workers: int | None = None,
                 memo_dir: Path | None = None) -> ImageChecks:
    """Hash and fully decode every image, answering from the memo file where the file is unchanged.

    Large batches run in worker processes (per-file Python work holds the GIL, so threads would use about one
    core on small images); small ones in threads. Results are appended to the memo as they arrive.

    Args:
        paths: image files.
        progress: called with (images done, total) at most a few times a second.
        workers: processes (default: every core available).
        memo_dir: folder of the memo file; None disables it.
    """
    n = len(paths)
    out = ImageChecks.empty(n)
    memo = CheckMemo(memo_dir)
    if memo.rebuilt:
        out.notes.append(memo.rebuilt)
    keys = np.fromiter((_path_key(p) for p in paths), np.uint64, count=n)
    sizes, mtimes = _stamps(paths)
    hit = memo.lookup(keys, sizes, mtimes)
    bad_hits = np.flatnonzero(hit >= 0)
    if len(memo.records):
        bad_hits = bad_hits[memo.records["bad"][hit[bad_hits]] != 0]  # only the (few) unusable files loop here
    for i in bad_hits:
        reason = memo.reason(int(hit[i]))
        if reason is None:  # the reason never reached the disk: check again
            hit[i] = -1
            continue
        out.reasons[int(i)] = reason
    found = hit >= 0
    recs = memo.records[hit[found]]
    out.digests[found], out.widths[found], out.heights[found] = recs["digest"], recs["width"], recs["height"]
    todo = np.flatnonzero(~found)
    done = n - len(todo)
    workers = workers or default_workers()
    chunks = [todo[k : k + _CHUNK] for k in range(0, len(todo), _CHUNK)]
    last_report = 0.0
    if progress is not None:
        progress(done, n)
    if chunks:
        pool: Executor
        if len(todo) >= PROCESS_MIN and workers > 1:
            import multiprocessing as mp

            pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(worker_start_method()))
        else:
            pool = ThreadPoolExecutor(max_workers=min(8, workers * 2))
        # a bounded window of chunks in flight keeps memory flat and results in order
        window = max(4, workers * 4)
        pending: list[tuple[np.ndarray, Future[list[_Check]]]] = []
        try:
            for k, chunk in enumerate(chunks):
                pending.append((chunk, pool.submit(_inspect_chunk, [paths[i] for i in chunk])))
                while pending and (len(pending) >= window or k == len(chunks) - 1):
                    done = _collect(pending.pop(0), out, memo, keys, sizes, mtimes, done)
                    if progress is not None and time.monotonic() - last_report >= _PROGRESS_EVERY_S:
                        progress(done, n)
                        last_report = time.monotonic()
        finally:
            # interrupted (Ctrl-C, an error, a cancelled run): keep what was checked for the next run
            memo.flush()
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=not pending, cancel_futures=True)
    memo.flush()
    if progress is not None:
        progress(n, n)
    return out


def _collect(item: tuple[np.ndarray, Future[list[_Check]]], out: ImageChecks, memo: CheckMemo, keys: np.ndarray,
             sizes: np.ndarray, mtimes: np.ndarray, done: int) -> int:
    chunk, future = item
    for i, res in zip(chunk, future.result(), strict=True):
        i = int(i)
        out.set(i, res)
        memo.add(int(keys[i]), int(sizes[i]), int(mtimes[i]), res)
    return done + len(chunk)


# ---------------------------------------------------------------------------------------------- merging
def _apply_taxonomy(table: DatasetTable, taxonomy: Taxonomy, policy: str) -> tuple[DatasetTable, dict[str, Any]]:
    """Relabel ``table`` onto the taxonomy's levels; unmapped rows raise or are dropped (``policy``)."""
    out: dict[str, list[str]] = {lv: [] for lv in taxonomy.levels}
    keep: list[int] = []
    unmapped: Counter[tuple[str, str]] = Counter()
    memo: dict[tuple[str, tuple[str, ...]], dict[str, str] | None] = {}
    own_levels = table.level_names
    for i in range(len(table)):
        row = tuple(table.labels[lv][i] for lv in own_levels)
        key = (table.sources[i], row)
        if key not in memo:
            memo[key] = taxonomy.place(table.sources[i], dict(zip(own_levels, row, strict=True)))
        placed = memo[key]
        if placed is None:
            unmapped[(table.sources[i], " / ".join(row))] += 1
            continue
        keep.append(i)
        for lv in taxonomy.levels:
            out[lv].append(placed[lv])
    info = {
        "labels": [{"source": s, "label": lab, "images": n} for (s, lab), n in sorted(unmapped.items())],
        "images": sum(unmapped.values()),
    }
    if unmapped and policy == "error":
        shown = "; ".join(f"{s}: {lab!r}" for (s, lab), _ in sorted(unmapped.items())[:8])
        more = "" if len(unmapped) <= 8 else f" and {len(unmapped) - 8} more"
        raise DataError(
            f"{len(unmapped)} source labels are not in taxonomy {taxonomy.name!r} ({taxonomy.path}): "
            f"{shown}{more}; "
            "add them (or synonyms) to the taxonomy, or set data.unmapped: drop"
        )
    sub = table.subset(keep)
    sub.labels = out
    return sub, info


def merge_tables(tables: list[DatasetTable], taxonomy_ref: str | None, unmapped: str = "error"
                 ) -> tuple[DatasetTable, dict[str, Any]]:
    """One table from several sources, on the taxonomy's levels when one is given.

    Returns:
        The merged table and a report fragment (taxonomy name/version, unmapped labels).
    """
    info: dict[str, Any] = {}
    class_ids: dict[str, int] = {}
    if taxonomy_ref:
        from ofgr_core.data.taxonomy import load_taxonomy

        taxonomy = load_taxonomy(taxonomy_ref)
        info["taxonomy"] = {"name": taxonomy.name, "version": taxonomy.version, "path": taxonomy.path,
                            "levels": list(taxonomy.levels)}
        mapped, dropped = [], {"labels": [], "images": 0}
        for t in tables:
            m, d = _apply_taxonomy(t, taxonomy, unmapped)
            mapped.append(m)
            dropped["labels"] += d["labels"]
            dropped["images"] += d["images"]
            for name, cid in t.meta.get("class_ids", {}).items():
                class_ids.setdefault(taxonomy.canonical(name), cid)
        if dropped["images"]:
            info["unmapped"] = dropped
        tables = [t for t in mapped if len(t)]
        if not tables:
            raise DataError(f"no image could be placed in taxonomy {taxonomy.name!r}; check data.taxonomy")
    else:
        levels = tables[0].level_names
        for t in tables[1:]:
            if t.level_names != levels:
                raise DataError(
                    f"sources have different label levels ({levels} vs {t.level_names}); "
                    "set data.taxonomy to map them onto one hierarchy"
                )
        for t in tables:
            for name, cid in t.meta.get("class_ids", {}).items():
                class_ids.setdefault(name, cid)
    merged = tables[0] if len(tables) == 1 else DatasetTable.concat(tables)
    merged.meta = {
        "sources": {t.sources[0]: t.meta for t in tables if len(t)},
        **({"class_ids": class_ids} if class_ids else {}),
    }
    return merged, info


# ------------------------------------------------------------------------------------------------ dedup
def find_duplicates(table: DatasetTable, digests: list[str] | np.ndarray) -> tuple[list[int], dict[str, Any]]:
    """Rows to drop so each image content appears once.

    Copies with one fine label keep their first row. Copies that disagree on the fine label are all dropped:
    the image cannot be both classes, and if the classes fall on both sides of the seen/unseen boundary the
    copy would leak an unseen image into training.

    Args:
        table: the rows.
        digests: per row, a hex content hash or an (N, 16) uint8 array of raw hashes.
    """
    if isinstance(digests, np.ndarray):
        raw = np.ascontiguousarray(digests, dtype=np.uint8).reshape(len(digests), 16)
    else:
        raw = np.array([np.frombuffer(bytes.fromhex(d).ljust(16, b"\0")[:16], np.uint8) for d in digests],
                       dtype=np.uint8).reshape(len(digests), 16)
    words = raw.view("<u8")  # (N, 2)
    groups: list[np.ndarray] = []
    if len(words):
        # vectorised grouping: only the (few) hashes seen more than once become Python lists
        order = np.lexsort((words[:, 1], words[:, 0]))
        w = words[order]
        starts = np.flatnonzero(np.r_[True, (w[1:] != w[:-1]).any(axis=1)])
        sizes = np.diff(np.r_[starts, len(w)])
        groups = [np.sort(order[s : s + k]) for s, k in zip(starts[sizes > 1], sizes[sizes > 1], strict=True)]
        groups.sort(key=lambda rows: int(rows[0]))
    fine = table.labels["fine"]
    drop: list[int] = []
    same, conflict = [], []
    for rows_arr in groups:
        rows = rows_arr.tolist()
        entry = {"ids": [table.ids[i] for i in rows], "fine": sorted({fine[i] for i in rows}),
                 "sources": sorted({table.sources[i] for i in rows})}
        if len({fine[i] for i in rows}) == 1:
            drop.extend(rows[1:])
            same.append(entry)
        else:
            drop.extend(rows)
            conflict.append(entry)
    info = {
        "groups": len(same) + len(conflict),
        "removed": len(drop),
        "cross_source": sum(len(e["sources"]) > 1 for e in same + conflict),
        "conflicting_labels": _cut(conflict),
        "same_label": _cut(same),
    }
    return sorted(drop), info


_T = TypeVar("_T")


def _cut(items: list[_T]) -> list[_T | str]:
    if len(items) <= _LIST_LIMIT:
        return list(items)
    return [*items[:_LIST_LIMIT], f"... {len(items) - _LIST_LIMIT} more"]


# -------------------------------------------------------------------------------------------- summaries
def class_size_histogram(counts: list[int] | np.ndarray) -> dict[str, int]:
    """Number of classes per size bin (``"1"``, ``"2-4"``, ..., ``"500+"``)."""
    out: dict[str, int] = {}
    counts = np.asarray(counts)
    for lo, hi in zip(SIZE_BINS, (*SIZE_BINS[1:], None), strict=True):
        label = f"{lo}+" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}")
        out[label] = int(((counts >= lo) & (counts < hi if hi else True)).sum())
    return out


def describe(table: DatasetTable) -> dict[str, Any]:
    """Counts per level, per split/source/domain, and the fine class-size histogram."""

    def per(column: list[str]) -> dict[str, dict[str, int]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, v in enumerate(column):
            groups[v or "(none)"].append(i)
        return {
            k: {"images": len(rows), "fine_classes": len({table.labels["fine"][i] for i in rows} - {""})}
            for k, rows in sorted(groups.items())
        }

    fine_counts = Counter(f for f in table.labels["fine"] if f)
    out: dict[str, Any] = {
        "images": len(table),
        "levels": {lv: len(set(v) - {""}) for lv, v in table.labels.items()},
        "per_source": per(table.sources),
        "class_size_histogram": class_size_histogram(list(fine_counts.values())),
        "singleton_classes": sorted(c for c, n in fine_counts.items() if n == 1)[:_LIST_LIMIT],
    }
    n_coarse_only = len(table) - sum(fine_counts.values())
    if n_coarse_only:
        out["coarse_only_images"] = n_coarse_only
    if any(table.splits):
        out["per_split"] = per(table.splits)
    if any(table.domains):
        out["per_domain"] = per(table.domains)
    if fine_counts:
        sizes = np.array(list(fine_counts.values()))
        out["images_per_fine_class"] = {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                        "max": int(sizes.max())}
    return out


# ----------------------------------------------------------------------------------------------- loading
def build_tables(cfg: DataConfig) -> list[DatasetTable]:
    """Every source's table, through its adapter; source names must be unique (they prefix item ids)."""
    tables: list[DatasetTable] = []
    names: Counter[str] = Counter()
    for src in cfg.sources:
        t = create_table(src.type, src.root, name=src.name, **src.options)
        if len(t) == 0:
            raise DataError(f"data source {src.name or src.type} ({src.root}) has no images")
        names[t.sources[0]] += 1
        tables.append(t)
    dup = [n for n, k in names.items() if k > 1]
    if dup:
        raise DataError(f"two data sources are named {dup[0]!r}; give each a distinct data.sources[].name")
    return tables


def load_dataset(cfg: DataConfig, *, progress: Progress | None = None, check: bool = True,
                 workers: int | None = None) -> PreparedData:
    """Build, merge, check and de-duplicate every source of ``cfg``.

    Args:
        cfg: the ``data`` config section.
        progress: called with (images checked, total).
        check: decode every image (always on for training; ``ofgr data inspect`` may skip it).
        workers: processes for the check (default: every core available).

    Raises:
        DataError: a source is missing or empty, labels are unmapped (policy ``error``), or nothing usable
            is left.
    """
    table, report = _merge_sources(cfg)
    cache_dir = None
    if cfg.cache:
        from ofgr_core.data.cache import default_cache_dir

        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir(
            [s.root for s in cfg.sources])
    n_found = len(table)
    checks = check_images(table.paths, progress, workers, cache_dir) if check else ImageChecks.empty(n_found)
    report["warnings"] += checks.notes  # the check memo rebuilt, and why
    keep_mask = _readable_rows(table, checks, report)
    if check:
        _mark_duplicates(table, checks, keep_mask, cfg.dedup, report)
    _apply_coarse_only(table, keep_mask, cfg.coarse_only, report)
    keep = np.flatnonzero(keep_mask)
    hex_digests = [checks.hexdigest(int(i)) for i in keep] if check else []
    sizes = list(zip(checks.widths[keep].tolist(), checks.heights[keep].tolist(), strict=True))
    del checks
    if len(keep) < n_found:
        table = table.subset(keep)
    if len(table) == 0:
        raise DataError("no usable images left after skipping unreadable files (see data_report.json)")
    hashes = {i: d for i, d in zip(table.ids, hex_digests, strict=False) if d}
    table.meta["content_hash"] = hashes
    # the split stage adds its leakage findings here, so keep the report reachable from the table
    table.meta["report"] = report

    fine_classes = set(table.labels["fine"]) - {""}
    report["n_images"] = len(table)
    report["summary"] = describe(table)
    hierarchy = Hierarchy.from_labels(table.labels)
    labels = hierarchy.encode(table.labels)
    if len(fine_classes) < 2:
        report["warnings"].append(f"only {len(fine_classes)} fine class: retrieval needs at least 2")

    if cfg.cache and cfg.image_size and check and cache_dir is not None:
        _open_pixel_cache(table, sizes, hex_digests, cache_dir, cfg.image_size, report)
    return PreparedData(table=table, hierarchy=hierarchy, labels=labels, report=report)


def _merge_sources(cfg: DataConfig) -> tuple[DatasetTable, dict[str, Any]]:
    """Every source merged into one table, and the data report started with the merge's findings."""
    table, merge_info = merge_tables(build_tables(cfg), cfg.taxonomy, cfg.unmapped)
    if len(table) == 0:
        raise DataError("the dataset is empty: no images found in "
                        + ", ".join(str(s.root or s.type) for s in cfg.sources))
    report: dict[str, Any] = {"n_images_found": len(table), **merge_info, "unreadable": [], "warnings": []}
    for name, meta in table.meta["sources"].items():
        report["warnings"] += [f"{name}: {w}" for w in meta.get("warnings", [])]
    if merge_info.get("unmapped"):
        report["warnings"].append(f"{merge_info['unmapped']['images']} images with unmapped labels dropped "
                                  "(data.unmapped: drop)")
    return table, report


def _readable_rows(table: DatasetTable, checks: ImageChecks, report: dict[str, Any]) -> np.ndarray:
    """A keep-mask over ``table`` with the unreadable images off; they are listed in ``report``."""
    n_found = len(table)
    bad = sorted(checks.reasons)
    if bad:
        report["unreadable"] = [{"path": table.paths[i], "id": table.ids[i], "reason": checks.reasons[i]}
                                for i in bad]
        report["warnings"].append(f"{len(bad)} of {n_found} images are unreadable and were skipped")
    usable = np.ones(n_found, dtype=bool)
    usable[bad] = False
    return usable


def _mark_duplicates(table: DatasetTable, checks: ImageChecks, keep_mask: np.ndarray, dedup: bool,
                     report: dict[str, Any]) -> None:
    """Finds identical images among the kept rows; with ``dedup`` turns the copies off in ``keep_mask``."""
    kept_rows = np.flatnonzero(keep_mask)
    dup_rows, dup_info = find_duplicates(table if len(kept_rows) == len(table) else table.subset(kept_rows),
                                         checks.digests[kept_rows])
    dup_info["removed_ids"] = _cut([table.ids[kept_rows[j]] for j in dup_rows])
    if dedup:
        keep_mask[kept_rows[dup_rows]] = False
    else:
        dup_info["removed"] = 0
        if dup_info["groups"]:
            report["warnings"].append(
                f"{dup_info['groups']} groups of identical images kept (data.dedup: false); copies that "
                "straddle the seen/unseen boundary are removed from training by the split check")
    report["duplicates"] = dup_info


def _apply_coarse_only(table: DatasetTable, keep_mask: np.ndarray, policy: str, report: dict[str, Any]) -> None:
    """Counts kept images without a fine label; policy ``drop`` turns them off in ``keep_mask``."""
    fine_col = table.labels["fine"]
    coarse_only = [i for i in np.flatnonzero(keep_mask).tolist() if not fine_col[i]]
    if coarse_only:
        report["coarse_only"] = {"images": len(coarse_only), "policy": policy}
        if policy == "drop":
            keep_mask[coarse_only] = False
            report["warnings"].append(f"{len(coarse_only)} coarse-only images (no fine label) dropped "
                                      "(data.coarse_only: drop)")


def _open_pixel_cache(table: DatasetTable, sizes: list[tuple[int, int]], hex_digests: list[str], cache_dir: Path,
                      image_size: int, report: dict[str, Any]) -> None:
    """Opens (and registers for the loaders) the resized-pixel cache; a disk error only disables it."""
    from ofgr_core.data.cache import ImageCache, register

    try:
        cache = ImageCache(table.paths, sizes, hex_digests, cache_dir, image_size)
        register(cache)
        report["cache"] = {"path": str(cache.data_path), "short_side": cache.side}
        if cache.rebuilt:  # a damaged cache was rebuilt (or slots emptied): one line says which and why
            report["warnings"].append(cache.rebuilt)
    except OSError as e:  # no space or read-only: decoding from the files still works
        report["warnings"].append(f"image cache disabled: {e}")


# ---------------------------------------------------------------------------------------------- detection
def detect_source(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Guess the format of a dataset at ``path``.

    Returns:
        ``{"type": adapter name, "root": path, "options": {...}, "layout": description}``.

    Raises:
        DataError: nothing recognisable is there.
    """
    from ofgr_core.data.imagefolder import detect_split_dirs
    from ofgr_core.data.openimages import detect_files
    from ofgr_core.data.stanford_cars import detect_layout
    from ofgr_core.data.vehicle10 import CLASSES

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist")
    if p.is_file():
        if p.suffix.lower() in (".csv", ".tsv"):
            return {"type": "manifest", "root": str(p), "options": {}, "layout": "manifest CSV"}
        raise DataError(f"{p}: a file must be a manifest CSV (or a config YAML for `ofgr data inspect`)")
    layout = detect_layout(p)
    if layout:
        return {"type": "stanford_cars", "root": str(p), "options": {}, "layout": f"Stanford Cars ({layout})"}
    oi = detect_files(p)
    if oi["labels"] and oi["descriptions"] and oi["hierarchy"]:
        return {"type": "openimages", "root": str(p), "options": {}, "layout": "OpenImages label CSVs"}
    if (p / "synth.json").is_file() and (p / "manifest.csv").is_file():
        return {"type": "manifest", "root": str(p / "manifest.csv"), "options": {},
                "layout": "manifest CSV (synthetic world)"}
    if (p / "manifest.csv").is_file():
        return {"type": "manifest", "root": str(p / "manifest.csv"), "options": {}, "layout": "manifest CSV"}
    base = p
    split_dirs = detect_split_dirs(p)
    if split_dirs:
        base = next(d for d in sorted(p.iterdir()) if d.is_dir() and not d.name.startswith("."))
    classes = {d.name.lower() for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if classes and classes <= set(CLASSES) and len(classes) >= 3:
        return {"type": "vehicle10", "root": str(p), "options": {}, "layout": "Vehicle-10 class folders"}
    if classes:
        return {"type": "imagefolder", "root": str(p), "options": {},
                "layout": "nested image folders" + (" with train/val/test" if split_dirs else "")}
    raise DataError(
        f"{p}: no known dataset layout (Stanford Cars devkit/CSV, OpenImages CSVs, manifest.csv, folders)"
    )
