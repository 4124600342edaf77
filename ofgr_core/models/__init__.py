"""Encoders. ``base.py`` is the contract every family implements, ``factory.py`` builds the family that
``model.kind`` names (``create_model_and_transforms``), ``run_encoder.py`` rebuilds a run's encoder from its
folder; each family is one folder (``timm/``, ``clip/``, ...) whose ``config.py`` registers it.

This package's ``__init__`` imports nothing, so reading a config (which imports the families' ``config.py``)
never imports torch.
"""
