"""lemur.formats.archive: zip members and .npy headers checked before any data is read."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import DATA

from lemur.formats.archive import MAX_DEFLATE_RATIO, Archive, ArchiveError, is_zip


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": descr, "fortran_order": False, "shape": shape})
    return stream.getvalue()


def fork_layers() -> dict[str, np.ndarray]:
    with np.load(DATA / "mlp1_silu_d100_h256" / "model.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files if key.startswith("layer_")}


def write_bomb(path, num_floats: int, shape: tuple[int, ...]) -> None:
    """A fork export whose W.npy member deflates from a few MB to num_floats * 4 bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key, value in fork_layers().items():
            with archive.open(key + ".npy", "w") as member:
                np.lib.format.write_array(member, value)
        with archive.open("W.npy", "w", force_zip64=True) as member:
            member.write(npy_header(shape))
            zeros, left = bytes(16 * 2**20), num_floats * 4
            while left > 0:
                member.write(zeros[: min(left, len(zeros))])
                left -= len(zeros)


def peak_memory_of_loading(path) -> tuple[str, int]:
    """The error lemur.load raises for `path`, and the peak RSS (bytes) of the
    process that tried, measured in a fresh interpreter."""
    # VmHWM (Linux): the peak of this process's own memory; ru_maxrss would also
    # count the forking parent's, which it inherits across exec
    script = (
        "import resource, sys, lemur\n"
        "try:\n    lemur.load(sys.argv[1])\nexcept ValueError as error:\n    print(error)\n"
        "else:\n    print('loaded')\n"
        "try:\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    print(int(status.split()[0]) * 1024)\n"
        "except OSError:  # macOS counts ru_maxrss in bytes\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    message, peak = result.stdout.strip().rsplit("\n", 1)
    return message, int(peak)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "message"),
    [((300_000_000,), "key 'W' must be 2-D, got shape \\(300000000,\\)"),  # the wrong shape
     ((1_200_000, 250), "W has shape \\(1200000, 250\\), but the model's last layer outputs 256")],
)
def test_a_small_file_that_would_decompress_to_gigabytes_is_refused_in_bounded_memory(tmp_path, shape, message):
    path = tmp_path / "bomb.npz"
    write_bomb(path, 300_000_000, shape)  # 1.2 GB of zeros in about 5 MB
    assert path.stat().st_size < 10 * 2**20
    error, peak = peak_memory_of_loading(path)
    assert re.search(message, error), error
    assert peak < 200 * 2**20, f"peak RSS {peak / 2**20:.0f} MB"


def patch_central_directory(data: bytes, name: bytes, **fields: int) -> bytes:
    """Rewrite fields of a member's central-directory entry (compress/file sizes)."""
    start = data.index(b"PK\x01\x02")
    while data[start + 46 : start + 46 + len(name)] != name:
        start = data.index(b"PK\x01\x02", start + 4)
    entry = bytearray(data)
    offsets = {"compress_size": 20, "file_size": 24}
    for field, value in fields.items():
        struct.pack_into("<I", entry, start + offsets[field], value)
    return bytes(entry)


def small_npz(tmp_path, compression: int) -> bytes:
    path = tmp_path / "small.npz"
    with zipfile.ZipFile(path, "w", compression) as archive:
        with archive.open("W.npy", "w") as member:
            np.lib.format.write_array(member, np.ones((4, 8), np.float32))
    return path.read_bytes()


def test_a_deflated_member_claiming_more_than_deflate_can_hold_is_refused(tmp_path):
    data = small_npz(tmp_path, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        compressed = archive.getinfo("W.npy").compress_size
    lying = tmp_path / "lying.npz"
    lying.write_bytes(patch_central_directory(data, b"W.npy", file_size=MAX_DEFLATE_RATIO * compressed + 4096))
    with Archive(lying) as archive, pytest.raises(ArchiveError, match="more than deflate can hold"):
        archive.npy_header("W.npy")


def test_a_stored_member_whose_sizes_disagree_is_refused(tmp_path):
    data = small_npz(tmp_path, zipfile.ZIP_STORED)
    lying = tmp_path / "lying.npz"
    lying.write_bytes(patch_central_directory(data, b"W.npy", file_size=2**31))
    with Archive(lying) as archive, pytest.raises(ArchiveError, match="stored uncompressed but declares"):
        archive.npy_header("W.npy")


def test_a_member_reaching_past_the_end_of_the_file_is_refused(tmp_path):
    data = small_npz(tmp_path, zipfile.ZIP_STORED)
    lying = tmp_path / "lying.npz"
    lying.write_bytes(patch_central_directory(data, b"W.npy", file_size=2**30, compress_size=2**30))
    with Archive(lying) as archive, pytest.raises(ArchiveError, match="past the end of the file"):
        archive.npy_header("W.npy")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_header_declaring_more_than_the_member_holds_is_refused(tmp_path, compression):
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("W.npy", npy_header((1_000_000, 2048)) + bytes(64))
    with Archive(path) as archive, pytest.raises(
            ArchiveError, match=r"declares shape \(1000000, 2048\) of float32 \(8192000000 bytes\), but holds 64"):
        archive.npy_header("W.npy")


@pytest.mark.parametrize("descr", ["|O", "<c8", [("a", "<f4")], "<M8[s]"])
def test_only_numbers_and_strings_are_read(tmp_path, descr):
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy_header((2,), descr) + bytes(64))
    with Archive(path) as archive, pytest.raises(ArchiveError, match="object array|reads only numbers"):
        archive.npy_header("x.npy")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("order", ["C", "F"])
def test_arrays_come_back_aligned_in_c_order_and_native_byte_order(tmp_path, compression, order):
    value = np.asfortranarray(np.arange(24, dtype=">f4").reshape(4, 6)) if order == "F" else \
        np.arange(24, dtype="<i8").reshape(4, 6)
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w", compression) as archive:
        with archive.open("x.npy", "w") as member:
            np.lib.format.write_array(member, value)
    with Archive(path) as archive:
        array = archive.npy_array(archive.npy_header("x.npy"))
    assert np.array_equal(array, value) and array.flags.c_contiguous and array.dtype.isnative
    assert array.ctypes.data % 64 == 0


def test_a_corrupted_member_is_refused_by_its_crc(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x=np.arange(1000, dtype=np.float32))
    data = bytearray(path.read_bytes())
    data[data.index(b"\x00\x00\x80\x3f") + 2] ^= 0xFF  # a byte of the value 1.0
    path.write_bytes(bytes(data))
    with Archive(path) as archive, pytest.raises(ArchiveError, match="could not be read .*CRC"):
        archive.npy_array(archive.npy_header("x.npy"))


def test_is_zip_says_no_to_what_zipfile_chokes_on(tmp_path):
    path = tmp_path / "odd"
    # an end-of-central-directory record pointing at a zip64 locator that spans disks
    path.write_bytes(b"PK\x06\x07" + struct.pack("<IQI", 1, 0, 2) + b"PK\x05\x06" + bytes(18))
    assert is_zip(str(path)) is False
