"""The original LEMUR's index directories: ``mlp.pt`` and, once fitted, ``w.pt``.

``mlp.pt`` is the ``torch.save`` of the original's ``save_mlp`` payload:
``{"state_dict": ..., "config": {"model_type", "input_dim", "output_dim",
"hidden_dim", "final_hidden_dim", "num_layers", "activation"}, "output_mean",
"output_std"}``, with ``feature_extractor.{3i}.weight|bias`` (Linear i) and
``feature_extractor.{3i+1}.weight|bias`` (LayerNorm i) in the state dict, or
for an ELM ``feature_extractor.0.weight`` = R (d, h), and the training-only
``output_layer.weight``. ``w.pt`` holds ``{"W": tensor}``. A lone ``mlp.pt``
is a model.

Both read without PyTorch and without running code (:mod:`.torch_archive`),
and are written so that ``torch.load(..., weights_only=True)`` and the
original's ``Lemur(index=DIR).load_mlp()/load_w()`` read them. The original
has no centre, query scale (32), token store, ids or sample; writing a model
that needs a centre or another query scale is an error, and what else the
original cannot hold is left out (the writer says so). Its MLPs have one
width for every hidden layer, and the activations relu, gelu, silu, mish.
The output layer is only used in training: it is written as zeros with one
output.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from lemur.formats import torch_archive
from lemur.formats.record import Record
from lemur.model import DEFAULT_QUERY_SCALE, Layer, check_activation

NAME = "lemur-original"
ACTIVATIONS = ("relu", "gelu", "silu", "mish")


def _expect(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{path}: {message}")


def read(path: str, *, model_only: bool = False) -> Record:
    """The record of an original index directory, or of a lone ``mlp.pt``."""
    if not os.path.isdir(path):
        return _model_record(torch_archive.load(path), path, "lemur-original (mlp.pt)")
    mlp_path = os.path.join(path, "mlp.pt")
    _expect(os.path.exists(mlp_path), path, "not a LEMUR index directory (no mlp.pt)")
    record = _model_record(torch_archive.load(mlp_path), mlp_path, "lemur-original (directory)")
    w_path = os.path.join(path, "w.pt")
    if model_only or not os.path.exists(w_path):
        return record
    return record.replace(W=_W(torch_archive.load(w_path), w_path, record.feature_dim))


def _model_record(payload: object, path: str, file_format: str) -> Record:
    """The original's ``save_mlp`` payload -> the record of its model."""
    _expect(isinstance(payload, dict), path, "expected the dict that LEMUR's save_mlp writes")
    for key in ("state_dict", "config"):
        _expect(key in payload, path, f"missing key {key!r}")
        _expect(isinstance(payload[key], dict), path, f"{key!r} must be a dict")
    state, config = payload["state_dict"], payload["config"]
    kind = config.get("model_type")
    _expect(kind in ("mlp", "elm"), path, f"config['model_type'] must be 'mlp' or 'elm', got {kind!r}")
    activation = config.get("activation")
    try:
        check_activation(activation)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: config['activation']: {exc}") from None

    def tensor(key: str) -> np.ndarray:
        _expect(key in state, path, f"state_dict is missing {key!r}")
        _expect(isinstance(state[key], np.ndarray), path, f"state_dict[{key!r}] is not a tensor")
        return state[key]

    if kind == "elm":
        R = tensor("feature_extractor.0.weight")
        _expect(R.ndim == 2, path, f"the ELM's random matrix must be 2-D, got shape {R.shape}")
        layers = (Layer(np.ascontiguousarray(R.T)),)
    else:
        num_layers = config.get("num_layers")
        _expect(isinstance(num_layers, int) and not isinstance(num_layers, bool) and num_layers >= 1,
                path, f"config['num_layers'] must be a positive int, got {num_layers!r}")
        layers = tuple(
            Layer(tensor(f"feature_extractor.{3 * i}.weight"), tensor(f"feature_extractor.{3 * i}.bias"),
                  tensor(f"feature_extractor.{3 * i + 1}.weight"),
                  tensor(f"feature_extractor.{3 * i + 1}.bias"))
            for i in range(num_layers)
        )
        extra = f"feature_extractor.{3 * num_layers}.weight"
        _expect(extra not in state, path, f"config['num_layers'] is {num_layers}, but state_dict has {extra!r}")
    for layer in layers:
        _expect(layer.weight.ndim == 2, path, f"a layer's weight must be 2-D, got shape {layer.weight.shape}")
    dims = {"input_dim": int(layers[0].weight.shape[1]), "final_hidden_dim": int(layers[-1].weight.shape[0])}
    for key, value in dims.items():
        if key in config:
            _expect(config[key] == value, path, f"config[{key!r}] is {config[key]!r}, but the weights give {value}")
    return Record(kind=kind, layers=layers, activation=activation, file_format=file_format,
                  output_mean=payload.get("output_mean", 0.0), output_std=payload.get("output_std", 1.0))


