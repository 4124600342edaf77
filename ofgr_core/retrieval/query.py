"""Query a run's stored embeddings: by dataset item, by image file, or by text (runs of a text-capable family).

The gallery is a split's stored embeddings (``RUN/embeddings/<split>.npy`` + ``.csv``); a persisted index in
``RUN/index/<split>/`` (``ofgr index build``) is used when present, an exact in-memory index otherwise.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ofgr_core.common.errors import ConfigError, DataError, NotFoundError
from ofgr_core.config import Config, model_family, text_families
from ofgr_core.runs.folder import RunFolder

if TYPE_CHECKING:  # torch is imported only by queries that run the encoder
    from ofgr_core.models.base import Encoder
    from ofgr_core.models.run_encoder import RunEncoder
    from ofgr_core.retrieval.index import SearchIndex


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
    space: str | None = None  # text queries: the image space searched (raw CLIP features or head embeddings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "split": self.split,
            "query_fine": self.query_fine,
            "query_coarse": self.query_coarse,
            "index": self.index,
            "space": self.space,
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
    from ofgr_core.embedding.stored import load_embedding_rows, load_embeddings

    emb = load_embeddings(npy)
    rows = load_embedding_rows(csv_path, len(emb))
    return Gallery(emb, rows, {r["id"]: i for i, r in enumerate(rows)})


def _searcher(run_dir: Path, split: str, gallery: Gallery) -> SearchIndex:
    from ofgr_core.retrieval.index import build_index, load_index

    folder = RunFolder(run_dir).index_dir(split)
    if (folder / "index.json").is_file():
        try:
            idx = load_index(folder)
        except DataError:  # a damaged saved index is derived data: search an exact one built from the embeddings
            idx = None
        if idx is not None and idx.ntotal == len(gallery.rows):
            return idx
    return build_index(np.ascontiguousarray(gallery.embeddings), ids=np.arange(len(gallery.rows)))


@functools.lru_cache(maxsize=2)
def _run_encoder(run_dir: str, mtime: float) -> RunEncoder:
    """The run's encoder on the CPU (``load_run_encoder``), cached per run and checkpoint time."""
    from ofgr_core.models.run_encoder import load_run_encoder

    return load_run_encoder(run_dir, "cpu")


def run_encoder(run_dir: str | Path) -> RunEncoder:
    """The run's encoder, rebuilt once per run and checkpoint modification time."""
    from ofgr_core.models.run_encoder import checkpoint_mtime

    path = Path(run_dir).resolve()
    return _run_encoder(str(path), checkpoint_mtime(path))


def embed_image(run_dir: Path, image_path: str) -> np.ndarray:
    import torch

    from ofgr_core.data.decode import open_rgb

    p = Path(image_path).expanduser()
    if not p.is_file():
        raise NotFoundError(f"{p}: image not found")
    try:
        img = open_rgb(p)
    except Exception as e:
        raise DataError(f"{p}: cannot read image ({type(e).__name__})") from None
    from ofgr_core.models.precision import autocast

    enc = run_encoder(run_dir)
    with torch.no_grad(), autocast(enc.device, enc.model.autocast_dtype):
        emb = enc.model.encode_images(enc.transform(img).unsqueeze(0).to(enc.device))
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
        return _query_text(run_dir, text, k=k, split=split)
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


# ------------------------------------------------------------------------------------------ text queries
def _run_config(run_dir: str | Path) -> Config:
    from ofgr_core.config import load_config

    rd = RunFolder(run_dir)
    if not rd.config.is_file():
        raise NotFoundError(f"{rd.run_id}: no config.yaml (not a run folder?)")
    return load_config(rd.config)


def run_supports_text(run_dir: str | Path) -> bool:
    """Whether a run's model can take text queries: its family's registry entry says so
    (``ModelFamily.supports_text``), read without building the model."""
    return model_family(_run_config(run_dir).model.kind).supports_text


def _text_space(run_dir: Path, split: str, cfg: Config) -> str:
    """``metrics.json``'s choice for the split (``text_to_image.space_for_free_text``), else the config's."""
    from ofgr_core.runs.validate import METRICS, read_run_json

    metrics, _ = read_run_json(RunFolder(run_dir).metrics, METRICS)  # strict, bounded, typed: None if damaged
    block = metrics.get(split) if isinstance(metrics, dict) else None
    t2i = block.get("text_to_image") if isinstance(block, dict) else None
    space = t2i.get("space_for_free_text") if isinstance(t2i, dict) else None
    if space in ("raw", "head"):
        return str(space)
    space = cfg.model.text_config().space
    return space if space in ("raw", "head") else "raw"


def _raw_gallery(model: Encoder, cfg: Config, gallery: Gallery) -> np.ndarray:
    """The gallery's raw tower features, from the shared feature cache (the tower runs only on misses)."""
    import torch

    from ofgr_core.embedding.features import default_cache_root, extract_features, open_feature_store
    from ofgr_core.models.factory import create_transforms

    root = Path(cfg.data.feature_cache).expanduser() if cfg.data.feature_cache else default_cache_root()
    store = open_feature_store(model, root)
    paths = [r["path"] for r in gallery.rows]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise NotFoundError(f"gallery image {missing[0]} not found ({len(missing)} missing); the raw tower "
                            "space needs the run's images")
    with torch.no_grad():
        feats, _ = extract_features(model, paths, create_transforms(model, train=False), "cpu", store=store)
    return feats


def _query_text(run_dir: Path, text: str, *, k: int, split: str) -> QueryResult:
    from ofgr_core.retrieval.text import encode_free_text

    if not run_supports_text(run_dir):
        cfg = _run_config(run_dir)
        kinds = " or ".join(text_families()) or "none is registered"
        raise ConfigError(f"{run_dir.name}: its {cfg.model.kind} model ({cfg.model.name}) has no text encoder; "
                          f"text queries need a run of a family with one (model.kind: {kinds})")
    if not text.strip():
        raise ConfigError("--text: empty query")
    cfg = _run_config(run_dir)
    gallery = load_gallery(run_dir, split)
    model = run_encoder(run_dir).model
    space = _text_space(run_dir, split, cfg)
    q = encode_free_text(model, text, space)
    if space == "raw":
        from ofgr_core.retrieval.index import build_index

        feats = _raw_gallery(model, cfg, gallery)
        index = build_index(np.ascontiguousarray(feats, dtype=np.float32), ids=np.arange(len(gallery.rows)))
    else:
        index = _searcher(run_dir, split, gallery)
    scores, rows = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
    hits = [
        QueryHit(rank=i + 1, id=gallery.rows[int(r)]["id"], path=gallery.rows[int(r)]["path"], score=float(s),
                 fine=gallery.rows[int(r)].get("fine", ""), coarse=gallery.rows[int(r)].get("coarse", ""),
                 hit_fine=None, hit_coarse=None)
        for i, (s, r) in enumerate(zip(scores[0], rows[0], strict=True)) if r >= 0
    ]
    return QueryResult(f"text {text!r}", split, hits, None, None, index.info(), space=space)
