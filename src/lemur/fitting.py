"""Fitting W without PyTorch: the OLS sample, the targets, the projection; and
ELM models from scratch.

LEMUR fits one row of W per document by least squares (``REFERENCE.md``,
"Fitting W"): with a sample S of token vectors and Z = psi(S),

    y_j[s] = (max over document j's tokens d of <S_s, d> - output_mean) / output_std
    w_j = pinv(Z) y_j,

pinv from the SVD of Z with singular values <= eps32 * max(Z.shape) * s_max
treated as zero. Here pinv(Z) is computed once per sample and model and kept
(:meth:`OLSSample.projection`): the eigendecomposition of Z^T Z in float64
gives Z's right singular vectors and singular values (squared) to float64
precision, the same cutoff selects them, and pinv(Z)^T = Z V diag(1/s^2) V^T
is formed in float64 and rounded to float32 (a float32 SVD of Z is both slower
and less accurate). Documents then stream through in blocks: the targets
kernel, then one GEMM per block with the cached pinv(Z)^T.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from lemur._dispatch import kernels
from lemur._scratch import aligned_empty, scratch
from lemur._validation import check_positive_int, check_vectors, kernel_values
from lemur.model import Layer, Model

#: The original's default size of the OLS sample.
DEFAULT_SAMPLE_SIZE = 16384

#: Memory for the targets of one block of documents (num_docs x sample size).
TARGETS_BLOCK_BYTES = 32 * 2**20

FLOAT32_EPS = float(np.finfo(np.float32).eps)


class OLSSample:
    """The sample S of learn token vectors that W is fitted against.

    Parameters
    ----------
    rows : ndarray of float32, shape (sample_size, d)
        The sample itself (checked: C order, finite). Keep it with the index:
        documents added later must be fitted against the same S.
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = check_vectors(rows, name="sample")
        if self.rows.shape[0] == 0:
            raise ValueError("sample has no rows")
        self._chunks: np.ndarray | None = None
        self._projection: tuple[Model, np.ndarray] | None = None
        self._bfloat16: np.ndarray | OLSSample | None = None

    @classmethod
    def draw(cls, learn_tokens: np.ndarray, *, size: int | None = DEFAULT_SAMPLE_SIZE,
             seed: int | np.random.Generator | None = None, model: Model | None = None,
             num_threads: int = 1) -> OLSSample:
        """`size` rows of `learn_tokens`, drawn without replacement (all of them,
        in a random order, when there are fewer; in their order with size=None),
        centred as `model` sees tokens when it has a centre."""
        learn_tokens = check_vectors(learn_tokens, name="learn_tokens")
        if learn_tokens.shape[0] == 0:
            raise ValueError("learn_tokens has no rows")
        if size is None:
            rows = learn_tokens
        else:
            size = check_positive_int(size, name="size")
            order = np.random.default_rng(seed).permutation(learn_tokens.shape[0])[:size]
            rows = np.ascontiguousarray(learn_tokens[order])
        return cls(rows if model is None else model.centred(rows, num_threads))

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    def chunks(self) -> np.ndarray:
        """The sample transposed into the MaxSim kernel's chunks (kept)."""
        if self._chunks is None:
            self._chunks = kernels.transposed_chunks(self.rows)
        return self._chunks

    def bfloat16(self, num_threads: int) -> np.ndarray | OLSSample:
        """The sample rounded to bfloat16 (kept), for targets with bfloat16
        products: packed for ``kernels.document_targets_bfloat16`` where the
        CPU has AMX, else as a sample of its own with the rounded rows."""
        if self._bfloat16 is None:
            if kernels.AMX_BFLOAT16:
                self._bfloat16 = kernels.pack_bfloat16_columns(self.rows, num_threads)
            else:
                self._bfloat16 = OLSSample(kernels.rounded_bfloat16(self.rows, num_threads))
        return self._bfloat16

    def projection(self, model: Model, num_threads: int) -> np.ndarray:
        """pinv(psi(S))^T, ``(sample_size, feature_dim)`` float32, computed on
        first use for `model` and kept, packed for ``kernels.gemm_packed``."""
        if self._projection is None or self._projection[0] is not model:
            projection = pseudo_inverse_transposed(
                model._token_features(self.rows, num_threads), num_threads)  # S is in the model's space
            self._projection = (model, kernels.pack_matrix(projection, False))
        return self._projection[1]


def pseudo_inverse_transposed(Z: np.ndarray, num_threads: int) -> np.ndarray:
    """pinv(Z)^T for Z (m, h) float32, with the original's SVD cutoff."""
    m, h = Z.shape
    gram = np.empty((h, h), dtype=np.float64)
    kernels.gram_upper_float64(Z, gram, num_threads)
    eigenvalues = np.empty(h, dtype=np.float64)
    kernels.symmetric_eigen(gram, eigenvalues)  # gram now holds V
    singular_values = np.sqrt(np.maximum(eigenvalues, 0.0))
    keep = singular_values > FLOAT32_EPS * max(m, h) * singular_values.max()
    basis = np.ascontiguousarray(gram[:, keep])
    scaled = basis / eigenvalues[keep]
    factor = np.empty((h, h), dtype=np.float64)  # V diag(1/s^2) V^T
    np.matmul(scaled, basis.T, out=factor)
    out = aligned_empty((m, h), np.float32)
    kernels.multiply_float64(Z, factor, out, num_threads)
    return out


