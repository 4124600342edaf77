"""The timm family: CNN backbones (pooled features) -> embedding neck, and ofgr's tiny CNN."""
