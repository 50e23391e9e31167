"""Import TensorFlow and Keras once, without the C++ start-up lines they print before logging is configured.

TensorFlow 2.2x writes "All log messages before absl::InitializeLog()", oneDNN and CUDA-probe lines straight to
file descriptor 2, which ``TF_CPP_MIN_LOG_LEVEL`` cannot silence. They are captured while TensorFlow imports and
finds its devices, and shown only if that fails (or ``TLTOOL_TF_VERBOSE=1``).
"""
from __future__ import annotations

import os
import sys
import tempfile


def _import_quietly():
    if os.environ.get("TLTOOL_TF_VERBOSE") == "1":
        import keras
        import tensorflow as tf

        return tf, keras
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return tf, keras


tf, keras = _import_quietly()
