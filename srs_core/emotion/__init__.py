"""Sticker emotion: the SER30K teacher (ResNet50), its features, and the emotion anchors.

Modules: ``images`` (SER30K images and transforms), ``teacher`` (train/save/load),
``features`` (batched feature extraction) and ``anchors`` (k-means backends, ``build_anchors``).
"""
