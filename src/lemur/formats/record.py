"""The neutral record every format reads into and writes from.

A :class:`Record` is what a model or index file holds, as plain NumPy arrays
and settings, with no knowledge of any file layout; :func:`record_of` makes
one from a :class:`~lemur.Model` or :class:`~lemur.Index`, and
:func:`model_of` / :func:`index_of` build those back (checking every array,
as their constructors do).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from lemur.first_stage import compact
from lemur.formats.archive import mapping_of
from lemur.index import Index
from lemur.model import DEFAULT_QUERY_SCALE, Layer, Model, check_activation


@dataclass(frozen=True)
class Record:
    """A model, and optionally an index's documents, as plain arrays.

    `layers` hold the arrays of :class:`~lemur.Layer` (``nn.Linear`` layout;
    an ELM's one layer only its weight, R transposed). `activation` is None
    when the file does not record it (the fork's exports). W, the token store,
    ids and the OLS sample are None when the file has none.
    """

    kind: str
    layers: tuple[Layer, ...]
    activation: str | None
    file_format: str
    output_mean: float = 0.0
    output_std: float = 1.0
    center: np.ndarray | None = None
    query_scale: float = DEFAULT_QUERY_SCALE
    W: np.ndarray | None = None
    doc_tokens: np.ndarray | None = None
    doc_counts: np.ndarray | None = None
    doc_ids: np.ndarray | None = None
    sample: np.ndarray | None = None
    #: the first stage's precision, and for "bfloat16"/"int8" its compact copy
    #: of W as lemur keeps it: (codes, params, basis) of
    #: :class:`lemur.first_stage.compact.CompactRows` (None: built from W)
    precision: str = "float32"
    compact: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    #: the embedded ANN as lemur keeps it: the arrays of
    #: :meth:`lemur.first_stage.ann.AnnStage.arrays` (None: none built)
    ann: dict[str, np.ndarray] | None = None
    #: whether W, the compact copy and the token store are mapped from the
    #: file (their values then are not checked: that would read them all)
    mapped: bool = False
    #: settings a format keeps that lemur's model does not use (txtai's seed)
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        """Whether the file holds documents (W) or what documents are fitted
        against (the OLS sample): it opens as an Index, else as a Model."""
        return self.W is not None or self.sample is not None

    @property
    def input_dim(self) -> int:
        return int(self.layers[0].weight.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.layers[-1].weight.shape[0])

    def replace(self, **changes: object) -> Record:
        return replace(self, **changes)


def record_of(source: Model | Index) -> Record:
    """The record of a Model, or of an Index (its model, W, ids, tokens, sample)."""
    if isinstance(source, Index):
        model = source.model
        arrays = dict(W=source.W, doc_ids=source.doc_ids, doc_tokens=source.doc_tokens,
                      doc_counts=source.doc_counts, sample=source.sample, precision=source.precision,
                      compact=compact_arrays(source), ann=None if source.ann is None else source.ann.arrays())
    elif isinstance(source, Model):
        model, arrays = source, {}
    else:
        raise TypeError(f"expected a lemur.Model or lemur.Index, got {type(source).__name__}")
    return Record(kind=model.kind, layers=model.layers, activation=model.activation,
                  file_format="lemur", output_mean=model.output_mean, output_std=model.output_std,
                  center=model.center, query_scale=model.query_scale, **arrays)


def compact_arrays(index: Index) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The index's compact copy of W as stored: (codes, params, basis), or None."""
    rows = index.compact
    if rows is None:
        return None
    blocks = -(-rows.num_docs // compact.BLOCK)
    return rows.codes[:blocks], rows.params[:blocks], rows.basis


def model_of(record: Record, *, path: str, activation: str | None = None) -> Model:
    """The record's Model. `activation` is for records that do not say which
    (the default is the exact "gelu"); for the others it must agree."""
    if activation is not None:
        check_activation(activation)
    if record.activation is not None and activation is not None and activation != record.activation:
        raise ValueError(
            f"{path} records activation {record.activation!r}; activation={activation!r} "
            "contradicts it (leave activation=None for files that record it)"
        )
    try:
        return Model(list(record.layers), kind=record.kind,
                     activation=record.activation or activation or "gelu",
                     output_mean=record.output_mean, output_std=record.output_std,
                     center=record.center, query_scale=record.query_scale)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{path}: {exc}") from None


def index_of(record: Record, model: Model, *, path: str, num_threads: int | None = None) -> Index:
    """The record's Index over `model` (W empty when the file has only a
    sample), at the record's precision, with its compact copy when it has one
    (else one is built from W). A mapped record's W, compact copy and token
    store are taken as they are; everything else is checked."""
    W = record.W if record.W is not None else np.empty((0, model.feature_dim), np.float32)
    tokens, counts = record.doc_tokens, record.doc_counts
    if tokens is None and record.W is None:  # a bare model and sample (txtai): room for documents
        tokens, counts = np.empty((0, model.input_dim), np.float32), np.empty(0, np.int64)
    try:
        rows = None
        if record.compact is not None:
            rows = compact.CompactRows.check(record.precision, W.shape[0], *record.compact,
                                             check_values=not record.mapped)
        if record.mapped:
            mappings = tuple(mapping for mapping in (mapping_of(W), None if tokens is None else mapping_of(tokens))
                             if mapping is not None)
            index = Index._from_mapped(model, W, tokens, counts, doc_ids=record.doc_ids, sample=record.sample,
                                       precision=record.precision, compact_rows=rows, mappings=mappings,
                                       num_threads=num_threads)
        else:
            index = Index(model, W, tokens, counts, doc_ids=record.doc_ids, sample=record.sample,
                          doc_tokens_centered=True, num_threads=num_threads)
            index = (index._with_compact_rows(rows) if rows is not None
                     else index.with_precision(record.precision, num_threads=num_threads))
        return index if record.ann is None else index._with_ann_arrays(record.ann, mapped=record.mapped)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{path}: {exc}") from None
