"""``torch.save`` files without PyTorch: read without running their code, and
written so that ``torch.load(..., weights_only=True)`` reads them.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive: ``<root>/data.pkl``
is a pickle of the saved object, and each tensor's storage is a raw
little-endian member ``<root>/data/<key>``. Unpickling ``data.pkl`` with a
general unpickler runs whatever code the file names. Here it is read by a
restricted unpickler that resolves only the globals ``torch.save`` writes for
tensors, storages and plain containers (:data:`ALLOWED_GLOBALS`); any other
global is refused, with its name, before anything is called. Tensors come back
as NumPy arrays (float32, float16, int64; bfloat16 widened to float32), each
checked against its storage: offset, shape and strides must stay inside it.

Legacy (pre-1.6, non-zip) files are refused; re-save them with a current
PyTorch.

:func:`write` makes the same layout: a protocol-2 pickle of dicts, lists,
tuples, numbers, strings and tensors (NumPy arrays, as float32, float16 or
int64 storages), written with the opcodes ``torch.save`` uses, the globals of
:data:`ALLOWED_GLOBALS` only, and each storage uncompressed at a 64-byte
boundary of the file, as ``torch.save`` aligns them.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from lemur._scratch import aligned_empty
from lemur.formats.archive import Archive, ArchiveError, write_atomically, zip_writer

#: Storage class -> (NumPy dtype of the bytes, bytes per element).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # widened to float32 when a tensor is built
    "LongStorage": np.dtype("<i8"),
}

#: The pickle size above which a file is refused (model pickles are a few KB).
MAX_PICKLE_BYTES = 16 * 2**20


class TorchFileError(ValueError):
    """A torch.save file that lemur refuses or cannot read; the message says why."""


class _Storage:
    """A storage record: what the pickle's persistent id names."""

    def __init__(self, kind: str, key: str, numel: int) -> None:
        self.kind, self.key, self.numel = kind, key, numel
        self.data: np.ndarray | None = None


