"""Sticker response selection ("Perceive before Respond") as a library.

`srs_core` holds all logic: data formats, object store, model, losses, training, evaluation and
the PyTorchJob launcher. The KFP components and pipelines are thin faces over it.
"""

__version__ = "0.1.0"
