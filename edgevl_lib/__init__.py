"""EdgeVL workbench: adapt a large CLIP teacher to a small int8 image encoder for RGB and non-RGB sensors.

Modules, in the order of the method: config, data (+ render, loaders), teachers, curation, cache,
students, losses, quantize, train, evaluate, analysis, export, bench; run executes the notebooks.
"""

__version__ = "0.1.0"
