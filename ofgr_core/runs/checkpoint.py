"""Atomic checkpoints holding everything a run needs to continue exactly where it stopped.

Checkpoints hold tensors and plain data only (dicts, lists, tuples, str, int, float, bool, None), so they are
read with ``torch.load(weights_only=True)``: a file that pickles any other object (code to run, a numpy array)
is refused with a :class:`CheckpointError` before anything in it executes. RNG states are stored in that
plain form (numpy's MT19937 key as a list of ints, python's state as nested tuples of ints).
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ofgr_core.common.atomic import atomic_path
from ofgr_core.common.diskspace import ensure_free
from ofgr_core.common.errors import CheckpointError, NotFoundError


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain data only."""
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {"name": str(name), "key": [int(v) for v in key], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["name"], np.asarray(npst["key"], dtype=np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file in the same folder, then ``os.replace``: never a half-written file.

    The previous checkpoint stays in place until the new one is complete, so a full disk (``OSError``)
    leaves the last good checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the new file is written next to the old one before replacing it: its whole size must fit
    ensure_free(path, state_nbytes(state) + (1 << 20), f"checkpoint {path.name}")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def state_nbytes(obj: Any) -> int:
    """Bytes of tensor data in a (nested) checkpoint state: about the size ``torch.save`` will write."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *,
                    require: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, never executing code stored in it.

    ``require`` names keys the caller reads; ``model`` must then be a mapping of names to tensors. A valid
    torch file with other content (``{"weights": ...}``) is one line naming the file and the missing key.

    Raises:
        NotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a checkpoint of tensors and plain data (truncated, foreign, or
            a pickle of arbitrary objects): one line naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{p}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol N" for foreign files
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; the line naming the refused global or opcode is the useful one
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[-1] if lines else "")
        raise CheckpointError(
            f"{p}: refused to load: the file holds objects other than tensors and plain data ({detail[:200]}); "
            "only checkpoints written by ofgr are loaded"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, TypeError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__}: {msg})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: not an ofgr checkpoint (top level is {type(obj).__name__}, not a mapping)")
    missing = [k for k in require if k not in obj]
    if missing:
        raise CheckpointError(f"{p}: not an ofgr checkpoint (no {', '.join(repr(k) for k in missing)}; holds "
                              f"{', '.join(repr(str(k)) for k in list(obj)[:5]) or 'nothing'})")
    model = obj.get("model")
    if "model" in require and not (isinstance(model, dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items())):
        raise CheckpointError(f"{p}: not an ofgr checkpoint ('model' is not a mapping of names to tensors)")
    return obj
