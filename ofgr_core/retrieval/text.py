"""Text -> image retrieval for encoders with text (``encoder.supports_text``): prompts, ensembling, metrics.

Zero-shot text -> image: every class name becomes a query (its prompt templates filled in, encoded, and
averaged), the split's images are the gallery, and the numbers come from the same
``ofgr_core.retrieval.evaluate.evaluate_retrieval`` as image -> image, at the fine level (``model.text.templates`` with
``{fine}`` and ``{coarse}``, one query per fine class) and at the coarse level (``model.text.coarse_templates``
with ``{coarse}``, one query per coarse class).

Two image spaces are measured, because a trained head moves the images away from where CLIP put the text:

- ``raw``: text embeddings against the raw CLIP image features (the cached tower features);
- ``head``: text embeddings passed through the trained head against the head's image embeddings.

Free-text queries (``ofgr query RUN --text``) search the space ``model.text.space`` names; ``auto`` picks the
one with the higher fine Recall@1 (then coarse Recall@1; ties go to ``raw``) on the **seen validation
classes** only, never on unseen classes (which would tune on the test set). Without validation data, ``raw``.

API::

    build_prompts(templates, *, fine=None, coarse=None) -> list[str]
    encode_prompt_sets(encoder, prompt_sets, *, batch_size=256) -> np.ndarray  # (len(prompt_sets), D)
    class_text_embeddings(encoder, class_names, labels, text_cfg) -> TextQueries
    evaluate_text_to_image(
        encoder, raw_features, embeddings, labels, class_names, text_cfg, eval_cfg=None, *,
        val=None, level_names=("fine", "coarse"), seed=0,
    ) -> dict  # {"raw": {...}, "head": {...} | None, "space_for_free_text": "raw" | "head", "selection": {...}}
    encode_free_text(encoder, text, space) -> np.ndarray  # (1, D) query in the chosen space

``raw_features`` are ``(N, encoder.feature_dim)``, ``embeddings`` ``(N, encoder.embed_dim)``, ``labels``
``(N, L)`` integer codes whose names are ``class_names[level][code]`` (``Hierarchy.classes``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ofgr_core.common.errors import ConfigError, DataError
from ofgr_core.config import EvalConfig, TextConfig
from ofgr_core.retrieval.index import unit_rows

if TYPE_CHECKING:
    from ofgr_core.models.base import Encoder

SPACES = ("raw", "head")


def build_prompts(templates: Sequence[str], *, fine: str | None = None, coarse: str | None = None) -> list[str]:
    """Fill ``{fine}`` / ``{coarse}`` into every template.

    Raises:
        ConfigError: a template names a placeholder other than ``{fine}``/``{coarse}``, or one not given.
    """
    values = {k: v for k, v in (("fine", fine), ("coarse", coarse)) if v is not None}
    out = []
    for t in templates:
        try:
            out.append(t.format(**values))
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"model.text template {t!r}: {e!r} is not available here; use {{fine}} and {{coarse}} in "
                "model.text.templates and only {coarse} in model.text.coarse_templates"
            ) from None
    return out


def fine_only_templates(templates: Sequence[str]) -> list[str]:
    """The templates that need no ``{coarse}``: single-level data has no parent class to name.

    Filling ``{coarse}`` with the fine name would double it ("a photo of a X, a type of X.").

    Raises:
        ConfigError: every template names ``{coarse}``.
    """
    kept = [t for t in templates if "{coarse}" not in t]
    if not kept:
        raise ConfigError("model.text.templates: every template names {coarse}, but the data has one label level; "
                          "add a template with only {fine}, e.g. 'a photo of a {fine}.'")
    return kept


def encode_prompt_sets(encoder: Encoder, prompt_sets: Sequence[Sequence[str]], *, batch_size: int = 256) -> np.ndarray:
    """One ensembled text embedding per prompt set: the mean of its L2-normalised prompt embeddings,
    renormalised (CLIP's prompt ensembling). Returns ``(len(prompt_sets), D)`` float32, in the raw CLIP space.
    """
    import torch

    flat = [p for ps in prompt_sets for p in ps]
    if not flat:
        return np.empty((len(prompt_sets), 0), np.float32)
    chunks = []
    with torch.no_grad():
        for a in range(0, len(flat), batch_size):
            chunks.append(encoder.encode_text(encoder.tokenize(flat[a : a + batch_size])).float().cpu().numpy())
    emb = unit_rows(np.concatenate(chunks), np.float32)
    out = np.empty((len(prompt_sets), emb.shape[1]), np.float32)
    row = 0
    for i, ps in enumerate(prompt_sets):
        if not ps:
            raise ConfigError("model.text: a class has no prompt (empty template list)")
        out[i] = emb[row : row + len(ps)].mean(0)
        row += len(ps)
    return unit_rows(out, np.float32)


@dataclass
class TextQueries:
    """Class-name queries of one label level: ``embeddings`` (raw CLIP space), their ``labels`` (codes in the
    level's column) and the ``names`` of their classes."""

    embeddings: np.ndarray
    labels: np.ndarray
    names: list[str]


def class_text_embeddings(
    encoder: Encoder, class_names: Sequence[Sequence[str]], labels: np.ndarray, text_cfg: TextConfig,
) -> dict[str, TextQueries]:
    """Prompt-ensembled queries for the classes present in ``labels``: ``{"fine": ..., "coarse": ...}``.

    A fine query fills ``text_cfg.templates`` with the fine name and its coarse parent's name (the parent
    read from ``labels``); a coarse query fills ``text_cfg.coarse_templates``. Names are shown to the text
    encoder with underscores as spaces.
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    out: dict[str, TextQueries] = {}
    fine_codes = np.unique(labels[:, 0])
    fine_codes = fine_codes[fine_codes >= 0]  # coarse-only images (fine id -1) are gallery items, not queries
    has_coarse = labels.shape[1] > 1 and len(class_names) > 1

    def name(level: int, code: int) -> str:
        return str(class_names[level][int(code)]).replace("_", " ")

    parent: dict[int, int] = {}
    if has_coarse:
        for f, c in zip(labels[:, 0], labels[:, 1], strict=True):
            if f >= 0:
                parent.setdefault(int(f), int(c))
    if has_coarse:
        sets = [build_prompts(text_cfg.templates, fine=name(0, f), coarse=name(1, parent[int(f)])) for f in fine_codes]
    else:
        sets = [build_prompts(fine_only_templates(text_cfg.templates), fine=name(0, f)) for f in fine_codes]
    out["fine"] = TextQueries(encode_prompt_sets(encoder, sets), fine_codes.astype(np.int64),
                              [str(class_names[0][int(f)]) for f in fine_codes])
    if has_coarse:
        coarse_codes = np.unique(labels[:, 1])
        coarse_codes = coarse_codes[coarse_codes >= 0]
        sets = [build_prompts(text_cfg.coarse_templates, coarse=name(1, c)) for c in coarse_codes]
        out["coarse"] = TextQueries(encode_prompt_sets(encoder, sets), coarse_codes.astype(np.int64),
                                    [str(class_names[1][int(c)]) for c in coarse_codes])
    return out


def _to_head(encoder: Encoder, text_emb: np.ndarray) -> np.ndarray:
    """Text embeddings through the trained head (what the head does to image features, applied to text)."""
    from ofgr_core.models.base import apply_head

    return apply_head(encoder, text_emb)


def has_head(encoder: Encoder) -> bool:
    """True when the encoder's head changes the space (an identity head gives ``head`` == ``raw``)."""
    return encoder.has_head


def _space_block(
    queries: dict[str, TextQueries], gallery: np.ndarray, labels: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray], level_names: Sequence[str], eval_cfg: EvalConfig, seed: int,
    per_query: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    from ofgr_core.retrieval.evaluate import evaluate_retrieval

    block: dict[str, Any] = {"n_queries": {}, "n_gallery": int(len(gallery)), "ci95": {}, "per_class": {}}
    for level, q in queries.items():
        if len(q.labels) == 0:
            continue
        col = 0 if level == "fine" else 1
        q_emb = transform(q.embeddings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few queries: the bootstrap may warn about degenerate resamples
            res = evaluate_retrieval(
                q_emb, gallery, q.labels, labels[:, col], level_names=(level_names[col],), cfg=eval_cfg, seed=seed,
                # negative query ids never collide with the gallery's row ids: no query excludes an image
                query_ids=-1 - np.arange(len(q.labels)), gallery_ids=np.arange(len(gallery)),
            )
        name = level_names[col]
        block[level] = res.block.get(name, {})
        block["ci95"][level] = res.block.get("ci95", {}).get(name, {})
        block["n_queries"][level] = int(res.block.get("n_queries", len(q.labels)))
        if level == "fine":
            values = res.per_query.get(name, {})
            rows = -1 - np.asarray(res.query_ids, dtype=np.int64)
            hit = values.get("recall@1")
            if hit is not None:
                block["per_class"] = {q.names[int(r)]: float(h) for r, h in zip(rows, hit, strict=True)}
            if per_query is not None and len(rows):
                # one query per fine class, identified by its name: comparable between runs on one split
                per_query["ids"] = np.asarray([q.names[int(r)] for r in rows]).astype(str)
                per_query.update({f"fine_{metric}": np.asarray(v, dtype=np.float64) for metric, v in values.items()})
    return block


def evaluate_text_to_image(
    encoder: Encoder,
    raw_features: np.ndarray,
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[Sequence[str]],
    text_cfg: TextConfig,
    eval_cfg: EvalConfig | None = None,
    *,
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    level_names: Sequence[str] = ("fine", "coarse"),
    seed: int = 0,
    per_query: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Zero-shot text -> image retrieval of one split, in the raw CLIP space and through the head.

    Args:
        encoder: an encoder with ``supports_text`` (its head is the trained one).
        raw_features: ``(N, feature_dim)`` tower features of the split's images (the gallery, raw space).
        embeddings: ``(N, embed_dim)`` head embeddings of the same images (the gallery, head space).
        labels: ``(N, L)`` integer labels, column 0 fine, column 1 coarse.
        class_names: per level, the class names indexed by label code (``Hierarchy.classes``).
        text_cfg: ``model.text`` (templates, coarse templates, space).
        eval_cfg: cut-offs and bootstrap (``eval``); the default ``EvalConfig`` otherwise.
        val: ``(raw_features, embeddings, labels)`` of the seen validation images, used only to choose the
            free-text space when ``text_cfg.space`` is ``auto``.
        level_names: label column names.
        seed: bootstrap seed.
        per_query: when given, filled with ``{space: {"ids": fine class names, "fine_<metric>": values}}``, the
            per-query values of the fine-level queries (one per class) for paired tests between runs
            (``save_text_per_query``). Coarse queries (one per coarse class) are too few to pair.

    Returns:
        ``{"raw": B, "head": B | None, "space_for_free_text": "raw"|"head", "selection": {...}}`` where each
        ``B`` is ``{"fine": metrics, "coarse": metrics, "ci95": {...}, "n_queries": {"fine", "coarse"},
        "n_gallery", "per_class": {fine name: recall@1}}`` with the image -> image metric keys
        (``recall@K``, ``map@r``, ...). ``head`` is ``None`` for an encoder without a head (``head: none``).

    Raises:
        ConfigError: the encoder has no text tower.
        DataError: shapes do not match.
    """
    if not encoder.supports_text:
        encoder.tokenize([])  # raises the ConfigError that names the text-capable families
    eval_cfg = eval_cfg or EvalConfig()
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    n = len(labels)
    if len(raw_features) != n or len(embeddings) != n:
        raise DataError(f"text -> image: {len(raw_features)} raw features and {len(embeddings)} embeddings for "
                        f"{n} labelled images")
    headed = has_head(encoder)
    queries = class_text_embeddings(encoder, class_names, labels, text_cfg)
    pq: dict[str, dict[str, np.ndarray]] = {"raw": {}, "head": {}}
    raw_block = _space_block(queries, np.asarray(raw_features, np.float32), labels, lambda x: x, level_names,
                             eval_cfg, seed, pq["raw"])
    head_block = (_space_block(queries, np.asarray(embeddings, np.float32), labels,
                               lambda x: _to_head(encoder, x), level_names, eval_cfg, seed, pq["head"])
                  if headed else None)
    if per_query is not None:
        per_query.update({space: arrays for space, arrays in pq.items() if arrays})
    space, selection = choose_space(encoder, text_cfg, class_names, val, level_names=level_names, seed=seed)
    return {"raw": raw_block, "head": head_block, "space_for_free_text": space, "selection": selection}


def save_text_per_query(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    """Write one space's per-query text -> image values (``evaluate_text_to_image(per_query=...)``) as the
    ``.npz`` ``ofgr compare`` pairs runs with (``ids`` + ``fine_<metric>``), atomically."""
    from ofgr_core.common.atomic import atomic_writer

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # mypy: **arrays may fill allow_pickle


def choose_space(
    encoder: Encoder, text_cfg: TextConfig, class_names: Sequence[Sequence[str]],
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None, *, level_names: Sequence[str] = ("fine", "coarse"),
    seed: int = 0,
) -> tuple[str, dict[str, Any]]:
    """The image space free-text queries search, and why (``{"by": ..., "val": {space: [fine R@1, coarse R@1]}}``).

    ``model.text.space`` raw/head is taken as given (head falls back to raw for an encoder without a head);
    ``auto`` compares the spaces on the seen validation classes only.
    """
    if not has_head(encoder):
        return "raw", {"by": "no head: the two spaces are the same"}
    if text_cfg.space != "auto":
        return text_cfg.space, {"by": "model.text.space"}
    if val is None or len(val[2]) < 2:
        return "raw", {"by": "auto: no validation images, raw CLIP space"}
    v_raw, v_emb, v_lab = (np.asarray(a) for a in val)
    v_lab = v_lab[:, None] if v_lab.ndim == 1 else v_lab
    cfg = EvalConfig(ks=[1], bootstrap=0)
    queries = class_text_embeddings(encoder, class_names, v_lab, text_cfg)
    scores = {}
    for space, gallery, tf in (("raw", v_raw, lambda x: x), ("head", v_emb, lambda x: _to_head(encoder, x))):
        b = _space_block(queries, np.asarray(gallery, np.float32), v_lab, tf, level_names, cfg, seed)
        scores[space] = [float(b.get(lv, {}).get("recall@1") or 0.0) for lv in ("fine", "coarse") if lv in queries]
    best = "head" if scores["head"] > scores["raw"] else "raw"  # lexicographic: fine R@1, then coarse R@1
    return best, {"by": "auto: higher fine (then coarse) text->image R@1 on seen validation classes",
                  "val": scores}


def encode_free_text(encoder: Encoder, text: str, space: str) -> np.ndarray:
    """A free-text query as a ``(1, D)`` unit vector in ``space`` (``raw`` or ``head``)."""
    if space not in SPACES:
        raise ConfigError(f"text space {space!r} is not one of {', '.join(SPACES)}")
    if not text.strip():
        raise ConfigError("empty text query")
    q = encode_prompt_sets(encoder, [[text]])
    return _to_head(encoder, q) if space == "head" else q
