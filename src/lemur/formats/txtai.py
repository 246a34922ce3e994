"""txtai's LEMUR artifacts: a directory with ``config.json`` and ``model.safetensors``.

What txtai's ``LemurTrainer`` writes and its ``vectors.lemur`` setting loads
(``txtai/models/pooling/lemur.py``):

* ``config.json``: ``modeltype`` ("mlp" or "elm"), ``inputdim``, ``hiddendim``,
  ``finalhiddendim``, ``layers``, ``activation``, ``queryscale`` (the divisor
  of a query's summed features), ``seed``, and for trained models
  ``training`` (the selected epoch and loss); txtai builds its model with
  ``LemurModel(**config)``, so no other key may appear (``outputdim`` is
  allowed and unused here).
* ``model.safetensors``: ``featureextractor.{3i}.weight|bias`` (Linear i),
  ``featureextractor.{3i+1}.weight|bias`` (LayerNorm i), or for an ELM
  ``featureextractor.0.weight`` = R (d, h), not transposed; ``lemur.mean`` and
  ``lemur.std`` ([1] each: the target statistics), ``lemur.sample`` (the OLS
  sample, in the centred space when there is a centre) and optionally
  ``lemur.center`` (d). txtai loads the feature extractor strictly, so every
  tensor must be there and no other.

An artifact opens as an :class:`~lemur.Index` with no documents and the
artifact's sample, so that ``add_documents`` works at once. Writing one needs
the OLS sample; txtai keeps documents elsewhere, so W, the token store and the
ids are left out (the writer says so). The seed and the training record are
kept through a read and a write.
"""

from __future__ import annotations

import json
import os

import numpy as np

from lemur.formats import safetensors
from lemur.formats.archive import write_atomically
from lemur.formats.original import check_writable, hidden_dim
from lemur.formats.record import Record
from lemur.model import Layer

NAME = "txtai"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CONFIG_KEYS = {"modeltype", "inputdim", "hiddendim", "finalhiddendim", "layers", "activation",
               "queryscale", "seed", "outputdim", "training"}
#: The largest config.json read (txtai's are a few hundred bytes).
MAX_CONFIG_BYTES = 2**20


def holds(path: str) -> bool:
    """Whether `path` is a directory holding a txtai artifact."""
    return os.path.isfile(os.path.join(path, CONFIG)) and os.path.isfile(os.path.join(path, WEIGHTS))


def _expect(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{path}: {message}")


def _config(path: str) -> dict[str, object]:
    config_path = os.path.join(path, CONFIG)
    _expect(os.path.getsize(config_path) <= MAX_CONFIG_BYTES, config_path, "is too large for a config")
    try:
        with open(config_path, encoding="utf-8") as source:
            config = json.load(source)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_path}: not JSON ({exc})") from None
    _expect(isinstance(config, dict), config_path, "must hold a JSON object")
    unknown = set(config) - CONFIG_KEYS
    _expect(not unknown, config_path, f"unknown keys {sorted(unknown)} (txtai would refuse them)")
    for key in ("modeltype", "inputdim", "finalhiddendim", "activation", "queryscale"):
        _expect(key in config, config_path, f"missing key {key!r}")
    for key in ("inputdim", "finalhiddendim", "layers", "hiddendim"):
        value = config.get(key, 1)
        _expect(isinstance(value, int) and not isinstance(value, bool) and value >= 1, config_path,
                f"{key} must be a positive integer, got {value!r}")
    scale = config["queryscale"]
    _expect(isinstance(scale, (int, float)) and not isinstance(scale, bool), config_path,
            f"queryscale must be a number, got {scale!r}")
    _expect(config["modeltype"] in ("mlp", "elm"), config_path,
            f"modeltype must be 'mlp' or 'elm', got {config['modeltype']!r}")
    return config


