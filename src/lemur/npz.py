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

from lemur._archive import Archive, NpyMember, is_zip
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


class _Members:
    """Checked access to the ``.npy`` members of an ``.npz`` archive: each
    member's header is checked (dtype kind, ndim, shape) before its data is
    read; errors name the file and the key."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self.path = archive.path
        self.keys = {name[: -len(".npy")] for name in archive.names if name.endswith(".npy")}
        self._headers: dict[str, NpyMember] = {}

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def header(self, key: str, kinds: str, what: str, ndim: int | None = None,
               shape: tuple[int | None, ...] | None = None) -> NpyMember:
        """The member's header, checked against what the format requires:
        `kinds` of dtype (`what` says them: "must hold integers"), `ndim`, and
        `shape` (None entries: any size)."""
        if key not in self.keys:
            raise self.error(f"missing key {key!r}")
        if key not in self._headers:
            self._headers[key] = self._archive.npy_header(key + ".npy", label=f"key {key!r}")
        member = self._headers[key]
        if member.dtype.kind not in kinds:
            raise self.error(f"key {key!r} {what}, got dtype {member.dtype}")
        if ndim is not None and member.ndim != ndim:
            raise self.error(f"key {key!r} must be {ndim}-D, got shape {member.shape}")
        if shape is not None and any(want is not None and got != want for got, want in zip(member.shape, shape)):
            expected = "(" + ", ".join("any" if n is None else str(n) for n in shape) + ")"
            raise self.error(f"key {key!r} must have shape {expected}, got {member.shape}")
        return member

    def array(self, key: str, kinds: str, what: str, ndim: int | None = None,
              shape: tuple[int | None, ...] | None = None) -> np.ndarray:
        return self._archive.npy_array(self.header(key, kinds, what, ndim, shape))

    def scalar(self, key: str, kinds: str, what: str) -> object:
        member = self.header(key, kinds, f"must be a single {what}")
        if member.shape not in ((), (1,)):
            raise self.error(f"key {key!r} must be a single {what}, got shape {member.shape}")
        return self._archive.npy_array(member).reshape(()).item()

    def integer(self, key: str) -> int:
        return int(self.scalar(key, "iu", "integer"))  # type: ignore[call-overload]

    def real(self, key: str) -> float:
        return float(self.scalar(key, "iuf", "real number"))  # type: ignore[arg-type]

    def string(self, key: str) -> str:
        return str(self.scalar(key, "U", "string"))

    def floats(self, key: str, ndim: int, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
        return self.array(key, "f", "must hold floating-point values", ndim, shape)

    def float_header(self, key: str, ndim: int, shape: tuple[int | None, ...] | None = None) -> NpyMember:
        return self.header(key, "f", "must hold floating-point values", ndim, shape)


_LAYER_FIELDS = {"mlp": ("weight", "bias", "ln_weight", "ln_bias"), "elm": ("weight",)}


def _layer_dims(members: _Members, num_layers: int, kind: str) -> tuple[int, int]:
    """Check every layer's headers (before any data is read); returns (d, h)."""
    dims = []
    for index in range(num_layers):
        for field in _LAYER_FIELDS[kind]:
            member = members.float_header(f"layer_{index}_{field}", 2 if field == "weight" else 1)
            if field == "weight":
                dims.append(member.shape)
    extra = f"layer_{num_layers}_weight"
    if extra in members.keys:
        raise members.error(f"num_layers is {num_layers}, but the file also has {extra!r}")
    return dims[0][1], dims[-1][0]


def _read_layers(members: _Members, num_layers: int, kind: str) -> list[Layer]:
    return [
        Layer(**{field: members.floats(f"layer_{index}_{field}", 2 if field == "weight" else 1)
                 for field in _LAYER_FIELDS[kind]})
        for index in range(num_layers)
    ]


def _build_model(members: _Members, layers: list[Layer], **options: object) -> Model:
    try:
        return Model(layers, **options)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{members.path}: {exc}") from None


def _W_rows(members: _Members, feature_dim: int) -> int | None:
    """Check W's header against the model; its number of rows, or None."""
    if "W" not in members.keys:
        return None
    shape = members.float_header("W", 2).shape
    if shape[1] != feature_dim:
        raise members.error(
            f"W has shape {shape}, but the model's last layer outputs {feature_dim} features")
    return shape[0]


def _read_W(members: _Members, feature_dim: int) -> np.ndarray | None:
    """W as float32 (its header checked against the model first), finite."""
    if _W_rows(members, feature_dim) is None:
        return None
    W = np.ascontiguousarray(members.floats("W", 2), dtype=np.float32)
    try:
        check_finite(W, name="W")
    except ValueError as exc:
        raise members.error(str(exc)) from None
    return W


def _num_layers(members: _Members) -> int:
    num_layers = members.integer("num_layers")
    if num_layers < 1:
        raise members.error(f"num_layers must be >= 1, got {num_layers}")
    return num_layers


