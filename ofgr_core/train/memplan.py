"""The memory plan: a run's peak memory, estimated before it starts and compared with what is available.

Legal settings can ask for more memory than the machine has (``data.image_size: 2048`` on the demo CNN wants
~80 GiB for one training batch; ``sampler.k: 5000`` a batch of 40 000 images). Without a plan the allocator
fails mid-run with a C++ traceback, or the kernel's OOM killer ends the process (and others on the box).

The estimate comes from the model itself: one forward pass on PyTorch's ``meta`` device (shapes, no storage;
milliseconds, no memory) records every tensor autograd saves for the backward pass and the largest single
activation. Per image these scale linearly with the batch, so

- a training step needs ``batch x (saved activations + 2 x largest activation + input)`` plus gradients and
  optimizer state of the trainable parameters (AdamW keeps two moments, SGD one) and, on the GPU, the weights;
- an embedding batch (evaluation, validation, frozen-tower features) needs
  ``eval batch x (input + 3 x largest activation)`` plus, on the GPU, the weights;
- a run that trains on images validates every epoch in the same process, while the allocator still holds what
  the training steps used (glibc's heap on the CPU, PyTorch's caching allocator on a GPU), so its peak is the
  training step plus an embedding batch's activations (``MemoryPlan.peak_bytes``). Measured on the CPU with glibc's
  defaults, the train stage (steps and validation) of ResNet-50 and EfficientNet-B0 at 224 px, batches of 32,
  grew 1.34-1.47x the larger of the two estimates and 0.73-0.82x their sum (docs/benchmarks.md).

The budget is :func:`ofgr_core.common.memory.device_budget`: free RAM, a cgroup limit or ``ulimit -v`` on the
CPU (the smallest), free memory on a GPU; ``OFGR_MEMORY_LIMIT`` caps it. A training step over the budget is
refused with one line naming the settings and the figures; an embedding batch over what is left beside it is
lowered to one that fits (embeddings do not depend on the batch in eval mode) and the run says so.
``train.memory_check: warn`` turns refusals into warnings, ``off`` skips the plan. What it leaves out: the
loss's class weights (small), allocator fragmentation, cuDNN workspaces and the data loader's decoded images; it
is an estimate, not a bound.

On the CPU, where the ``ofgr`` command has glibc's malloc keep freed memory for reuse (faster forward passes, at
the price of fragmentation: ``common.memory.keep_freed_memory``), the plan keeps that setting only while
``KEPT_PEAK_FACTOR`` times its peak estimate fits the budget, and otherwise puts glibc's defaults back for the
run and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ofgr_core.common.errors import ConfigError
from ofgr_core.common.memory import (
    KEPT_PEAK_FACTOR,
    MemoryBudget,
    device_budget,
    gib,
    keeping_freed_memory,
    stop_keeping_freed_memory,
)

if TYPE_CHECKING:
    import torch

    from ofgr_core.config import Config

FLOAT_BYTES = 4  # inputs, gradients and optimizer states are float32


@dataclass(frozen=True)
class Footprint:
    """Bytes of one forward pass over one image: saved for backward, and the largest single activation."""

    saved: int
    largest: int


def forward_footprint(model: torch.nn.Module, image_size: int, *, train: bool) -> Footprint | None:
    """Per-image activation bytes of ``model`` at ``image_size``, measured on the ``meta`` device.

    Returns None when the model cannot run on ``meta`` (an operator without a meta kernel); the plan then
    says it could not estimate, and the run goes on.
    """
    import torch
    from torch.func import functional_call

    params = {n: torch.empty_like(p, device="meta").requires_grad_(train and p.requires_grad)
              for n, p in model.named_parameters()}
    buffers = {n: torch.empty_like(b, device="meta") for n, b in model.named_buffers()}
    param_ids = {id(v) for v in params.values()}
    saved: dict[int, int] = {}
    largest = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in param_ids:
            saved[id(t)] = t.numel() * t.element_size()
        return t

    def watch(_: Any, __: Any, out: Any) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    hooks = [m.register_forward_hook(watch) for m in model.modules()]
    was_training = model.training
    x = torch.empty(2, 3, image_size, image_size, device="meta")  # 2: BatchNorm refuses one value per channel
    try:
        model.train(train)
        if train:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                functional_call(model, {**params, **buffers}, (x,))
        else:
            with torch.no_grad():
                functional_call(model, {**params, **buffers}, (x,))
    except Exception:  # an operator without a meta kernel: no estimate, never a failed run
        return None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Footprint(sum(saved.values()) // 2, largest[0] // 2)


@dataclass
class MemoryPlan:
    """What the plan found; ``to_dict`` goes into ``metrics["memory_plan"]``."""

    budget: MemoryBudget | None
    train_bytes: int | None = None  # peak of one training step (None: no image batch is trained)
    eval_bytes: int | None = None  # peak of one embedding batch at ``eval_batch``
    eval_batch: int | None = None
    peak_bytes: int | None = None  # the run's peak: the training step and, beside it, an embedding batch
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "available_bytes": self.budget.bytes if self.budget else None,
            "limited_by": self.budget.limited_by if self.budget else None,
            "train_step_bytes": self.train_bytes,
            "embed_batch_bytes": self.eval_bytes,
            "eval_batch_size": self.eval_batch,
            "peak_bytes": self.peak_bytes,
        }


def train_batch_size(cfg: Any) -> tuple[int, str]:
    """Images in one training batch per rank, and the settings that make it, for messages."""
    s = cfg.sampler
    n = s.coarse_per_batch * s.fine_per_coarse * s.k
    why = (f"sampler.coarse_per_batch {s.coarse_per_batch} x sampler.fine_per_coarse {s.fine_per_coarse} x "
           f"sampler.k {s.k}")
    if s.coarse_only_k:
        n += s.coarse_per_batch * s.coarse_only_k
        why += f" + coarse_per_batch x sampler.coarse_only_k {s.coarse_only_k}"
    return n, why


def plan_run(cfg: Config, model: torch.nn.Module, device: torch.device, *, image_size: int, trains_images: bool,
             max_rows: int | None = None, budget: MemoryBudget | None = None) -> MemoryPlan:
    """Estimate the run's peak memory and check it against the budget (see the module docstring).

    Lowers ``cfg.train.eval_batch_size`` in place when only the embedding batch is too large.

    Args:
        cfg: the run's config (``train.memory_check``, sampler, ``train.eval_batch_size``, optimizer).
        model: the encoder, built (its parameters are counted; nothing is allocated).
        device: where the run computes.
        image_size: the input resolution.
        trains_images: whether training runs the encoder on image batches (end-to-end fine-tuning).
        max_rows: the most images embedded at once (the dataset's size): no embedding batch is larger.
        budget: the memory available (default: :func:`~ofgr_core.common.memory.device_budget`).

    Raises:
        ConfigError: a training step, or a single embedded image, needs more than the budget
            (``train.memory_check: check``).
    """
    budget = budget if budget is not None else device_budget(device)
    plan = _plan(cfg, model, device, image_size=image_size, trains_images=trains_images, max_rows=max_rows,
                 budget=budget)
    need = plan.peak_bytes or plan.train_bytes or 0
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if on_cpu and budget is not None and keeping_freed_memory() and need * KEPT_PEAK_FACTOR > budget.bytes:
        stop_keeping_freed_memory()
        plan.notes.append(f"memory plan: ~{gib(need)} at the peak, {budget.describe()}: glibc's malloc keeps its "
                          f"defaults for this run (kept freed memory can take the peak to ~{KEPT_PEAK_FACTOR:g}x)")
    return plan


def _plan(cfg: Config, model: torch.nn.Module, device: torch.device, *, image_size: int, trains_images: bool,
          max_rows: int | None, budget: MemoryBudget | None) -> MemoryPlan:
    mode = getattr(cfg.train, "memory_check", "check")
    plan = MemoryPlan(budget)
    if mode == "off":
        return plan
    if budget is None:
        plan.notes.append(f"memory plan: free memory on {device} is unknown; not checked")
        return plan
    on_gpu = getattr(device, "type", str(device)) == "cuda"
    # on the CPU the weights are already allocated (the model is built), so they are not in the budget
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) if on_gpu else 0
    image_bytes = 3 * image_size * image_size * FLOAT_BYTES
    where = f"{budget.describe()} on {device}"

    if trains_images:
        fp = forward_footprint(model, image_size, train=True)
        if fp is None:
            plan.notes.append("memory plan: this model cannot be traced on the meta device; training memory "
                              "not estimated")
        else:
            batch, why = train_batch_size(cfg)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * FLOAT_BYTES
            states = 2 if cfg.train.optimizer == "adamw" else 1
            workers = 0 if on_gpu else cfg.data.num_workers
            need = (weights + trainable * (1 + states)
                    + batch * (fp.saved + 2 * fp.largest + image_bytes * (1 + 2 * workers)))
            plan.train_bytes = need
            if need > budget.bytes:
                msg = (f"memory plan: a training step needs ~{gib(need)} (a batch of {batch} images = {why}, "
                       f"at data.image_size {image_size}) but {where}; lower sampler.k or data.image_size "
                       "(train.memory_check: warn runs it anyway)")
                if mode == "check":
                    raise ConfigError(msg)
                plan.warnings.append(msg)

    fp = forward_footprint(model, image_size, train=False)
    if fp is None:
        plan.notes.append("memory plan: embedding memory not estimated (the model cannot be traced on meta)")
        return plan
    per_image = image_bytes + 3 * fp.largest
    requested = int(cfg.train.eval_batch_size)
    used = min(requested, max_rows) if max_rows else requested
    # validation embeds while the training step's memory is still held (it includes the weights on a GPU)
    held = plan.train_bytes or weights
    beside = f" beside the training step's ~{gib(held)}" if plan.train_bytes else ""
    extra = 0 if plan.train_bytes else weights  # what a message names: the batch alone beside a training step
    plan.eval_batch, plan.eval_bytes = requested, weights + used * per_image
    plan.peak_bytes = held + used * per_image
    if plan.peak_bytes <= budget.bytes:
        return plan
    fits = (budget.bytes - held) // per_image if budget.bytes > held else 0
    if fits < 1:
        msg = (f"memory plan: embedding one image at data.image_size {image_size} needs ~{gib(extra + per_image)}"
               f"{beside} but {where}; lower data.image_size" + (" or sampler.k" if plan.train_bytes else ""))
        if mode == "check":
            raise ConfigError(msg)
        plan.warnings.append(msg)
        return plan
    lowered = 1 << (int(fits).bit_length() - 1)  # a power of two at most what fits
    cfg.train.eval_batch_size = lowered
    plan.eval_batch, plan.eval_bytes = lowered, weights + lowered * per_image
    plan.peak_bytes = held + lowered * per_image
    plan.warnings.append(f"memory plan: train.eval_batch_size {requested} would need ~"
                         f"{gib(extra + used * per_image)}{beside} but {where}; lowered to {lowered} for this run "
                         "(embeddings do not depend on it)")
    return plan
