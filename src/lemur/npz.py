"""lemur's ``.npz`` format, and the Numba fork's export format.

lemur's format (``format_version`` 1) is a plain, uncompressed NumPy ``.npz``
archive that ``np.load(path, allow_pickle=False)`` reads. Keys:

================== ========= ================ =======================================
key                dtype     shape            meaning
================== ========= ================ =======================================
``lemur_format``   str       ()               always ``"lemur-retrieval"``
``format_version`` int64     ()               1
``model_kind``     str       ()               ``"mlp"`` or ``"elm"``
``activation``     str       ()               ``"gelu"`` (exact erf), ``"relu"``,
                                              ``"silu"``, ``"mish"``, ``"gelu-tanh"``
``num_layers``     int64     ()               L (1 for an ELM)
``layer_{i}_weight`` float32 (out, in)        Linear i, ``nn.Linear`` layout; for an
                                              ELM the random matrix R transposed
``layer_{i}_bias`` float32   (out,)           MLP only
``layer_{i}_ln_weight`` f32  (out,)           MLP only: LayerNorm gamma
``layer_{i}_ln_bias`` f32    (out,)           MLP only: LayerNorm beta
``output_mean``    float64   ()               mean of the training targets
``output_std``     float64   ()               their (population) standard deviation
``W``              float32   (num_docs, h)    optional: one row per document
``doc_tokens``     float32   (tokens, d)      optional (with ``doc_counts``): the
                                              documents' token vectors, in order
``doc_counts``     int64     (num_docs,)      tokens per document (each >= 1)
``doc_ids``        int64     (num_docs,)      optional: the documents' ids (unique,
                                              >= 0), in W's row order; default 0..n-1
``sample``         float32   (size, d)        optional: the OLS sample S that W is
                                              fitted against (needed to add documents)
================== ========= ================ =======================================

Members are stored uncompressed, so that ``np.load`` reads each array straight
into memory of its own (one copy, however large).

The fork's export (``export_weights.py``) has ``layer_{i}_weight/bias/ln_weight/
ln_bias``, ``num_layers``, ``W``, ``final_hidden_dim``, ``output_mean`` and
``output_std``; its README also shows a hand-written single-layer variant with
only ``layer_0_*``, ``W`` and ``final_hidden_dim``. It records no activation
(pass ``activation=``; the default is the exact "gelu") and cannot hold an ELM.

Nothing here ever unpickles: every read uses ``allow_pickle=False``, and a key
holding a Python object array is refused with an error that names it.
"""

from __future__ import annotations

import os
import secrets
from typing import NamedTuple

import numpy as np

from lemur._validation import check_finite
from lemur.model import Layer, Model, check_activation

FORMAT_NAME = "lemur-retrieval"
FORMAT_VERSION = 1


class Contents(NamedTuple):
    """What a model or index file holds."""

    model: Model
    #: Document matrix, ``(num_docs, h)`` float32, or None if the file has none.
    W: np.ndarray | None
    #: ``"lemur"`` (our format) or ``"lemur-numpy"`` (the Numba fork's export).
    file_format: str
    #: The documents' token vectors, ``(num_doc_tokens, d)`` float32, or None.
    doc_tokens: np.ndarray | None = None
    #: Tokens per document, int64, or None.
    doc_counts: np.ndarray | None = None
    #: The documents' ids, int64, or None (then 0, 1, ...).
    doc_ids: np.ndarray | None = None
    #: The OLS sample S, ``(sample_size, d)`` float32, or None.
    sample: np.ndarray | None = None


class _Archive:
    """Typed access to the members of an open ``NpzFile``; errors name the key."""

    def __init__(self, archive: np.lib.npyio.NpzFile, path: str) -> None:
        self._archive = archive
        self.path = path
        self.keys = set(archive.files)

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def array(self, key: str) -> np.ndarray:
        if key not in self.keys:
            raise self.error(f"missing key {key!r}")
        try:
            return self._archive[key]
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise self.error(
                    f"key {key!r} holds a Python object array; lemur never unpickles model "
                    "files (it could run arbitrary code)"
                ) from None
            raise self.error(f"key {key!r} is not a valid .npy member ({exc})") from None
        except Exception as exc:  # CRC errors, truncation, a damaged .npy header
            raise self.error(f"key {key!r} could not be read ({type(exc).__name__}: {exc})") from None

    def scalar(self, key: str, kinds: str, what: str) -> object:
        value = self.array(key)
        if value.shape not in ((), (1,)) or value.dtype.kind not in kinds:
            raise self.error(
                f"key {key!r} must be a single {what}, got dtype {value.dtype} shape {value.shape}"
            )
        return value.reshape(()).item()

    def integer(self, key: str) -> int:
        return int(self.scalar(key, "iu", "integer"))  # type: ignore[call-overload]

    def real(self, key: str) -> float:
        return float(self.scalar(key, "iuf", "real number"))  # type: ignore[arg-type]

    def string(self, key: str) -> str:
        return str(self.scalar(key, "U", "string"))

    def floats(self, key: str, ndim: int) -> np.ndarray:
        value = self.array(key)
        if value.dtype.kind != "f":
            raise self.error(f"key {key!r} must hold floating-point values, got dtype {value.dtype}")
        if value.ndim != ndim:
            raise self.error(f"key {key!r} must be {ndim}-D, got shape {value.shape}")
        return value


