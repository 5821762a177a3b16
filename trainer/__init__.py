"""hagview trainer: HAG+GR models, data readers, the training loop and the exporter.

This package is the base layer: the pipeline and the viewer import from it (input
preparation, size classes, bundles), never the other way round.
"""
