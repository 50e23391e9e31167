"""Weights and model files checked before a reader allocates what they declare (Keras reads each tensor and zip
member in whole, and refuses one only above 4 GiB). Imports no other tltool module but utils: the backbones, the
training loop and the Keras loader all call it."""
from __future__ import annotations

import io
import math
import os
import stat
import zipfile
from pathlib import Path

from .utils import check_zip_members, inflated, shown_name

WEIGHTS_MEMBER = "model.weights.h5"  # where a .keras zip keeps its tensors


def check_declared_sizes(path: str | Path) -> None:
    """Raise ValueError where the Keras file ``path`` (``.keras``, ``.weights.h5``, ``.h5``) has a zip member or a
    tensor that declares far more bytes than it stores (:func:`~tltool.utils.inflated`). Keras reads each in whole and
    refuses one only above 4 GiB: a 17 KB model.keras that declared a tensor of 4 GiB took 17 GB of memory and 46 s
    before Keras' error, and one of 3 MB whose config.json inflated to 3.4 GB loaded in 56 s and 7 GB."""
    name = str(path)
    if not stat.S_ISREG(os.stat(path).st_mode):  # a named pipe would block the reads below for ever
        raise ValueError("not a regular file (a named pipe, a device or a folder)")
    if name.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            check_zip_members(archive)
            if WEIGHTS_MEMBER in archive.namelist():  # in memory: h5py seeking in a zip member read it again each time
                _check_tensors(io.BytesIO(archive.read(WEIGHTS_MEMBER)), f"{WEIGHTS_MEMBER}: ")
    elif name.endswith((".h5", ".hdf5")):
        _check_tensors(name)
    elif name.endswith(".json"):
        raise ValueError("sharded weights (.weights.json) are not read: save them as one .weights.h5")


def _check_tensors(file, where: str = "") -> None:
    import h5py

    def check(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            declared, stored = math.prod(item.shape or ()) * item.dtype.itemsize, item.id.get_storage_size()
            if inflated(declared, stored):
                raise ValueError(f"{where}the tensor {shown_name(name, 80)} declares {declared:,} bytes and stores "
                                 f"{stored:,}")

    with h5py.File(file, "r") as f:
        f.visititems(check)