def _read_layers(archive: _Archive, num_layers: int, kind: str) -> list[Layer]:
    fields = ("weight",) if kind == "elm" else ("weight", "bias", "ln_weight", "ln_bias")
    layers = []
    for index in range(num_layers):
        arrays = {
            field: archive.floats(f"layer_{index}_{field}", 2 if field == "weight" else 1)
            for field in fields
        }
        layers.append(Layer(**arrays))
    extra = f"layer_{num_layers}_weight"
    if extra in archive.keys:
        raise archive.error(f"num_layers is {num_layers}, but the file also has {extra!r}")
    return layers


def _build_model(archive: _Archive, layers: list[Layer], **options: object) -> Model:
    try:
        return Model(layers, **options)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{archive.path}: {exc}") from None


def _read_W(archive: _Archive) -> np.ndarray | None:
    """W as float32, checked for finiteness, or None (read before the layers, so
    that a defective W is reported even when the layers are missing)."""
    if "W" not in archive.keys:
        return None
    W = np.ascontiguousarray(archive.floats("W", 2), dtype=np.float32)
    try:
        check_finite(W, name="W")
    except ValueError as exc:
        raise archive.error(str(exc)) from None
    return W


def _check_W_width(archive: _Archive, W: np.ndarray | None, model: Model) -> None:
    if W is not None and W.shape[1] != model.feature_dim:
        raise archive.error(
            f"W has shape {W.shape}, but the model's last layer outputs {model.feature_dim} features"
        )


def _load_lemur(archive: _Archive, activation: str | None) -> Contents:
    name = archive.string("lemur_format")
    if name != FORMAT_NAME:
        raise archive.error(f"lemur_format is {name!r}, expected {FORMAT_NAME!r}")
    version = archive.integer("format_version")
    if version > FORMAT_VERSION:
        raise archive.error(
            f"written in format version {version} by a newer lemur; "
            f"this lemur reads versions up to {FORMAT_VERSION}"
        )
    if version < 1:
        raise archive.error(f"format_version must be >= 1, got {version}")
    kind = archive.string("model_kind")
    if kind not in ("mlp", "elm"):
        raise archive.error(f"model_kind must be 'mlp' or 'elm', got {kind!r}")
    recorded = archive.string("activation")
    try:
        check_activation(recorded)
    except ValueError as exc:
        raise archive.error(f"key 'activation': {exc}") from None
    if activation is not None and check_activation(activation) != recorded:
        raise ValueError(
            f"{archive.path} records activation {recorded!r}; activation={activation!r} "
            "contradicts it (leave activation=None for files that record it)"
        )
    num_layers = archive.integer("num_layers")
    if num_layers < 1:
        raise archive.error(f"num_layers must be >= 1, got {num_layers}")
    W = _read_W(archive)
    model = _build_model(
        archive,
        _read_layers(archive, num_layers, kind),
        kind=kind,
        activation=recorded,
        output_mean=archive.real("output_mean"),
        output_std=archive.real("output_std"),
    )
    _check_W_width(archive, W, model)
    doc_tokens = doc_counts = doc_ids = sample = None
    if "doc_tokens" in archive.keys or "doc_counts" in archive.keys:
        doc_tokens = np.ascontiguousarray(archive.floats("doc_tokens", 2), dtype=np.float32)
        doc_counts = archive.array("doc_counts")
    if "doc_ids" in archive.keys:
        doc_ids = archive.array("doc_ids")
    if "sample" in archive.keys:
        sample = np.ascontiguousarray(archive.floats("sample", 2), dtype=np.float32)
    return Contents(model, W, "lemur", doc_tokens, doc_counts, doc_ids, sample)