def _W(payload: object, path: str, feature_dim: int) -> np.ndarray:
    """The original's ``save_w`` payload ({"W": tensor}, or a bare tensor) -> W."""
    W = payload.get("W") if isinstance(payload, dict) else payload
    _expect(isinstance(W, np.ndarray), path, "expected {'W': tensor} or a tensor")
    _expect(W.ndim == 2 and W.dtype.kind == "f", path,
            f"W must be a 2-D floating tensor, got {W.dtype} of shape {W.shape}")
    _expect(W.shape[1] == feature_dim, path,
            f"W has shape {W.shape}, but the model outputs {feature_dim} features")
    return np.ascontiguousarray(W, dtype=np.float32)


def check_writable(record: Record, what: str) -> None:
    """Raise ValueError if the model's layers need what `what` (the original's
    layout, which txtai shares) cannot hold."""
    activation = record.activation or "gelu"
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one {what} know ({', '.join(ACTIVATIONS)})")
    widths = {int(layer.weight.shape[0]) for layer in record.layers[:-1]}
    if len(widths) > 1:
        raise ValueError(f"the hidden layers have widths {sorted(widths)}; {what} give every hidden "
                         "layer one width")


def hidden_dim(record: Record) -> int:
    """The one hidden width of a multi-layer MLP (512, the default, recorded otherwise)."""
    return int(record.layers[0].weight.shape[0]) if len(record.layers) > 1 else 512


def write(record: Record, path: str | os.PathLike[str]) -> str:
    """Write the record as an original index directory at `path` (created if
    need be): ``mlp.pt``, and ``w.pt`` when it has W. Returns a note on what
    was written and what the format could not keep."""
    check_writable(record, "the original's directories")
    if record.center is not None:
        raise ValueError("the model has a centre, which the original's directories cannot hold "
                         "(lemur's and txtai's formats can)")
    if record.query_scale != DEFAULT_QUERY_SCALE:
        raise ValueError(f"the model's query scale is {record.query_scale:g}; the original "
                         "always divides by 32 (lemur's and txtai's formats keep it)")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    h, activation = record.feature_dim, record.activation or "gelu"
    state: OrderedDict[str, np.ndarray] = OrderedDict()
    if record.kind == "elm":
        config = {"model_type": "elm", "input_dim": record.input_dim, "output_dim": 1,
                  "final_hidden_dim": h, "activation": activation}
        state["feature_extractor.0.weight"] = np.ascontiguousarray(record.layers[0].weight.T)
    else:
        config = {"model_type": "mlp", "input_dim": record.input_dim, "output_dim": 1,
                  "hidden_dim": hidden_dim(record), "final_hidden_dim": h,
                  "num_layers": len(record.layers), "activation": activation}
        for index, layer in enumerate(record.layers):
            state[f"feature_extractor.{3 * index}.weight"] = layer.weight
            state[f"feature_extractor.{3 * index}.bias"] = layer.bias
            state[f"feature_extractor.{3 * index + 1}.weight"] = layer.ln_weight
            state[f"feature_extractor.{3 * index + 1}.bias"] = layer.ln_bias
    state["output_layer.weight"] = np.zeros((1, h), np.float32)
    torch_archive.write(os.path.join(path, "mlp.pt"), {
        "state_dict": state, "config": config,
        "output_mean": float(record.output_mean), "output_std": float(record.output_std)})
    written = "an original index directory (mlp.pt"
    if record.W is not None:
        torch_archive.write(os.path.join(path, "w.pt"), {"W": np.ascontiguousarray(record.W, np.float32)})
        written += ", w.pt"
    written += ")"
    custom_ids = record.doc_ids is not None and not np.array_equal(record.doc_ids, np.arange(len(record.doc_ids)))
    left_out = [name for name, kept in (("the token store", record.doc_tokens is not None
                                         and len(record.doc_tokens) > 0),
                                        ("the document ids (rows are 0, 1, ...)", custom_ids),
                                        ("the OLS sample", record.sample is not None),
                                        ("the ANN graph (build it again with index.build_ann)",
                                         record.ann is not None)) if kept]
    if left_out:
        written += "; it has no place for " + ", ".join(left_out)
    return written
