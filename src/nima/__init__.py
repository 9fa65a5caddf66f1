"""NIMA (Neural Image Assessment, Talebi & Milanfar 2018) on TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
