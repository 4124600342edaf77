"""Retrieval and its evaluation: FAISS indexes, kNN with order-independent ties, metrics, sharding, coarse-first
retrieval, text -> image, and querying a run.
"""
