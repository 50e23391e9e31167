"""tltool: transfer learning on your own photos with TensorFlow/Keras 3.

Feature extraction into linear classifiers, fine-tuning, and an honest report of validation accuracy.
Importing ``tltool`` is cheap: TensorFlow is only imported by the modules that need it.
"""
from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# Quiet TensorFlow's C++ start-up chatter and pin the Keras backend before anything imports them.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
