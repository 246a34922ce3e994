"""Zip archives and their ``.npy`` members: read in bounded memory, written
atomically with every array 64-byte aligned in the file.

The readers of ``.npz`` and ``torch.save`` files go through here. Nothing is
decompressed or allocated on the strength of a size the file declares until
the declaration has been checked:

* a member must be stored or deflated, its data must lie inside the file,
  a stored member's sizes must agree, and a deflated member may not claim
  more than :data:`MAX_DEFLATE_RATIO` times its compressed size (deflate
  cannot do better), so a few-MB file cannot ask for gigabytes;
* a ``.npy`` member's header (at most :data:`MAX_NPY_HEADER_BYTES`) is parsed
  on its own first: its dtype must be a plain number, bool or string type and
  the bytes its shape declares must be exactly the member's size. Callers
  check the shapes and dtypes of all members against the format (and against
  each other) before any data is read;
* data is then read into an array of exactly the declared size, in chunks,
  and the member's CRC is verified.

Every problem is a ``ValueError`` naming the file and the member.

Writers (:func:`write_atomically`) make a new file beside the target and
rename it over it, so the target always holds the old file or the new one.
:func:`write_npz` stores arrays uncompressed with their data on 64-byte
boundaries of the file, so that they can be memory-mapped in place.
"""

from __future__ import annotations

import contextlib
import io
import math
import mmap
import os
import secrets
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

import numpy as np

from lemur._scratch import aligned_empty

#: Deflate's best possible compression is about 1032:1; a member claiming more
#: than this many times its compressed size is lying.
MAX_DEFLATE_RATIO = 1040

#: The largest .npy header accepted (numpy's own default limit is 10,000).
MAX_NPY_HEADER_BYTES = 65536

#: Bytes read at a time from a member (decompressing costs a copy of this much).
CHUNK_BYTES = 2**20

