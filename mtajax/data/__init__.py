"""Datasets (embedded benchmark, NYUv2, Tiny-Taskonomy) and the shared input pipeline.

Submodules are imported explicitly so that `mtajax.data.preprocess` stays free of TFDS.
"""