class Progress:
    """A one-line progress report on stderr: "<label>: 120/1000 (12%), 35/s".

    Shown only when `enabled`; None means when stderr is a terminal.
    """

    def __init__(self, total: int, label: str, enabled: bool | None = None) -> None:
        self.total, self.label, self.done = total, label, 0
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.start = self.last = time.perf_counter()

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.2 or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            percent = 100 * self.done / max(self.total, 1)
            print(f"\r{self.label}: {self.done:,}/{self.total:,} ({percent:.0f}%), {rate:,.0f}/s",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def document_targets(sample: OLSSample, tokens: np.ndarray, offsets: np.ndarray,
                     num_threads: int, out: np.ndarray | None = None,
                     matmul_precision: str = "float32") -> np.ndarray:
    """max over each document's tokens of <S_s, token>: (num_docs, sample_size),
    into `out` if given. With matmul_precision="bfloat16" the products are
    those of the values rounded to bfloat16 (float32 sums): AMX tiles where
    the CPU has them, else the float32 kernel on rounded copies."""
    if out is None:
        out = np.empty((offsets.size - 1, sample.size), dtype=np.float32)
    if matmul_precision == "bfloat16":
        rounded = sample.bfloat16(num_threads)
        if isinstance(rounded, np.ndarray):
            kernels.document_targets_bfloat16(rounded, sample.size, kernel_values(tokens), offsets, out,
                                              num_threads)
            return out
        sample, tokens = rounded, kernels.rounded_bfloat16(tokens, num_threads)
    kernels.document_targets(sample.chunks(), sample.size, kernel_values(tokens), offsets, out, num_threads)
    return out


def fit_rows(model: Model, sample: OLSSample, tokens: np.ndarray, offsets: np.ndarray, *,
             num_threads: int, progress: bool | None = None) -> np.ndarray:
    """W rows of the documents (validated tokens, in the model's centred space
    if it has a centre, and offsets): (num_docs, h).

    Documents stream in blocks of at most TARGETS_BLOCK_BYTES of targets.
    """
    projection = sample.projection(model, num_threads)
    num_docs = offsets.size - 1
    W = aligned_empty((num_docs, model.feature_dim), np.float32)
    report = Progress(num_docs, "fitting documents", progress)
    try:
        for start, stop, targets in target_blocks(sample, tokens, offsets, num_threads, reuse=True):
            targets -= np.float32(model.output_mean)
            targets /= np.float32(model.output_std)
            kernels.gemm_packed(targets, projection, W[start:stop], num_threads)
            report.update(stop - start)
    finally:
        report.close()
    return W


def target_blocks(sample: OLSSample, tokens: np.ndarray, offsets: np.ndarray, num_threads: int,
                  reuse: bool = False, matmul_precision: str = "float32"):
    """The documents' targets block by block, at most TARGETS_BLOCK_BYTES a
    block: yields (start, stop, targets (stop - start, sample_size)) for the
    documents start..stop-1. With `reuse`, every block is written into one
    scratch buffer (valid until the next block); `matmul_precision` as
    :func:`document_targets` takes it."""
    num_docs = offsets.size - 1
    block = max(1, TARGETS_BLOCK_BYTES // (4 * sample.size))
    for start in range(0, num_docs, block):
        stop = min(num_docs, start + block)
        out = scratch("targets", (stop - start, sample.size), np.float32) if reuse else None
        # the block's own offsets, from 0, over a view of its tokens
        yield start, stop, document_targets(sample, tokens[offsets[start] : offsets[stop]],
                                            offsets[start : stop + 1] - offsets[start], num_threads, out,
                                            matmul_precision)


class TargetMoments:
    """The mean and population standard deviation of blocks of targets, in
    float64, combined by Chan et al.'s pairwise update of (count, mean, sum
    of squared deviations): one pass, one block in memory at a time."""

    def __init__(self) -> None:
        self.count, self.mean, self.squares = 0, 0.0, 0.0

    def add(self, targets: np.ndarray) -> None:
        targets = targets.astype(np.float64)
        block_count, block_mean = targets.size, float(targets.mean())
        block_squares = float(((targets - block_mean) ** 2).sum())
        delta = block_mean - self.mean
        total = self.count + block_count
        self.squares += block_squares + delta * delta * self.count * block_count / total
        self.mean += delta * block_count / total
        self.count = total

    @property
    def std(self) -> float:
        return float(np.sqrt(self.squares / self.count))


def target_statistics(learn_rows: np.ndarray, tokens: np.ndarray, offsets: np.ndarray,
                      num_threads: int) -> tuple[float, float]:
    """Mean and population standard deviation of max_{d in D} <x, d> over every
    learn row x and document D, as the original normalises its targets."""
    moments = TargetMoments()
    for _, _, targets in target_blocks(OLSSample(learn_rows), tokens, offsets, num_threads, reuse=True):
        moments.add(targets)
    return moments.mean, moments.std


def elm_layers(input_dim: int, hidden_dim: int,
               random: np.random.Generator) -> tuple[Layer, ...]:
    """The layer of an ELM: R ~ N(0, 1), (input_dim, hidden_dim), stored transposed."""
    R = random.standard_normal((input_dim, hidden_dim), dtype=np.float32)
    return (Layer(np.ascontiguousarray(R.T)),)
