"""Query a run's stored embeddings: by dataset item, by image file, or (CLIP runs) by text.

The gallery is a split's stored embeddings (``RUN/embeddings/<split>.npy`` + ``.csv``); a persisted index in
``RUN/index/<split>/`` (``ofgr index build``) is used when present, an exact in-memory index otherwise.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofgr_core.errors import ConfigError, DataError, NotFoundError
from ofgr_core.runs import RunFolder


@dataclass(frozen=True)
class QueryHit:
    rank: int
    id: str
    path: str
    score: float
    fine: str
    coarse: str
    hit_fine: bool | None
    hit_coarse: bool | None


@dataclass
class QueryResult:
    """Ranked results; ``hit_*`` are None when the query's labels are unknown (an outside image, text)."""

    query: str
    split: str
    results: list[QueryHit] = field(default_factory=list)
    query_fine: str | None = None
    query_coarse: str | None = None
    index: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "split": self.split,
            "query_fine": self.query_fine,
            "query_coarse": self.query_coarse,
            "index": self.index,
            "results": [h.__dict__ for h in self.results],
        }


@dataclass
class Gallery:
    embeddings: np.ndarray
    rows: list[dict[str, str]]
    row_of: dict[str, int]


def load_gallery(run_dir: Path, split: str) -> Gallery:
    folder = RunFolder(run_dir)
    npy, csv_path = folder.embeddings_npy(split), folder.embeddings_csv(split)
    if not npy.is_file() or not csv_path.is_file():
        available = folder.embedded_splits()
        raise NotFoundError(
            f"{run_dir.name}: no stored {split!r} embeddings"
            + (f" (available: {', '.join(available)})" if available else " (the run has not reached evaluation)")
        )
    emb = np.load(npy, mmap_mode="r")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != len(emb):
        raise DataError(f"{csv_path}: {len(rows)} rows but {npy.name} has {len(emb)} embeddings")
    return Gallery(emb, rows, {r["id"]: i for i, r in enumerate(rows)})


def _searcher(run_dir: Path, split: str, gallery: Gallery) -> Any:
    from ofgr_core.index import build_index, load_index

    folder = RunFolder(run_dir).index_dir(split)
    if (folder / "index.json").is_file():
        idx = load_index(folder)
        if idx.ntotal == len(gallery.rows):
            return idx
    return build_index(np.ascontiguousarray(gallery.embeddings), ids=np.arange(len(gallery.rows)))


@functools.lru_cache(maxsize=2)
def _load_model(run_dir: str, mtime: float) -> tuple[Any, Any, Any]:
    """The run's best (else last) checkpoint as an embedding model + eval transform (cached per run)."""
    import torch

    from ofgr_core.config import load_config
    from ofgr_core.models import create_model, create_transforms
    from ofgr_core.train.checkpoint import load_checkpoint

    rd = RunFolder(run_dir)
    cfg = load_config(rd.config)
    ckpt = next((p for p in (rd.checkpoint("best"), rd.checkpoint("last")) if p.is_file()), None)
    if ckpt is None:
        raise NotFoundError(f"{rd.run_id}: no checkpoint to embed a new image with")
    model = create_model(cfg.model.model_copy(update={"pretrained": False}), image_size=cfg.data.image_size)
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    model.eval()
    return model, create_transforms(model, train=False), torch.device("cpu")


def embed_image(run_dir: Path, image_path: str) -> np.ndarray:
    import torch
    from PIL import Image

    p = Path(image_path).expanduser()
    if not p.is_file():
        raise NotFoundError(f"{p}: image not found")
    try:
        with Image.open(p) as im:
            img = im.convert("RGB")
    except Exception as e:
        raise DataError(f"{p}: cannot read image ({type(e).__name__})") from None
    ckpts = [RunFolder(run_dir).checkpoint(n) for n in ("best", "last")]
    mtime = max((c.stat().st_mtime for c in ckpts if c.is_file()), default=0.0)
    model, tf, device = _load_model(str(run_dir.resolve()), mtime)
    with torch.no_grad():
        emb = model(tf(img).unsqueeze(0).to(device))
    return torch.nn.functional.normalize(emb.float(), dim=1).numpy()


def query_run(
    run_dir: str | Path,
    *,
    item_id: str | None = None,
    image_path: str | None = None,
    text: str | None = None,
    k: int = 10,
    split: str = "unseen",
) -> QueryResult:
    """Rank the ``split`` gallery of a run for one query (exactly one of item_id, image_path, text)."""
    run_dir = Path(run_dir)
    if sum(x is not None for x in (item_id, image_path, text)) != 1:
        raise ConfigError("give exactly one of an item id, an image path, or a text query")
    if k < 1:
        raise ConfigError(f"k={k}: must be at least 1")
    if text is not None:
        from ofgr_core.config import load_config

        cfg = load_config(RunFolder(run_dir).config)
        raise ConfigError(
            f"text queries need a CLIP run (model.kind=clip); {run_dir.name} is {cfg.model.kind}:{cfg.model.name}"
        )
    gallery = load_gallery(run_dir, split)
    self_row: int | None = None
    if item_id is not None:
        if item_id not in gallery.row_of:
            raise NotFoundError(f"item {item_id!r} is not in {run_dir.name}'s {split} embeddings")
        self_row = gallery.row_of[item_id]
        q = np.asarray(gallery.embeddings[self_row : self_row + 1], dtype=np.float32)
        qrow = gallery.rows[self_row]
        desc, q_fine, q_coarse = f"item {item_id}", qrow.get("fine"), qrow.get("coarse")
    else:
        assert image_path is not None
        # an image that is in the gallery is matched by path so its labels are known and it is not its own hit
        resolved = str(Path(image_path).expanduser().resolve())
        self_row = next((i for i, r in enumerate(gallery.rows) if r["path"] == resolved), None)
        q = embed_image(run_dir, image_path)
        desc = f"image {image_path}"
        q_fine = gallery.rows[self_row].get("fine") if self_row is not None else None
        q_coarse = gallery.rows[self_row].get("coarse") if self_row is not None else None
    index = _searcher(run_dir, split, gallery)
    scores, rows = index.search(q, k + 1)
    hits: list[QueryHit] = []
    for score, row in zip(scores[0], rows[0], strict=True):
        if row < 0 or row == self_row or len(hits) == k:
            continue
        r = gallery.rows[int(row)]
        hits.append(QueryHit(
            rank=len(hits) + 1,
            id=r["id"],
            path=r["path"],
            score=float(score),
            fine=r.get("fine", ""),
            coarse=r.get("coarse", ""),
            hit_fine=(r.get("fine") == q_fine) if q_fine is not None else None,
            hit_coarse=(r.get("coarse") == q_coarse) if q_coarse is not None else None,
        ))
    return QueryResult(desc, split, hits, q_fine, q_coarse, index.info())
