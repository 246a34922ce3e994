"""lemur's own format: one uncompressed ``.npz`` archive.

``np.load(path, allow_pickle=False)`` reads it, and ``lemur.load(path,
mmap=True)`` maps W, its compact copy and the token store in place. Format
version 3 (versions 1, without ``center`` and ``query_scale``, and 2, without
``precision`` and the compact copy, still load). Keys:

==================== ========= ================ =====================================
key                  dtype     shape            meaning
==================== ========= ================ =====================================
``lemur_format``     str       ()               always ``"lemur-retrieval"``
``format_version``   int64     ()               3
``model_kind``       str       ()               ``"mlp"`` or ``"elm"``
``activation``       str       ()               ``"gelu"`` (exact erf), ``"relu"``,
                                                ``"silu"``, ``"mish"``, ``"gelu-tanh"``
``num_layers``       int64     ()               L (1 for an ELM)
``layer_{i}_weight`` float32   (out, in)        Linear i, ``nn.Linear`` layout; for an
                                                ELM the random matrix R transposed
``layer_{i}_bias``   float32   (out,)           MLP only
``layer_{i}_ln_weight`` f32    (out,)           MLP only: LayerNorm gamma
``layer_{i}_ln_bias`` f32      (out,)           MLP only: LayerNorm beta
``output_mean``      float64   ()               mean of the training targets
``output_std``       float64   ()               their (population) standard deviation
``query_scale``      float64   ()               divisor of a query's summed features
                                                (version 2; 32 before)
``center``           float32   (d,)             optional (version 2): the token
                                                space's centre
``W``                float32   (num_docs, h)    optional: one row per document
``doc_tokens``       float32   (tokens, d)      optional (with ``doc_counts``): the
                     or float16                 documents' token vectors, in order, in
                                                the model's space (centred if it has a
                                                centre)
``doc_counts``       int64     (num_docs,)      tokens per document (each >= 1)
``doc_ids``          int64     (num_docs,)      optional: the documents' ids (unique,
                                                >= 0), in W's row order; default 0..n-1
``sample``           float32   (size, d)        optional: the OLS sample S that W is
                                                fitted against (in the model's space)
``precision``        str       ()               optional (version 3): ``"float32"``
                                                (the default), ``"bfloat16"`` or ``"int8"``
``compact_codes``    uint8     (blocks, steps,  with a compact precision: W's compact
                               256)             copy, lanes-packed (``lemur/_compact.h``)
``compact_params``   float32   (blocks, 5 + m,  its row parameters
                               64)
``compact_basis``    float32   (m, h)           its exact directions
``ann_graph``        uint8     (bytes,)         optional: the embedded ANN's HNSW graph,
                                                as usearch serialises it
``ann_basis``        float32   (dims, h)        the directions its rows are projected on
``ann_keys``         int64     (num_docs,)      each row's key in the graph
``ann_settings``     int64     (5,)             dims, connectivity, expansion_add,
                                                candidates_factor, min_candidates
``ann_radius``       float64   ()               the reduction's radius R (see
                                                :mod:`lemur.first_stage.ann`)
==================== ========= ================ =====================================

The ``ann_*`` members (with lemur 0.2; a version-3 reader without them
ignores them and scans W) come together or not at all.

A file of version 3 with a compact precision but no compact copy (written by
hand) gets one built from W when it is opened.

Members are stored uncompressed, each array's data on a 64-byte boundary of
the file (:func:`lemur.formats.archive.write_npz`). Reading checks every
member's header against this table and against the other members before any
array is read. Mapped (``mmap=True``), W, the compact copy, the ANN graph
and the token store are views of the file's pages: nothing of them is read at opening
(their values are not checked, nor their CRCs), and processes that map the
same file share its pages.
"""

from __future__ import annotations

import os

import numpy as np

