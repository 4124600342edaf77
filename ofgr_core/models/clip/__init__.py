"""The CLIP family (OpenCLIP): frozen towers + head, weights sources, contrastive pretraining, its architecture
configs.
"""
