"""Checked access to the ``.npy`` members of an ``.npz`` archive, and the
layer and W helpers that lemur's format and the fork's share."""

from __future__ import annotations

import numpy as np

from lemur._validation import check_finite
from lemur.formats.archive import Archive, NpyMember
from lemur.model import Layer

#: Arrays of a layer, by model kind (an ELM layer has only its weight).
LAYER_FIELDS = {"mlp": ("weight", "bias", "ln_weight", "ln_bias"), "elm": ("weight",)}


class NpzMembers:
    """The members of an open ``.npz``: each header is checked (dtype kind,
    ndim, shape) before its data is read; errors name the file and the key."""

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
              shape: tuple[int | None, ...] | None = None, mapped: bool = False) -> np.ndarray:
        """The member's data (read, or `mapped` from the file), its header
        checked first."""
        member = self.header(key, kinds, what, ndim, shape)
        return self._archive.mapped_array(member) if mapped else self._archive.npy_array(member)

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

    def floats(self, key: str, ndim: int, shape: tuple[int | None, ...] | None = None,
               mapped: bool = False) -> np.ndarray:
        return self.array(key, "f", "must hold floating-point values", ndim, shape, mapped)

    def float_header(self, key: str, ndim: int, shape: tuple[int | None, ...] | None = None) -> NpyMember:
        return self.header(key, "f", "must hold floating-point values", ndim, shape)

    def integers(self, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
        return self.array(key, "iu", "must hold integers", 1, shape)

    def num_layers(self) -> int:
        num_layers = self.integer("num_layers")
        if num_layers < 1:
            raise self.error(f"num_layers must be >= 1, got {num_layers}")
        return num_layers

    def layer_dims(self, num_layers: int, kind: str) -> tuple[int, int]:
        """Check every layer's headers (before any data is read); returns (d, h)."""
        dims = []
        for index in range(num_layers):
            for field in LAYER_FIELDS[kind]:
                member = self.float_header(f"layer_{index}_{field}", 2 if field == "weight" else 1)
                if field == "weight":
                    dims.append(member.shape)
        extra = f"layer_{num_layers}_weight"
        if extra in self.keys:
            raise self.error(f"num_layers is {num_layers}, but the file also has {extra!r}")
        return dims[0][1], dims[-1][0]

    def layers(self, num_layers: int, kind: str) -> tuple[Layer, ...]:
        return tuple(
            Layer(**{field: self.floats(f"layer_{index}_{field}", 2 if field == "weight" else 1)
                     for field in LAYER_FIELDS[kind]})
            for index in range(num_layers)
        )

    def W_rows(self, feature_dim: int) -> int | None:
        """Check W's header against the model; its number of rows, or None."""
        if "W" not in self.keys:
            return None
        shape = self.float_header("W", 2).shape
        if shape[1] != feature_dim:
            raise self.error(
                f"W has shape {shape}, but the model's last layer outputs {feature_dim} features")
        return shape[0]

    def W(self, feature_dim: int, mapped: bool = False) -> np.ndarray | None:
        """W as float32 (its header checked against the model first), finite;
        `mapped`: a read-only view mapped from the file, float32 as stored
        (not read, so not checked)."""
        if self.W_rows(feature_dim) is None:
            return None
        if mapped:
            self.float_header("W", 2)
            if self.header("W", "f", "").dtype != np.float32:
                raise self.error("key 'W' must be float32 to be mapped; rewrite the file with lemur.save")
            return self.floats("W", 2, mapped=True)
        W = np.ascontiguousarray(self.floats("W", 2), dtype=np.float32)
        try:
            check_finite(W, name="W")
        except ValueError as exc:
            raise self.error(str(exc)) from None
        return W


def layer_arrays(layers: tuple[Layer, ...]) -> dict[str, np.ndarray]:
    """``layer_{i}_{field}`` -> array, as both .npz formats store a model."""
    return {f"layer_{index}_{field}": value
            for index, layer in enumerate(layers)
            for field, value in layer._asdict().items() if value is not None}