def _load_fork(archive: _Archive, activation: str | None, default_activation: str) -> Contents:
    activation = check_activation(default_activation if activation is None else activation)
    W = _read_W(archive)
    if "num_layers" in archive.keys:
        num_layers = archive.integer("num_layers")
        if num_layers < 1:
            raise archive.error(f"num_layers must be >= 1, got {num_layers}")
    else:
        num_layers = 1
        while f"layer_{num_layers}_weight" in archive.keys:
            num_layers += 1
    model = _build_model(
        archive,
        _read_layers(archive, num_layers, "mlp"),
        kind="mlp",
        activation=activation,
        output_mean=archive.real("output_mean") if "output_mean" in archive.keys else 0.0,
        output_std=archive.real("output_std") if "output_std" in archive.keys else 1.0,
    )
    if "final_hidden_dim" in archive.keys:
        final_hidden_dim = archive.integer("final_hidden_dim")
        if final_hidden_dim != model.feature_dim:
            raise archive.error(
                f"final_hidden_dim is {final_hidden_dim}, but layer_{num_layers - 1}_weight "
                f"outputs {model.feature_dim} features"
            )
    _check_W_width(archive, W, model)
    return Contents(model, W, "lemur-numpy")


def load(
    path: str | os.PathLike[str],
    *,
    activation: str | None = None,
    default_activation: str = "gelu",
) -> Contents:
    """Read a lemur ``.npz`` file or a Numba-fork export.

    Parameters
    ----------
    path : path-like
    activation : str, optional
        For fork exports, which record none: the activation the model was
        trained with. For lemur files: None, or the recorded activation.
    default_activation : str, default "gelu"
        The activation of a fork export when `activation` is None ("gelu" is
        the exact erf form the original trains with).

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError, TypeError
        If the file is not a readable ``.npz``, a key is missing or holds the
        wrong dtype or shape, the arrays do not fit together, or a value is
        not finite. The message names the file and the key.
    """
    path = os.fspath(path)
    try:
        opened = np.load(path, allow_pickle=False)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # whatever a damaged file makes zipfile or NumPy raise
        raise ValueError(f"{path}: not a readable .npz archive ({exc})") from None
    if not isinstance(opened, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected an .npz archive, found a single .npy array")
    with opened:
        archive = _Archive(opened, path)
        if "lemur_format" in archive.keys:
            return _load_lemur(archive, activation)
        if archive.keys & {"layer_0_weight", "W", "final_hidden_dim"}:
            return _load_fork(archive, activation, default_activation)
    raise ValueError(
        f"{path}: neither a lemur file (no 'lemur_format' key) nor a LEMUR-NumPy export "
        "(no 'layer_0_weight', 'W' or 'final_hidden_dim' key)"
    )


def save(
    path: str | os.PathLike[str],
    *,
    model: Model,
    W: np.ndarray | None = None,
    doc_tokens: np.ndarray | None = None,
    doc_counts: np.ndarray | None = None,
    doc_ids: np.ndarray | None = None,
    sample: np.ndarray | None = None,
) -> None:
    """Write `model` (and optionally W, ids, the token store and the OLS sample)
    to `path` in lemur's format, atomically.

    The archive is written to a temporary file in the same folder and renamed
    over `path`, so `path` always holds either the old or the new file.
    """
    arrays: dict[str, np.ndarray] = {
        "lemur_format": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "model_kind": np.array(model.kind),
        "activation": np.array(model.activation),
        "num_layers": np.array(model.num_layers, dtype=np.int64),
        "output_mean": np.array(model.output_mean, dtype=np.float64),
        "output_std": np.array(model.output_std, dtype=np.float64),
    }
    for index, layer in enumerate(model.layers):
        for field, value in layer._asdict().items():
            if value is not None:
                arrays[f"layer_{index}_{field}"] = value
    if W is not None:
        arrays["W"] = W
    if doc_tokens is not None:
        arrays["doc_tokens"] = doc_tokens
        arrays["doc_counts"] = np.asarray(doc_counts, dtype=np.int64)
    if doc_ids is not None:
        arrays["doc_ids"] = np.asarray(doc_ids, dtype=np.int64)
    if sample is not None:
        arrays["sample"] = sample
    write_atomically(path, arrays)


def write_atomically(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a new file beside `path`, then rename it over `path`.

    The new file gets the usual permissions (0666 less the umask); if anything
    fails, it is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "xb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