from lemur._dispatch import kernels
from lemur.first_stage import compact
from lemur.formats.archive import Archive, write_npz
from lemur.formats.npz_members import NpzMembers, layer_arrays
from lemur.formats.record import Record
from lemur.model import DEFAULT_QUERY_SCALE, check_activation

NAME = "lemur"
FORMAT_NAME = "lemur-retrieval"
FORMAT_VERSION = 3
#: Members that may be mapped rather than read.
MAPPED = ("W", "doc_tokens", "compact_codes", "compact_params", "ann_graph")
#: The embedded ANN's members (see :meth:`lemur.first_stage.ann.AnnStage.arrays`).
ANN_MEMBERS = ("ann_graph", "ann_basis", "ann_keys", "ann_settings", "ann_radius")


def holds(members: NpzMembers) -> bool:
    """Whether an .npz is in lemur's format (it names itself)."""
    return "lemur_format" in members.keys


def read(archive: Archive, *, model_only: bool = False, mmap: bool = False) -> Record:
    """The record of a lemur ``.npz`` (only its model with `model_only`;
    W, its compact copy and the token store mapped from the file with
    `mmap`)."""
    members = NpzMembers(archive)
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
    activation = members.string("activation")
    try:
        check_activation(activation)
    except ValueError as exc:
        raise members.error(f"key 'activation': {exc}") from None
    num_layers = members.num_layers()
    # every header first: nothing large is read before the file is known to fit together
    input_dim, feature_dim = members.layer_dims(num_layers, kind)
    if "center" in members.keys:
        members.float_header("center", 1, (input_dim,))
    documents = {} if model_only else _check_documents(members, input_dim, feature_dim, mmap)
    record = Record(
        kind=kind,
        layers=members.layers(num_layers, kind),
        activation=activation,
        file_format=NAME,
        output_mean=members.real("output_mean"),
        output_std=members.real("output_std"),
        query_scale=members.real("query_scale") if "query_scale" in members.keys else DEFAULT_QUERY_SCALE,
        center=members.floats("center", 1) if "center" in members.keys else None,
    )
    if model_only:
        return record
    return record.replace(W=members.W(feature_dim, mapped=mmap), mapped=mmap,
                          **{key: reader() for key, reader in documents.items()})


def _check_documents(members: NpzMembers, input_dim: int, feature_dim: int, mmap: bool) -> dict:
    """Check the headers of W, the token store, ids, sample and compact copy;
    returns key -> a function reading (or mapping) the array."""
    num_docs = members.W_rows(feature_dim)
    readers = {}
    if "doc_tokens" in members.keys or "doc_counts" in members.keys:
        tokens = members.float_header("doc_tokens", 2, (None, input_dim))
        members.header("doc_counts", "iu", "must hold integers", 1, (num_docs,))
        readers["doc_counts"] = lambda: members.integers("doc_counts", (num_docs,))
        stored = np.float16 if tokens.dtype == np.float16 else np.float32
        if mmap and tokens.dtype != stored:
            raise members.error(f"key 'doc_tokens' is {tokens.dtype}; only float32 and float16 token "
                                "stores can be mapped (rewrite the file with lemur.save)")
        readers["doc_tokens"] = (lambda: members.floats("doc_tokens", 2, mapped=True)) if mmap else (
            lambda: np.ascontiguousarray(members.floats("doc_tokens", 2), dtype=stored))
    if "doc_ids" in members.keys:
        members.header("doc_ids", "iu", "must hold integers", 1, (num_docs,))
        readers["doc_ids"] = lambda: members.integers("doc_ids", (num_docs,))
    if "sample" in members.keys:
        members.float_header("sample", 2, (None, input_dim))
        readers["sample"] = lambda: np.ascontiguousarray(members.floats("sample", 2), dtype=np.float32)
    if "precision" in members.keys:
        precision = members.string("precision")
        try:
            compact.check_precision(precision)
        except ValueError as exc:
            raise members.error(f"key 'precision': {exc}") from None
        readers["precision"] = lambda: precision
        if "compact_codes" in members.keys:
            _check_compact_headers(members, precision, num_docs or 0, feature_dim)
            readers["compact"] = lambda: (members.array("compact_codes", "u", "", mapped=mmap),
                                          members.array("compact_params", "f", "", mapped=mmap),
                                          members.floats("compact_basis", 2))
    present = [key for key in ANN_MEMBERS if key in members.keys]
    if present:
        if len(present) != len(ANN_MEMBERS):
            missing = sorted(set(ANN_MEMBERS) - set(present))
            raise members.error(f"the embedded ANN's members come together; {', '.join(missing)} missing")
        members.header("ann_graph", "u", "must hold bytes (uint8)", 1)
        members.float_header("ann_basis", 2, (None, feature_dim))
        members.header("ann_keys", "i", "must hold int64 keys", 1, (num_docs,))
        members.header("ann_settings", "i", "must hold 5 int64 settings", 1, (5,))
        members.header("ann_radius", "f", "must be a float64 radius", 0, ())
        readers["ann"] = lambda: {"ann_graph": members.array("ann_graph", "u", "", mapped=mmap),
                                  "ann_basis": members.floats("ann_basis", 2),
                                  "ann_keys": members.array("ann_keys", "i", ""),
                                  "ann_settings": members.array("ann_settings", "i", ""),
                                  "ann_radius": members.array("ann_radius", "f", "")}
    return readers


