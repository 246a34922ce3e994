"""Reading ``torch.save`` files without PyTorch, and without running their code.

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
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict

import numpy as np

from lemur._archive import Archive, ArchiveError
from lemur._scratch import aligned_empty

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