#: dtype kinds a member may hold: bool, signed and unsigned ints, floats, str.
ALLOWED_KINDS = "biufU"

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def is_zip(path: str) -> bool:
    """Whether `path` looks like a zip archive (False for damaged ones that
    zipfile cannot even tell apart)."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


class ArchiveError(ValueError):
    """A zip archive or member that lemur refuses; the message says why."""


class NpyMember(NamedTuple):
    """What a ``.npy`` member's header declares."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    #: bytes of the magic string and header before the data
    header_bytes: int
    #: how messages name it
    label: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class Archive:
    """A zip archive opened for checked reading (a context manager)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file = open(self.path, "rb")  # FileNotFoundError etc. as they are
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self.zip = zipfile.ZipFile(self._file)
        except Exception as exc:  # whatever a damaged or hostile archive makes zipfile raise
            self._file.close()
            raise ArchiveError(f"{self.path}: not a readable zip archive ({exc})") from None
        self.names = self.zip.namelist()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.zip.close()
        self._file.close()

    def error(self, message: str) -> ArchiveError:
        return ArchiveError(f"{self.path}: {message}")

    def info(self, name: str, label: str | None = None) -> zipfile.ZipInfo:
        """The member's entry, checked: method, sizes, data inside the file.
        `label` names the member in messages (default: member 'name')."""
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise self.error(f"missing member {name!r}") from None
        name = label or f"member {name!r}"
        if info.flag_bits & 0x1:
            raise self.error(f"member {name!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise self.error(
                    f"{name} is stored uncompressed but declares {info.file_size} bytes "
                    f"and holds {info.compress_size}"
                )
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
                raise self.error(
                    f"{name} declares {info.file_size} bytes from {info.compress_size} "
                    "compressed bytes, more than deflate can hold"
                )
        else:
            raise self.error(
                f"{name} uses compression method {info.compress_type}; only stored "
                "and deflated members are read"
            )
        if self.data_offset(info) + info.compress_size > self.size:
            raise self.error(f"{name} reaches past the end of the file")
        return info

    def data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where the member's (compressed) data starts in the file."""
        self._file.seek(info.header_offset)
        header = self._file.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise self.error(f"member {info.filename!r} has no valid local header")
        fields = _LOCAL_HEADER.unpack(header)
        return info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]

    def read(self, name: str, limit: int) -> bytes:
        """A whole member of at most `limit` bytes."""
        info = self.info(name)
        if info.file_size > limit:
            raise self.error(f"member {name!r} is {info.file_size} bytes, over the {limit} allowed")
        try:
            return self.zip.read(info)
        except Exception as exc:  # CRC errors, truncation, bad headers
            raise self.error(f"member {name!r} could not be read ({exc})") from None

    def read_into(self, name: str, out: np.ndarray, skip: int = 0, label: str | None = None) -> np.ndarray:
        """Fill `out` (C-contiguous) with the member's bytes after the first
        `skip`; the member must hold exactly that many, and its CRC is checked."""
        info = self.info(name, label)
        label = label or f"member {name!r}"
        if info.file_size != skip + out.nbytes:
            raise self.error(
                f"{label} holds {info.file_size - skip} bytes of data, but {out.nbytes} are declared"
            )
        target = memoryview(out.reshape(-1).view(np.uint8))
        try:
            if info.compress_type == zipfile.ZIP_STORED:
                self._read_stored(info, skip, target)
            else:
                with self.zip.open(info) as stream:
                    if skip and len(stream.read(skip)) != skip:
                        raise EOFError("truncated")
                    done = 0
                    while done < len(target):
                        count = stream.readinto(target[done : done + CHUNK_BYTES])
                        if not count:
                            raise EOFError("truncated")
                        done += count
                    if stream.read(1):  # also makes zipfile check the CRC
                        raise EOFError("longer than declared")
        except ArchiveError:
            raise
        except Exception as exc:  # CRC errors, truncation, bad deflate streams
            raise self.error(f"{label} could not be read ({type(exc).__name__}: {exc})") from None
        return out

    def _read_stored(self, info: zipfile.ZipInfo, skip: int, target: memoryview) -> None:
        """A stored member's bytes after `skip`, straight from the file into
        `target` (no intermediate copy), with its CRC checked."""
        self._file.seek(self.data_offset(info))
        crc = zlib.crc32(self._file.read(skip)) if skip else 0
        done = 0
        while done < len(target):
            count = self._file.readinto(target[done : done + CHUNK_BYTES])
            if not count:
                raise EOFError("truncated")
            crc = zlib.crc32(target[done : done + count], crc)
            done += count
        if crc != info.CRC:
            raise zipfile.BadZipFile(f"bad CRC-32 for {info.filename!r}")

    # -- .npy members ---------------------------------------------------------

    def npy_header(self, name: str, label: str | None = None) -> NpyMember:
        """Parse and check a ``.npy`` member's header, reading nothing else."""
        info = self.info(name, label)
        label = label or f"member {name!r}"
        try:
            with self.zip.open(info) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(stream, max_header_size=MAX_NPY_HEADER_BYTES)
                elif version == (2, 0):
                    header = np.lib.format.read_array_header_2_0(stream, max_header_size=MAX_NPY_HEADER_BYTES)
                else:
                    raise ValueError(f".npy format version {version} is not supported")
                header_bytes = stream.tell()
        except Exception as exc:  # a damaged header, or numpy's refusal of it
            reason = str(exc) if len(str(exc)) <= 200 else str(exc)[:200] + "..."
            raise self.error(f"{label} is not a valid .npy array ({reason})") from None
        shape, fortran_order, dtype = header
        if dtype.hasobject:
            raise self.error(
                f"{label} holds a Python object array; lemur never unpickles model files "
                "(it could run arbitrary code)"
            )
        if dtype.fields is not None or dtype.kind not in ALLOWED_KINDS:
            raise self.error(f"{label} holds dtype {dtype}; lemur reads only numbers and strings")
        member = NpyMember(name, dtype, tuple(int(n) for n in shape), bool(fortran_order),
                           header_bytes, label)
        if header_bytes + member.nbytes != info.file_size:
            raise self.error(
                f"{label} declares shape {member.shape} of {dtype} ({member.nbytes} bytes), "
                f"but holds {info.file_size - header_bytes} bytes of data"
            )
        return member

    def mapped_array(self, member: NpyMember) -> np.ndarray:
        """A read-only view of a member's data mapped from the file (nothing
        is read; the pages come in as they are used, shared with every
        process that maps the file). The member must be stored uncompressed,
        in C order and native byte order; its CRC is not checked (that would
        read it all)."""
        info = self.info(member.name, member.label)
        if info.compress_type != zipfile.ZIP_STORED:
            raise self.error(f"{member.label} is compressed and cannot be mapped; rewrite the file "
                             "with lemur.save (or `lemur convert`)")
        if member.fortran_order or not member.dtype.isnative:
            raise self.error(f"{member.label} is not in C order and native byte order and cannot "
                             "be mapped; rewrite the file with lemur.save")
        if member.nbytes == 0:
            return np.empty(member.shape, member.dtype)
        start = self.data_offset(info) + member.header_bytes
        page = start - start % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(self._file.fileno(), start - page + member.nbytes, access=mmap.ACCESS_READ,
                            offset=page)
        array = np.frombuffer(mapping, dtype=member.dtype, count=math.prod(member.shape), offset=start - page)
        return array.reshape(member.shape)

    def npy_array(self, member: NpyMember) -> np.ndarray:
        """The data of a member whose header :meth:`npy_header` checked: a new,
        aligned, C-contiguous array in native byte order."""
        shape = member.shape[::-1] if member.fortran_order else member.shape
        array = self.read_into(member.name, aligned_empty(shape, member.dtype), member.header_bytes,
                               member.label)
        if not member.fortran_order and member.dtype.isnative:
            return array
        native = aligned_empty(member.shape, member.dtype.newbyteorder("="))
        np.copyto(native, array.T if member.fortran_order else array)
        return native