def read(path: str, *, model_only: bool = False) -> Record:
    """The record of a txtai artifact directory (its sample unless `model_only`)."""
    config = _config(path)
    weights = os.path.join(path, WEIGHTS)
    tensors, _ = safetensors.read(weights)
    kind = str(config["modeltype"])

    def take(name: str, shape: tuple[int | None, ...]) -> np.ndarray:
        _expect(name in tensors, weights, f"missing tensor {name!r}")
        tensor = tensors.pop(name)
        _expect(tensor.dtype == np.float32 and tensor.ndim == len(shape)
                and all(want is None or got == want for got, want in zip(tensor.shape, shape)),
                weights, f"tensor {name!r} must be floats of shape {shape}, got {tensor.dtype} {tensor.shape}")
        return tensor

    d, h = int(config["inputdim"]), int(config["finalhiddendim"])
    if kind == "elm":
        layers = (Layer(np.ascontiguousarray(take("featureextractor.0.weight", (d, h)).T)),)
    else:
        num_layers = int(config.get("layers", 1))
        width = int(config.get("hiddendim", 512))
        dims = [d] + [width] * (num_layers - 1) + [h]
        layers = tuple(
            Layer(take(f"featureextractor.{3 * i}.weight", (dims[i + 1], dims[i])),
                  take(f"featureextractor.{3 * i}.bias", (dims[i + 1],)),
                  take(f"featureextractor.{3 * i + 1}.weight", (dims[i + 1],)),
                  take(f"featureextractor.{3 * i + 1}.bias", (dims[i + 1],)))
            for i in range(num_layers)
        )
    mean, std = take("lemur.mean", (1,)), take("lemur.std", (1,))
    sample = take("lemur.sample", (None, d))
    center = take("lemur.center", (d,)) if "lemur.center" in tensors else None
    _expect(not tensors, weights, f"unknown tensors {sorted(tensors)} (txtai would refuse them)")
    extras = {key: config[key] for key in ("seed", "training") if key in config}
    if kind == "elm" or len(layers) == 1:  # recorded, though no layer has that width
        extras["hiddendim"] = config.get("hiddendim", 512)
    return Record(kind=kind, layers=layers, activation=str(config["activation"]), file_format=NAME,
                  output_mean=float(mean[0]), output_std=float(std[0]), center=center,
                  query_scale=float(config["queryscale"]), sample=None if model_only else sample,
                  extras=extras)


def write(record: Record, path: str | os.PathLike[str]) -> str:
    """Write the record as a txtai artifact directory at `path` (created if need
    be). Returns a note on what was written and what was left out."""
    check_writable(record, "txtai's artifacts")
    if record.sample is None:
        raise ValueError("txtai's artifacts need the OLS sample (txtai fits document weights "
                         "against it): attach one with index.attach_sample(...) first")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    scale = record.query_scale
    hidden = hidden_dim(record) if len(record.layers) > 1 else record.extras.get("hiddendim", 512)
    config = {"modeltype": record.kind, "inputdim": record.input_dim, "hiddendim": hidden,
              "finalhiddendim": record.feature_dim, "layers": len(record.layers),
              "activation": record.activation or "gelu",
              "queryscale": int(scale) if float(scale).is_integer() else scale,
              "seed": record.extras.get("seed", 0)}
    if "training" in record.extras:
        config["training"] = record.extras["training"]
    tensors: dict[str, np.ndarray] = {
        "lemur.mean": np.array([record.output_mean], np.float32),
        "lemur.std": np.array([record.output_std], np.float32),
        "lemur.sample": record.sample,
    }
    if record.center is not None:
        tensors["lemur.center"] = record.center
    if record.kind == "elm":
        tensors["featureextractor.0.weight"] = np.ascontiguousarray(record.layers[0].weight.T)
    else:
        for index, layer in enumerate(record.layers):
            tensors[f"featureextractor.{3 * index}.weight"] = layer.weight
            tensors[f"featureextractor.{3 * index}.bias"] = layer.bias
            tensors[f"featureextractor.{3 * index + 1}.weight"] = layer.ln_weight
            tensors[f"featureextractor.{3 * index + 1}.bias"] = layer.ln_bias
    safetensors.write(os.path.join(path, WEIGHTS), tensors)
    text = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    write_atomically(os.path.join(path, CONFIG), lambda stream: stream.write(text))
    left_out = [name for name, value in (("W", record.W), ("the token store", record.doc_tokens))
                if value is not None and len(value)] + (["the ANN graph"] if record.ann is not None else [])
    return "a txtai LEMUR artifact (config.json, model.safetensors)" + (
        f"; txtai keeps documents elsewhere, so {' and '.join(left_out)} "
        f"{'were' if len(left_out) > 1 else 'was'} left out" if left_out else "")
