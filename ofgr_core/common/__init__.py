"""Mechanisms every capability shares: errors, registries, atomic writes, safe text I/O, disk space, environment
info, the GPU probe.
"""
