"""Writing torch.save-style archives by hand, for testing the reader without torch.

:func:`archive` builds the zip; :func:`pickled` emits protocol-2 pickle opcodes
for a small vocabulary of values, so that tests can write exactly the pickles
torch.save writes, and hostile or broken variants of them.
"""

from __future__ import annotations

import io
import pathlib
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field

from conftest import DATA

#: What a hostile pickle that ran code would create.
MARKER = pathlib.Path("/tmp/lemur_pwned")
#: The fixtures' hostile mlp.pt (its pickle would run "touch /tmp/lemur_pwned").
HOSTILE = DATA / "hostile" / "mlp.pt"


def write(tmp_path, data: bytes, name="file.pt") -> pathlib.Path:
    """`data` written to tmp_path / name."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


@dataclass
class Tensor:
    """A tensor as torch.save records it: a storage and a view of it."""

    key: str
    numel: int
    offset: int
    size: tuple
    stride: tuple
    kind: str = "FloatStorage"


@dataclass
class Call:
    """``module.name(*args)``, as a pickle REDUCE of a GLOBAL."""

    module: str
    name: str
    args: tuple = field(default_factory=tuple)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _emit(value, out: list[bytes]) -> None:
    if isinstance(value, Tensor):
        out.append(_global("torch._utils", "_rebuild_tensor_v2") + b"(")
        out.append(b"(")
        _emit("storage", out)
        out.append(_global("torch", value.kind))
        _emit(value.key, out)
        _emit("cpu", out)
        _emit(value.numel, out)
        out.append(b"tQ")  # the persistent id tuple, then BINPERSID
        for part in (value.offset, value.size, value.stride, False, OrderedDict()):
            _emit(part, out)
        out.append(b"tR")
    elif isinstance(value, Call):
        out.append(_global(value.module, value.name))
        _emit(tuple(value.args), out)
        out.append(b"R")
    elif isinstance(value, dict):  # an empty dict (or OrderedDict), then SETITEMS
        out.append(_global("collections", "OrderedDict") + b")R" if isinstance(value, OrderedDict) else b"}")
        if value:
            out.append(b"(")
            for key, item in value.items():
                _emit(key, out)
                _emit(item, out)
            out.append(b"u")
    elif isinstance(value, tuple):
        out.append(b"(")
        for item in value:
            _emit(item, out)
        out.append(b"t")
    elif isinstance(value, list):
        out.append(b"](")
        for item in value:
            _emit(item, out)
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
        raw = value.encode()
        out.append(b"X" + struct.pack("<I", len(raw)) + raw)
    else:
        raise TypeError(type(value))


def pickled(value) -> bytes:
    out = [b"\x80\x02"]
    _emit(value, out)
    out.append(b".")
    return b"".join(out)


def archive(value, storages: dict[str, bytes], *, root: str = "archive",
            byteorder: bytes = b"little", compression: int = zipfile.ZIP_STORED) -> bytes:
    """A torch.save-style zip: root/data.pkl, root/data/<key>, root/byteorder, root/version
    (stored uncompressed, as torch.save does, unless told otherwise)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zip_file:
        zip_file.writestr(f"{root}/data.pkl", pickled(value))
        zip_file.writestr(f"{root}/byteorder", byteorder)
        for key, data in storages.items():
            zip_file.writestr(f"{root}/data/{key}", data)
        zip_file.writestr(f"{root}/version", b"3\n")
    return buffer.getvalue()
