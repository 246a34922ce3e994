"""One entry point for every file lemur reads: :func:`lemur.load`.

* an original LEMUR index directory (``mlp.pt``, and ``w.pt`` if fitted),
  read without PyTorch and without running code (:mod:`lemur.torch_format`);
  a lone ``mlp.pt`` gives the model;
* lemur's own ``.npz`` and the Numba fork's export (:mod:`lemur.npz`).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from lemur import npz, torch_format
from lemur._archive import is_zip
from lemur.model import Layer, Model, check_activation

#: File format names, as :func:`read` reports them.
ORIGINAL_DIRECTORY = "lemur-original (directory)"
ORIGINAL_MODEL = "lemur-original (mlp.pt)"


def read(
    path: str | os.PathLike[str],
    *,
    activation: str | None = None,
    default_activation: str = "gelu",
) -> npz.Contents:
    """Read any supported file or directory into its model, W and token store.

    `activation` is for formats that do not record it (the fork's export); for
    the others it must be None or agree with the file. Errors are ValueError
    (or FileNotFoundError) naming the file and what is wrong.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_original_directory(path, activation)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path!r}")
    if _is_torch_archive(path):
        model = _model_from_checkpoint(torch_format.load(path), path, activation)
        return npz.Contents(model, None, ORIGINAL_MODEL)
    return npz.load(path, activation=activation, default_activation=default_activation)


def read_index(path: str | os.PathLike[str], *, activation: str | None = None) -> npz.Contents:
    """:func:`read` for a file that must hold an index: ValueError if it has no W."""
    contents = read(path, activation=activation)
    if contents.W is None:
        raise ValueError(f"{os.fspath(path)}: holds a model but no W; it is not an index")
    return contents


def load(path: str | os.PathLike[str], *, activation: str | None = None):
    """Open an index or a model from any supported file or directory.

    Returns
    -------
    Index
        When the file holds W (a fitted index): an original LEMUR index
        directory, a lemur ``.npz`` index, or a LEMUR-NumPy export.
    Model
        When it holds only a model (a lone ``mlp.pt``, a lemur model ``.npz``).
    """
    from lemur.index import Index

    contents = read(path, activation=activation)
    if contents.W is None:
        return contents.model
    return Index.from_contents(contents)


def _is_torch_archive(path: str) -> bool:
    """A zip archive with a data.pkl member (lemur's .npz files have none)."""
    if not is_zip(path):
        with open(path, "rb") as stream:
            head = stream.read(2)
        return path.endswith(".pt") or head == b"\x80\x02"  # a legacy torch pickle
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except Exception:  # a damaged archive: let the reader for its extension say why
        return path.endswith(".pt")


def _read_original_directory(path: str, activation: str | None) -> npz.Contents:
    mlp_path = os.path.join(path, "mlp.pt")
    if not os.path.exists(mlp_path):
        raise ValueError(f"{path}: not a LEMUR index directory (no mlp.pt)")
    model = _model_from_checkpoint(torch_format.load(mlp_path), mlp_path, activation)
    w_path = os.path.join(path, "w.pt")
    if not os.path.exists(w_path):
        return npz.Contents(model, None, ORIGINAL_DIRECTORY)
    return npz.Contents(model, _W_from_checkpoint(torch_format.load(w_path), w_path, model),
                        ORIGINAL_DIRECTORY)


def _expect(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{path}: {message}")


def _model_from_checkpoint(payload: object, path: str, activation: str | None) -> Model:
    """The original's ``save_mlp`` payload -> Model."""
    _expect(isinstance(payload, dict), path, "expected the dict that LEMUR's save_mlp writes")
    for key in ("state_dict", "config"):
        _expect(key in payload, path, f"missing key {key!r}")
        _expect(isinstance(payload[key], dict), path, f"{key!r} must be a dict")
    state, config = payload["state_dict"], payload["config"]
    kind = config.get("model_type")
    _expect(kind in ("mlp", "elm"), path, f"config['model_type'] must be 'mlp' or 'elm', got {kind!r}")
    recorded = config.get("activation")
    try:
        check_activation(recorded)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: config['activation']: {exc}") from None
    if activation is not None and check_activation(activation) != recorded:
        raise ValueError(
            f"{path} records activation {recorded!r}; activation={activation!r} contradicts it"
        )

    def tensor(key: str) -> np.ndarray:
        _expect(key in state, path, f"state_dict is missing {key!r}")
        _expect(isinstance(state[key], np.ndarray), path, f"state_dict[{key!r}] is not a tensor")
        return state[key]

    if kind == "elm":
        R = tensor("feature_extractor.0.weight")
        _expect(R.ndim == 2, path, f"the ELM's random matrix must be 2-D, got shape {R.shape}")
        layers = [Layer(R.T)]
    else:
        num_layers = config.get("num_layers")
        _expect(isinstance(num_layers, int) and not isinstance(num_layers, bool) and num_layers >= 1,
                path, f"config['num_layers'] must be a positive int, got {num_layers!r}")
        layers = [
            Layer(
                tensor(f"feature_extractor.{3 * i}.weight"),
                tensor(f"feature_extractor.{3 * i}.bias"),
                tensor(f"feature_extractor.{3 * i + 1}.weight"),
                tensor(f"feature_extractor.{3 * i + 1}.bias"),
            )
            for i in range(num_layers)
        ]
        extra = f"feature_extractor.{3 * num_layers}.weight"
        _expect(extra not in state, path, f"config['num_layers'] is {num_layers}, but state_dict has {extra!r}")
    try:
        model = Model(
            layers,
            kind=kind,
            activation=recorded,
            output_mean=payload.get("output_mean", 0.0),
            output_std=payload.get("output_std", 1.0),
        )
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{path}: {exc}") from None
    for key, value in (("input_dim", model.input_dim), ("final_hidden_dim", model.feature_dim)):
        if key in config:
            _expect(config[key] == value, path,
                    f"config[{key!r}] is {config[key]!r}, but the weights give {value}")
    return model


def _W_from_checkpoint(payload: object, path: str, model: Model) -> np.ndarray:
    """The original's ``save_w`` payload ({"W": tensor}, or a bare tensor) -> W."""
    W = payload.get("W") if isinstance(payload, dict) else payload
    _expect(isinstance(W, np.ndarray), path, "expected {'W': tensor} or a tensor")
    _expect(W.ndim == 2 and W.dtype.kind == "f", path,
            f"W must be a 2-D floating tensor, got {W.dtype} of shape {W.shape}")
    _expect(W.shape[1] == model.feature_dim, path,
            f"W has shape {W.shape}, but the model outputs {model.feature_dim} features")
    return np.ascontiguousarray(W, dtype=np.float32)