# -- writing -----------------------------------------------------------------

#: Where data starts in lemur's own files: on cache lines (and pages of 4 KiB
#: divide into them), so that members can be mapped and scanned in place.
DATA_ALIGNMENT = 64

#: The zip extra-field id of the padding that aligns a member's data.
_PADDING_ID = 0x4C4D


def mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The file mapping an array made by :meth:`Archive.mapped_array` views, or None."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a new file beside `path`, then rename it over `path`.

    The new file gets the usual permissions (0666 less the umask); if anything
    fails, it is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "xb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _padding(offset: int, name: bytes, zip64: bool, before_data: int) -> bytes:
    """A zip extra field that puts the member's data, `before_data` bytes after
    its local header, on a DATA_ALIGNMENT boundary."""
    header = 30 + len(name) + (20 if zip64 else 0)
    size = -(offset + header + 4 + before_data) % DATA_ALIGNMENT
    return struct.pack("<HH", _PADDING_ID, size) + bytes(size)


@contextlib.contextmanager
def zip_writer(stream: BinaryIO) -> Iterator[Callable[..., None]]:
    """A stored (uncompressed) zip on `stream`; yields add(name, chunks, size,
    before_data=0), which writes a member of `size` bytes from an iterable of
    byte chunks, the byte `before_data` after its start on a DATA_ALIGNMENT
    boundary of the file."""
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:

        def add(name: str, chunks, size: int, before_data: int = 0) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = size
            zip64 = size >= zipfile.ZIP64_LIMIT
            info.extra = _padding(stream.tell(), name.encode("utf-8"), zip64, before_data)
            with archive.open(info, "w", force_zip64=zip64) as member:
                for chunk in chunks:
                    member.write(chunk)

        yield add


def npy_header_bytes(array: np.ndarray) -> bytes:
    """The .npy header (magic, version, dict padded to a multiple of 64 bytes)
    of a C-contiguous array."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return header.getvalue()


def c_order(value: np.ndarray) -> np.ndarray:
    """`value` as a C-contiguous array of the same shape (0-d stays 0-d)."""
    array = np.asarray(value)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _array_chunks(array: np.ndarray) -> Iterator[memoryview]:
    data = memoryview(array.reshape(-1).view(np.uint8))
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]


def write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed ``.npz`` of `arrays` (``np.load`` reads it), written
    atomically, each array's data on a DATA_ALIGNMENT boundary of the file."""

    def write(stream: BinaryIO) -> None:
        with zip_writer(stream) as add:
            for key, value in arrays.items():
                array = c_order(value)
                header = npy_header_bytes(array)
                add(key + ".npy", [header, *_array_chunks(array)], len(header) + array.nbytes,
                    before_data=len(header))

    write_atomically(path, write)
