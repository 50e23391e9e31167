"""Classic CNNs built from scratch (LeNet-5, AlexNet, VGG A-E, NiN, GoogLeNet, ResNet-18/34, MobileNet v1) and
the shape/parameter arithmetic of the CNN lectures.

Importing this package does not import TensorFlow: ``calc`` is plain Python; the nets register (and import
Keras) the first time the registry is asked for them.
"""
from __future__ import annotations

from .registry import INITIALIZERS, ArchSpec, build_arch, get_arch, list_archs, register_arch

__all__ = ["INITIALIZERS", "ArchSpec", "build_arch", "get_arch", "list_archs", "register_arch"]
