"""Read a legacy (non-zip) PyTorch ``.pth`` state dict with ``pickle`` and numpy alone, without torch.

Layout: pickled magic number, protocol version and system info; the state dict, whose tensors reference storages
through ``persistent_load``; the list of storage keys; then per key an 8-byte little-endian element count and the
raw data. Tensors may be stored with any strides (these weights came from TensorFlow in HWIO order).
"""
from __future__ import annotations

import collections
import pickle
import struct
from typing import BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype: np.dtype, size: int) -> None:
        self.dtype, self.size = np.dtype(dtype), size
        self.data: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError("storage data missing: the file is truncated")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.shape, strides=tuple(s * itemsize for s in self.stride))
        return np.array(view)  # a contiguous copy


def _rebuild_tensor(storage, offset, shape, stride, *_args):
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        _kind, storage_type, key, _location, size = pid[:5]
        if storage_type not in _DTYPES:
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type}")
        return self.storages.setdefault(key, _Storage(_DTYPES[storage_type], int(size)))


def load_legacy_state_dict(path: str) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` from a legacy torch checkpoint. Only tensors and ordered dicts are accepted."""
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch file (zip-format checkpoints are not supported)")
        pickle.load(f)  # protocol version
        info = pickle.load(f)
        if not info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian torch files are not supported")
        storages: dict[str, _Storage] = {}
        state = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            storage = storages[key]
            raw = f.read(count * storage.dtype.itemsize)
            if len(raw) != count * storage.dtype.itemsize:
                raise ValueError(f"{path}: truncated at storage {key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return {name: ref.to_numpy() for name, ref in state.items()}