class _StorageType:
    """Stands in for torch.FloatStorage & co. in the pickle (never called)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2, onto a NumPy array (a checked copy)."""
    if not isinstance(storage, _Storage) or storage.data is None:
        raise TorchFileError("a tensor refers to something that is not a storage")
    for name, value in (("size", size), ("stride", stride)):
        if not isinstance(value, tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            raise TorchFileError(f"a tensor's {name} must be a tuple of non-negative ints, got {value!r}")
    if len(size) != len(stride):
        raise TorchFileError(f"a tensor has size {size} but stride {stride}")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
        raise TorchFileError(f"a tensor has storage offset {storage_offset!r}")
    if all(size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise TorchFileError(
                f"a tensor of size {size}, stride {stride} and offset {storage_offset} reaches "
                f"element {last}, past the end of its storage {storage.key!r} "
                f"({storage.numel} elements)"
            )
    itemsize = storage.data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.data[storage_offset:] if all(size) else storage.data[:0],
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    if storage.kind == "BFloat16Storage":
        return (np.asarray(view, dtype=np.uint32) << 16).view(np.float32)
    if view.flags.c_contiguous and view.size == storage.numel:
        return view  # the whole storage, in order: no second copy of a large W
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    """torch._utils._rebuild_parameter: an nn.Parameter is its tensor here."""
    if not isinstance(data, np.ndarray):
        raise TorchFileError("a parameter wraps something that is not a tensor")
    return data


#: (module, name) -> what it stands for. Nothing else can be named.
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", kind): _StorageType(kind) for kind in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream, archive: _TorchArchive) -> None:
        super().__init__(stream)
        self._archive = archive

    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise TorchFileError(
                f"{self._archive.path}: refusing to load it: its pickle names the global "
                f"'{module}.{name}', which is not a tensor, storage or plain container (a "
                "torch.save of model weights holds nothing else; loading it with a general "
                "unpickler would run that code)"
            ) from None

    def persistent_load(self, pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchFileError(f"{self._archive.path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"{self._archive.path}: a storage has no known type ({storage_type!r})")
        if not isinstance(key, str) or not re.fullmatch(r"[0-9]+", key):
            raise TorchFileError(f"{self._archive.path}: a storage key must be digits, got {key!r}")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise TorchFileError(f"{self._archive.path}: storage {key} has {numel!r} elements")
        storage = _Storage(storage_type.kind, key, numel)
        storage.data = self._archive.storage_array(key, STORAGE_DTYPES[storage_type.kind], numel)
        return storage


class _TorchArchive:
    """The members of a torch.save zip archive (read through :mod:`lemur._archive`:
    each storage's declared size is checked before it is read)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.path = archive.path
        pickles = [name for name in archive.names if name.endswith("data.pkl")]
        if len(pickles) != 1 or not re.fullmatch(r"([^/]+/)?data\.pkl", pickles[0]):
            raise TorchFileError(f"{self.path}: expected one <archive>/data.pkl member, found {pickles}")
        self.prefix = pickles[0][: -len("data.pkl")]
        byteorder = self.prefix + "byteorder"
        if byteorder in archive.names and self.read(byteorder, 16).strip() != b"little":
            raise TorchFileError(f"{self.path}: only little-endian files are supported")

    def read(self, name: str, limit: int) -> bytes:
        try:
            return self.archive.read(name, limit)
        except ArchiveError as exc:
            raise TorchFileError(str(exc)) from None

    def storage_array(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        name = f"{self.prefix}data/{key}"
        expected = numel * dtype.itemsize
        try:
            info = self.archive.info(name)
            if info.compress_type != zipfile.ZIP_STORED:
                raise TorchFileError(
                    f"{self.path}: storage {key} is compressed; torch.save stores storages "
                    "uncompressed (and a compressed one could inflate far beyond the file)")
            size = info.file_size
            if size != expected:
                raise TorchFileError(
                    f"{self.path}: storage {key} should hold {numel} elements ({expected} bytes), "
                    f"but its member has {size} bytes"
                )
            return self.archive.read_into(name, aligned_empty(numel, dtype))
        except ArchiveError as exc:
            raise TorchFileError(str(exc)) from None

    def load(self) -> object:
        data = self.read(self.prefix + "data.pkl", MAX_PICKLE_BYTES)
        try:
            return _RestrictedUnpickler(io.BytesIO(data), self).load()
        except TorchFileError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, RecursionError, MemoryError, OverflowError) as exc:
            raise TorchFileError(f"{self.path}: data.pkl is not a valid pickle ({type(exc).__name__}: {exc})") from None


def load(path: str | os.PathLike[str]) -> object:
    """Read a torch.save file: dicts, lists, tuples, numbers, strings and tensors
    (as NumPy arrays). Raises TorchFileError for anything else or anything broken."""
    path = os.fspath(path)
    try:
        archive = Archive(path)
    except ArchiveError as exc:
        raise TorchFileError(
            f"{exc}; files from PyTorch before 1.6 (the legacy format) are not supported: "
            "re-save them with a current PyTorch"
        ) from None
    with archive:
        return _TorchArchive(archive).load()


# -- writing -----------------------------------------------------------------

#: NumPy dtype -> the storage class torch.save records for it.
STORAGE_CLASSES = {np.dtype("<f4"): "FloatStorage", np.dtype("<f2"): "HalfStorage",
                   np.dtype("<i8"): "LongStorage"}


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n"


class PickleWriter:
    """Protocol-2 pickle opcodes for the values torch.save writes; NumPy
    arrays become tensors whose storages are collected in `storages` (key =
    position). `other` emits values this writer does not know (None: they are
    a TypeError)."""

    def __init__(self, other: Callable[[object, list[bytes]], bool] | None = None) -> None:
        self.storages: list[np.ndarray] = []
        self.other = other

    def pickle(self, value: object) -> bytes:
        out = [b"\x80\x02"]
        self.emit(value, out)
        out.append(b".")
        return b"".join(out)

    def emit(self, value: object, out: list[bytes]) -> None:
        if self.other is not None and self.other(value, out):
            return
        if isinstance(value, np.ndarray):
            self._tensor(value, out)
        elif isinstance(value, dict):  # an empty dict (or OrderedDict), then SETITEMS
            out.append(_global("collections", "OrderedDict") + b")R" if isinstance(value, OrderedDict) else b"}")
            if value:
                out.append(b"(")
                for key, item in value.items():
                    self.emit(key, out)
                    self.emit(item, out)
                out.append(b"u")
        elif isinstance(value, tuple):
            out.append(b"(")
            for item in value:
                self.emit(item, out)
            out.append(b"t")
        elif isinstance(value, list):
            out.append(b"](")
            for item in value:
                self.emit(item, out)
            out.append(b"e")
        elif value is None:
            out.append(b"N")
        elif value is True or value is False:
            out.append(b"\x88" if value else b"\x89")
        elif isinstance(value, int):
            if -(2**31) <= value < 2**31:
                out.append(b"J" + struct.pack("<i", value))
            else:
                raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
                out.append(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(value, float):
            out.append(b"G" + struct.pack(">d", value))
        elif isinstance(value, str):
            raw = value.encode("utf-8")
            out.append(b"X" + struct.pack("<I", len(raw)) + raw)
        else:
            raise TypeError(f"cannot write a {type(value).__name__} to a torch.save file")

    def _tensor(self, array: np.ndarray, out: list[bytes]) -> None:
        kind = STORAGE_CLASSES.get(array.dtype.newbyteorder("<"))
        if kind is None:
            raise TypeError(f"cannot write a {array.dtype} tensor to a torch.save file")
        key = str(len(self.storages))
        self.storages.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")))
        strides = tuple(int(np.prod(array.shape[i + 1 :], dtype=np.int64)) for i in range(array.ndim))
        out.append(_global("torch._utils", "_rebuild_tensor_v2") + b"(")
        self.emit_persistent_storage(kind, key, array.size, out)
        for part in (0, tuple(int(n) for n in array.shape), strides, False, OrderedDict()):
            self.emit(part, out)
        out.append(b"tR")

    def emit_persistent_storage(self, kind: str, key: str, numel: int, out: list[bytes]) -> None:
        """The persistent id ('storage', torch.<kind>, key, 'cpu', numel)."""
        out.append(b"(")
        self.emit("storage", out)
        out.append(_global("torch", kind))
        self.emit(key, out)
        self.emit("cpu", out)
        self.emit(numel, out)
        out.append(b"tQ")  # the tuple, then BINPERSID


def write(path: str | os.PathLike[str], value: object, *, root: str = "archive") -> None:
    """Write `value` as torch.save does (see the module's docstring), atomically."""
    writer = PickleWriter()
    pickle_bytes = writer.pickle(value)

    def write_archive(stream) -> None:
        with zip_writer(stream) as add:
            add(f"{root}/data.pkl", [pickle_bytes], len(pickle_bytes))
            add(f"{root}/byteorder", [b"little"], 6)
            for key, storage in enumerate(writer.storages):
                data = memoryview(storage.reshape(-1).view(np.uint8))
                add(f"{root}/data/{key}", [data], len(data))
            add(f"{root}/version", [b"3\n"], 2)

    write_atomically(path, write_archive)