def _check_compact_headers(members: NpzMembers, precision: str, num_docs: int, feature_dim: int) -> None:
    """The compact copy's headers against W's shape (its values are checked
    when the index is built)."""
    if precision == "float32":
        raise members.error("a float32 index has no compact copy, but the file has 'compact_codes'")
    basis = members.float_header("compact_basis", 2, (None, feature_dim))
    steps, _ = kernels.compact_layout(compact.KINDS[precision], feature_dim)
    blocks = -(-num_docs // compact.BLOCK)
    members.header("compact_codes", "u", "must hold bytes (uint8)", 3, (blocks, steps, 4 * compact.BLOCK))
    members.float_header("compact_params", 3, (blocks, compact.ROW_PARAMS + basis.shape[0], compact.BLOCK))


def write(record: Record, path: str | os.PathLike[str]) -> str:
    """Write the record to `path` in lemur's format, atomically; returns a note
    on what was written."""
    arrays: dict[str, np.ndarray] = {
        "lemur_format": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "model_kind": np.array(record.kind),
        "activation": np.array(record.activation or "gelu"),
        "num_layers": np.array(len(record.layers), dtype=np.int64),
        "output_mean": np.array(record.output_mean, dtype=np.float64),
        "output_std": np.array(record.output_std, dtype=np.float64),
        "query_scale": np.array(record.query_scale, dtype=np.float64),
        **layer_arrays(record.layers),
    }
    if record.center is not None:
        arrays["center"] = record.center
    optional = {"W": record.W, "doc_tokens": record.doc_tokens, "doc_ids": record.doc_ids,
                "sample": record.sample}
    if record.is_index:
        arrays["precision"] = np.array(record.precision)
    if record.compact is not None:
        optional.update(zip(("compact_codes", "compact_params", "compact_basis"), record.compact))
    if record.ann is not None:
        optional.update(record.ann)
    arrays.update({key: value for key, value in optional.items() if value is not None})
    if record.doc_tokens is not None:
        arrays["doc_counts"] = np.asarray(record.doc_counts, dtype=np.int64)
    if record.doc_ids is not None:
        arrays["doc_ids"] = np.asarray(record.doc_ids, dtype=np.int64)
    # what a mapped opening reads first, together at the start of the file; the mapped arrays after
    arrays = dict(sorted(arrays.items(), key=lambda item: item[0] in MAPPED))
    write_npz(path, arrays)
    if not record.is_index:
        return "lemur model"
    return "lemur index" + ("" if record.precision == "float32" else f" ({record.precision})")