def _load_lemur(members: _Members, activation: str | None) -> Contents:
    name = members.string("lemur_format")
    if name != FORMAT_NAME:
        raise members.error(f"lemur_format is {name!r}, expected {FORMAT_NAME!r}")
    version = members.integer("format_version")
    if version > FORMAT_VERSION:
        raise members.error(
            f"written in format version {version} by a newer lemur; "
            f"this lemur reads versions up to {FORMAT_VERSION}"
        )
    if version < 1:
        raise members.error(f"format_version must be >= 1, got {version}")
    kind = members.string("model_kind")
    if kind not in ("mlp", "elm"):
        raise members.error(f"model_kind must be 'mlp' or 'elm', got {kind!r}")
    recorded = members.string("activation")
    try:
        check_activation(recorded)
    except ValueError as exc:
        raise members.error(f"key 'activation': {exc}") from None
    if activation is not None and check_activation(activation) != recorded:
        raise ValueError(
            f"{members.path} records activation {recorded!r}; activation={activation!r} "
            "contradicts it (leave activation=None for files that record it)"
        )
    num_layers = _num_layers(members)
    # every header first: nothing large is read before the file is known to fit together
    input_dim, feature_dim = _layer_dims(members, num_layers, kind)
    num_docs = _W_rows(members, feature_dim)
    has_tokens = "doc_tokens" in members.keys or "doc_counts" in members.keys
    if has_tokens:
        members.float_header("doc_tokens", 2, (None, input_dim))
        members.header("doc_counts", "iu", "must hold integers", 1, (num_docs,))
    if "doc_ids" in members.keys:
        members.header("doc_ids", "iu", "must hold integers", 1, (num_docs,))
    if "sample" in members.keys:
        members.float_header("sample", 2, (None, input_dim))
    model = _build_model(
        members,
        _read_layers(members, num_layers, kind),
        kind=kind,
        activation=recorded,
        output_mean=members.real("output_mean"),
        output_std=members.real("output_std"),
    )
    W = _read_W(members, feature_dim)
    doc_tokens = doc_counts = doc_ids = sample = None
    if has_tokens:
        doc_counts = members.array("doc_counts", "iu", "must hold integers", 1)
        doc_tokens = np.ascontiguousarray(members.floats("doc_tokens", 2), dtype=np.float32)
    if "doc_ids" in members.keys:
        doc_ids = members.array("doc_ids", "iu", "must hold integers", 1)
    if "sample" in members.keys:
        sample = np.ascontiguousarray(members.floats("sample", 2), dtype=np.float32)
    return Contents(model, W, "lemur", doc_tokens, doc_counts, doc_ids, sample)


def _load_fork(members: _Members, activation: str | None, default_activation: str) -> Contents:
    activation = check_activation(default_activation if activation is None else activation)
    if "W" in members.keys:  # a defective W is reported even when the layers are missing
        members.float_header("W", 2)
    if "num_layers" in members.keys:
        num_layers = _num_layers(members)
    else:
        num_layers = 1
        while f"layer_{num_layers}_weight" in members.keys:
            num_layers += 1
    _, feature_dim = _layer_dims(members, num_layers, "mlp")
    if "final_hidden_dim" in members.keys:
        final_hidden_dim = members.integer("final_hidden_dim")
        if final_hidden_dim != feature_dim:
            raise members.error(
                f"final_hidden_dim is {final_hidden_dim}, but layer_{num_layers - 1}_weight "
                f"outputs {feature_dim} features"
            )
    W = _read_W(members, feature_dim)
    model = _build_model(
        members,
        _read_layers(members, num_layers, "mlp"),
        kind="mlp",
        activation=activation,
        output_mean=members.real("output_mean") if "output_mean" in members.keys else 0.0,
        output_std=members.real("output_std") if "output_std" in members.keys else 1.0,
    )
    return Contents(model, W, "lemur-numpy")


def load(
    path: str | os.PathLike[str],
    *,
    activation: str | None = None,
    default_activation: str = "gelu",
) -> Contents:
    """Read a lemur ``.npz`` file or a Numba-fork export.

    Every member's header is checked against the format, and the members
    against each other, before any array is read (see :mod:`lemur._archive`),
    so a damaged or hostile file is refused in bounded memory.

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
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not an .npz file")
    if not is_zip(path):
        with open(path, "rb") as stream:
            if stream.read(6) == b"\x93NUMPY":
                raise ValueError(f"{path}: expected an .npz archive, found a single .npy array")
        raise ValueError(f"{path}: not a readable .npz archive (not a zip file)")
    with Archive(path) as archive:
        members = _Members(archive)
        if "lemur_format" in members.keys:
            return _load_lemur(members, activation)
        if members.keys & {"layer_0_weight", "W", "final_hidden_dim"}:
            return _load_fork(members, activation, default_activation)
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
