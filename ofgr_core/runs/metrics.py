"""The ``metrics.json`` document of a run: its schema, in one place (docs/run-folder.md points here).

The pipeline (``ofgr_core.workflows.pipeline``) builds a :class:`RunMetrics` and writes ``to_dict()``; readers
(run listings, reports, compare, the TUI) read the JSON back, through :meth:`RunMetrics.from_dict` or the key
constants below. Blocks are pydantic models that keep unknown keys (``extra="allow"``), so an older or newer
file still reads; every block a reader needs is checked there.

Top level::

    schema_version, run_id, name,
    model    {kind, name, family, embed_dim, feature_dim, head, tower_frozen, supports_text, params,
              trainable_params, image_size, provenance}
    data     {dataset, n_images, n_unreadable, n_fine_train, n_fine_val, n_fine_seen, n_fine_unseen,
              split_protocol}
    train    {epochs, best_epoch, val_recall@1, selection, seconds, images_seen, forward_gflops_per_image,
              train_pflops, device, world_size}
    fit      {strategy, seconds, features?}
    timings  {stage: seconds}
    warnings [one line each]                (degenerate embeddings, a lowered eval batch: docs/reliability.md)
    memory_plan {available_bytes, limited_by, train_step_bytes, embed_batch_bytes, eval_batch_size, peak_bytes}
    compute  {...}                          (ofgr_core.runs.compute, added when the run ends)
    unseen / seen  {fine: {...}, coarse: {...}, ci95, n_queries, ..., text_to_image?}
                                            (one block per evaluated split: ofgr_core.retrieval.evaluate)

``train.val_recall@1`` is the kept model's seen-validation Recall@1, ``null`` when the run had no validation
images; ``train.selection`` says how the kept epoch (``best_epoch``) was chosen.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2  # 2: train.selection, val_recall@1 null without validation, model.provenance

# top-level keys
SCHEMA = "schema_version"
MODEL, DATA, TRAIN, FIT, TIMINGS, COMPUTE = "model", "data", "train", "fit", "timings", "compute"
SPLITS = ("unseen", "seen")  # evaluated split blocks, at the top level
# keys inside blocks that readers look up
VAL_RECALL_AT_1 = "val_recall@1"
SELECTION = "selection"
TEXT_TO_IMAGE = "text_to_image"
SELECTED_UNTRAINED = "untrained (nothing to train)"


class _Block(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ModelBlock(_Block):
    """The encoder as evaluated. ``provenance`` is ``Encoder.provenance()``: the resolved weights source and
    file, the hash of the tower's weights, its activations, preprocessing and forward precision."""

    kind: str
    name: str
    family: str
    embed_dim: int
    feature_dim: int
    head: str  # the head module's class (EmbeddingNeck, MLPHead, Identity)
    tower_frozen: bool
    supports_text: bool
    params: int
    trainable_params: int
    image_size: int
    provenance: dict[str, Any] = Field(default_factory=dict)


class DataBlock(_Block):
    dataset: str
    n_images: int
    n_unreadable: int
    n_fine_train: int
    n_fine_val: int
    n_fine_seen: int
    n_fine_unseen: int
    split_protocol: str


class TrainBlock(_Block):
    """Training as it ran; ``best_epoch`` (1-based, 0 when untrained) is the epoch whose model was evaluated."""

    epochs: int
    best_epoch: int
    val_recall_at_1: float | None = Field(None, alias=VAL_RECALL_AT_1)
    selection: str
    seconds: float
    images_seen: int
    forward_gflops_per_image: float | None = None
    train_pflops: float | None = None
    device: str
    world_size: int = 1

    def describe(self) -> str:
        """``kept epoch 3 (best seen-validation recall@1: 51.0%)``, for reports."""
        if self.selection == SELECTED_UNTRAINED:
            return "untrained"
        val = f": {100 * self.val_recall_at_1:.1f}%" if self.val_recall_at_1 is not None else ""
        return f"kept epoch {self.best_epoch} ({self.selection}{val})"


class FitBlock(_Block):
    strategy: str
    seconds: float = 0.0
    features: dict[str, Any] | None = None  # the feature stage's cache hits/computed, when the fit caches them


class RunMetrics(_Block):
    """The whole document; ``splits`` are the evaluated split blocks (written at the top level)."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    name: str
    model: ModelBlock
    data: DataBlock
    train: TrainBlock
    fit: FitBlock
    timings: dict[str, float] = Field(default_factory=dict)
    compute: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)  # results that finished but should not be trusted as is
    memory_plan: dict[str, Any] | None = None  # ofgr_core.train.memplan.MemoryPlan.to_dict()
    splits: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (aliases as keys, split blocks at the top level)."""
        doc = self.model_dump(mode="json", by_alias=True, exclude={"splits"})
        if doc.get(COMPUTE) is None:
            doc.pop(COMPUTE, None)
        doc.update(self.splits)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RunMetrics:
        """Read a metrics.json document back.

        Raises:
            pydantic.ValidationError: a block is missing or has the wrong type.
        """
        splits = {k: v for k, v in doc.items() if k in SPLITS and isinstance(v, dict)}
        return cls.model_validate({**{k: v for k, v in doc.items() if k not in SPLITS}, "splits": splits})


def describe_training(train: dict[str, Any]) -> str:
    """How a run's evaluated epoch was kept, for reports: ``kept epoch 3 (best seen-validation recall@1:
    51.0%)``. Documents older than schema 2 (no ``selection``) show their best epoch, and their validation
    score only when it is one (they stored -loss there for runs without validation)."""
    if isinstance(train.get(SELECTION), str):
        try:
            return TrainBlock.model_validate(train).describe()
        except ValueError:
            pass
    val = train.get(VAL_RECALL_AT_1)
    shown = f", seen-val R@1 {100 * val:.1f}%" if isinstance(val, (int, float)) and 0.0 <= val <= 1.0 else ""
    return f"best epoch {train.get('best_epoch', '?')}{shown}"


def unseen_fine_recall_at_1(doc: dict[str, Any]) -> float | None:
    """``unseen.fine.recall@1`` of a metrics document (the headline number), or ``None``."""
    try:
        return float(doc["unseen"]["fine"]["recall@1"])
    except (KeyError, TypeError, ValueError):
        return None


__all__ = [
    "COMPUTE", "DATA", "FIT", "MODEL", "SCHEMA", "SCHEMA_VERSION", "SELECTED_UNTRAINED", "SELECTION", "SPLITS",
    "TEXT_TO_IMAGE", "TIMINGS", "TRAIN", "VAL_RECALL_AT_1", "DataBlock", "FitBlock", "ModelBlock", "RunMetrics",
    "TrainBlock", "describe_training", "unseen_fine_recall_at_1",
]
