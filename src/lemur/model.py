"""The LEMUR feature map psi: a trained MLP or ELM random features.

See ``REFERENCE.md`` for the definition. A :class:`Model` holds its weights as
read-only float32 arrays of its own and turns query token vectors into one
pooled feature vector per query (:meth:`Model.features`) or one feature vector
per token (:meth:`Model.token_features`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lemur._dispatch import kernels
from lemur._scratch import aligned_empty
from lemur._threads import resolve_num_threads
from lemur._validation import check_finite, check_vectors, counts_to_offsets

#: Activation names accepted everywhere. "gelu" is the exact erf form of
#: PyTorch's ``nn.GELU()``; "gelu-tanh" is its tanh approximation, which the
#: Numba fork uses (opt in to reproduce the fork's numbers).
ACTIVATIONS: dict[str, int] = dict(kernels.ACTIVATION_CODES)

#: Model kinds: a trained MLP, or the random features of an ELM (the original's
#: ``epochs=0`` mode).
KINDS: dict[str, int] = {"mlp": kernels.ModelKind.MLP, "elm": kernels.ModelKind.ELM}

#: Ragged batches pool by summing psi over a query's tokens and dividing by
#: the model's query scale (not by the token count): 32 in the original.
DEFAULT_QUERY_SCALE = 32.0


class Layer(NamedTuple):
    """One layer of psi: ``act(LayerNorm(weight @ x + bias) * ln_weight + ln_bias)``.

    `weight` has the ``nn.Linear`` layout ``(output_dim, input_dim)``. An ELM's
    single layer has only `weight` (its random matrix R transposed, ``(h, d)``);
    the other fields are ``None``.
    """

    weight: np.ndarray
    bias: np.ndarray | None = None
    ln_weight: np.ndarray | None = None
    ln_bias: np.ndarray | None = None


def check_activation(activation: object) -> str:
    """Return `activation` if it names a supported activation, else raise."""
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a str, got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
        )
    return activation


def _own_float32(value: object, *, name: str, shape_text: str, ndim: int) -> np.ndarray:
    """A read-only, C-contiguous float32 copy of a real floating array."""
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must hold floating-point values, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_text}, got {array.shape}")
    owned = np.array(array, dtype=np.float32, order="C", copy=True)
    check_finite(owned, name=name)
    owned.flags.writeable = False
    return owned


class Model:
    """The LEMUR feature map psi.

    Parameters
    ----------
    layers : sequence of Layer
        The layers in order. An MLP layer needs all four arrays; an ELM has one
        layer with only `weight` (shape ``(h, d)``).
    kind : {"mlp", "elm"}
        A trained MLP, ``psi(x) = act(LN(A x + b))`` per layer, or ELM random
        features, ``psi(x) = LN_no_affine(sqrt(2 / h) act(R^T x))``.
    activation : {"gelu", "relu", "silu", "mish", "gelu-tanh"}
        "gelu" is the exact erf form (PyTorch's ``nn.GELU()``), as the original
        trains with; "gelu-tanh" is the tanh approximation the Numba fork uses.
    output_mean, output_std : float
        The two statistics of the training targets stored with the model; they
        are needed to fit W for new documents.
    center : ndarray of float32, shape (input_dim,), optional
        The token space's centre (txtai's ``lemur.center``): the model then
        sees every token, of queries and of documents, centred as txtai's
        search path centres it: L2-normalised, the centre subtracted,
        L2-normalised again (an all-zero row is left as it is).
    query_scale : float, default 32
        Ragged batches of queries pool by dividing the sum of psi over a
        query's tokens by this (the original's 32; txtai's ``queryscale``).

    Raises
    ------
    TypeError, ValueError
        If an array has the wrong dtype or shape, the layers do not chain,
        a value is not finite, or `kind`/`activation` is unknown. Messages
        name the array as ``layer_{i}_weight`` etc., like the ``.npz`` keys.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        kind: str = "mlp",
        activation: str = "gelu",
        output_mean: float = 0.0,
        output_std: float = 1.0,
        center: np.ndarray | None = None,
        query_scale: float = DEFAULT_QUERY_SCALE,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; expected 'mlp' or 'elm'")
        self._kind = kind
        self._activation = check_activation(activation)
        self._layers = self._check_layers(layers, kind)
        self._output_mean = self._check_statistic(output_mean, "output_mean")
        self._output_std = self._check_statistic(output_std, "output_std")
        if not self._output_std > 0:
            raise ValueError(f"output_std must be > 0, got {self._output_std}")
        self._query_scale = self._check_statistic(query_scale, "query_scale")
        if not self._query_scale > 0:
            raise ValueError(f"query_scale must be > 0, got {self._query_scale}")
        self._center = None
        if center is not None:
            self._center = _own_float32(center, name="center", shape_text="(input_dim,)", ndim=1)
            if self._center.shape != (self.input_dim,):
                raise ValueError(
                    f"center must have shape ({self.input_dim},) to match the input dimension, "
                    f"got {self._center.shape}")
        # per layer: weight^T packed for the kernels' products, then the vectors
        self._kernel_layers = [
            (kernels.pack_matrix(layer.weight, True), layer.bias, layer.ln_weight, layer.ln_bias,
             int(layer.weight.shape[1]), int(layer.weight.shape[0]))
            for layer in self._layers
        ]

    @staticmethod
    def _check_layers(layers: Sequence[Layer], kind: str) -> tuple[Layer, ...]:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise TypeError(f"layers must be a sequence of Layer, got {type(layers).__name__}")
        if len(layers) == 0:
            raise ValueError("layers is empty: a model needs at least one layer")
        if kind == "elm" and len(layers) != 1:
            raise ValueError(f"an ELM model has exactly one layer, got {len(layers)}")
        checked = []
        previous_output = None
        for index, layer in enumerate(layers):
            prefix = f"layer_{index}_"
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{index}] must be a lemur.Layer, got {type(layer).__name__}")
            weight = _own_float32(
                layer.weight, name=prefix + "weight", shape_text="(output_dim, input_dim)", ndim=2
            )
            output_dim, input_dim = weight.shape
            if output_dim == 0 or input_dim == 0:
                raise ValueError(f"{prefix}weight must not be empty, got shape {weight.shape}")
            if previous_output is not None and input_dim != previous_output:
                raise ValueError(
                    f"{prefix}weight has shape {weight.shape}: its input dimension {input_dim} "
                    f"does not match the output dimension {previous_output} of layer_{index - 1}_weight"
                )
            vectors = {}
            for field in ("bias", "ln_weight", "ln_bias"):
                value = getattr(layer, field)
                if kind == "elm":
                    if value is not None:
                        raise ValueError(f"an ELM layer has no {field}; {prefix}{field} must be None")
                    continue
                if value is None:
                    raise ValueError(f"an MLP layer needs {prefix}{field}, got None")
                vector = _own_float32(
                    value, name=prefix + field, shape_text=f"({output_dim},)", ndim=1
                )
                if vector.shape != (output_dim,):
                    raise ValueError(
                        f"{prefix}{field} must have shape ({output_dim},) to match "
                        f"{prefix}weight {weight.shape}, got {vector.shape}"
                    )
                vectors[field] = vector
            checked.append(Layer(weight, **vectors))
            previous_output = output_dim
        return tuple(checked)

    @staticmethod
    def _check_statistic(value: object, name: str) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
        if not math.isfinite(number):
            raise ValueError(f"{name} must be finite, got {number}")
        return number

    # -- description -------------------------------------------------------

    @property
    def kind(self) -> str:
        """``"mlp"`` or ``"elm"``."""
        return self._kind

    @property
    def activation(self) -> str:
        """Name of the activation function."""
        return self._activation

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers (read-only float32 arrays)."""
        return self._layers

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def input_dim(self) -> int:
        """Dimension d of the token vectors psi takes."""
        return int(self._layers[0].weight.shape[1])

    @property
    def feature_dim(self) -> int:
        """Dimension h of psi's output (``final_hidden_dim`` in the original)."""
        return int(self._layers[-1].weight.shape[0])

    @property
    def output_mean(self) -> float:
        return self._output_mean

    @property
    def output_std(self) -> float:
        return self._output_std

    @property
    def center(self) -> np.ndarray | None:
        """The token space's centre (read-only, ``(input_dim,)``), or None."""
        return self._center

    @property
    def query_scale(self) -> float:
        """The divisor of a ragged query's summed features (32 in the original)."""
        return self._query_scale

    @property
    def nbytes(self) -> int:
        """Bytes held by the weights."""
        return (sum(array.nbytes for layer in self._layers for array in layer if array is not None)
                + (0 if self._center is None else self._center.nbytes))

    def __repr__(self) -> str:
        widths = " -> ".join(
            [str(self.input_dim)] + [str(layer.weight.shape[0]) for layer in self._layers]
        )
        extras = "" if self._center is None else ", centred"
        if self._query_scale != DEFAULT_QUERY_SCALE:
            extras += f", query_scale={self._query_scale:g}"
        return (
            f"Model(kind={self._kind!r}, activation={self._activation!r}, "
            f"layers={self.num_layers}, dims={widths}{extras})"
        )

    def centred(self, tokens: np.ndarray, num_threads: int) -> np.ndarray:
        """The tokens as the model sees them (validated float32 or float16
        rows): centred float32 copies if the model has a centre, else
        `tokens` themselves."""
        if self._center is None or tokens.shape[0] == 0:
            return tokens
        out = aligned_empty(tokens.shape, np.float32)
        kernels.center_tokens(np.ascontiguousarray(tokens, dtype=np.float32), self._center, out, num_threads)
        return out

    # -- computation -------------------------------------------------------

    def features(
        self,
        tokens: np.ndarray,
        counts: object = None,
        *,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Pooled query features, one row per query.

        Parameters
        ----------
        tokens : ndarray of float32
            Either a ragged batch, shape ``(num_tokens, d)``: the token vectors
            of all queries one after the other, with `counts`; or a padded
            batch, shape ``(num_queries, N, d)``, without `counts`.
        counts : array-like of int, optional
            Tokens per query for a ragged batch, summing to ``num_tokens``.
            A query may have 0 tokens (its features are 0).
        num_threads : int, optional
            Threads to use; default ``OMP_NUM_THREADS`` if set, else all cores.

        Returns
        -------
        ndarray of float32, shape (num_queries, feature_dim)
            Ragged: the sum of psi over each query's tokens divided by the
            query scale (32 unless the model says otherwise; a constant, not the
            token count, as in the original). Padded: the mean over the N axis,
            padding rows included. With a centre, psi of the centred tokens.
        """
        threads = resolve_num_threads(num_threads)
        if counts is None:
            if isinstance(tokens, np.ndarray) and tokens.ndim == 2:
                raise ValueError(
                    "tokens is 2-D, which is a ragged batch: pass counts (tokens per query), "
                    "or a 3-D (num_queries, N, d) array for a padded batch"
                )
            tokens = check_vectors(
                tokens, name="tokens", dim=self.input_dim, ndim=3, num_threads=threads
            )
            num_queries, num_padded, _ = tokens.shape
            if num_queries == 0:
                raise ValueError("tokens has no queries: the batch must hold at least one")
            if num_padded == 0:
                raise ValueError("padded tokens must have N >= 1 token rows per query, got N = 0")
            flat = tokens.reshape(num_queries * num_padded, self.input_dim)
            offsets = np.arange(0, flat.shape[0] + 1, num_padded, dtype=np.int64)
            divisor = float(num_padded)
        else:
            tokens = check_vectors(tokens, name="tokens", dim=self.input_dim, num_threads=threads)
            offsets = counts_to_offsets(
                counts, name="counts", total=tokens.shape[0], total_name="tokens"
            )
            flat = tokens
            divisor = self._query_scale
        return self._pooled(self.centred(flat, threads), offsets, divisor, threads)

    def token_features(self, tokens: np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
        """psi of every token, without pooling.

        Parameters
        ----------
        tokens : ndarray of float32, shape (num_tokens, d)
        num_threads : int, optional

        Returns
        -------
        ndarray of float32, shape (num_tokens, feature_dim)
        """
        threads = resolve_num_threads(num_threads)
        tokens = check_vectors(tokens, name="tokens", dim=self.input_dim, num_threads=threads)
        return self._token_features(self.centred(tokens, threads), threads)

    def _token_features(self, tokens: np.ndarray, num_threads: int) -> np.ndarray:
        """psi of validated tokens already in the model's (centred) space."""
        out = aligned_empty((tokens.shape[0], self.feature_dim), np.float32)
        self._run(tokens, np.zeros(1, dtype=np.int64), 0.0, out, num_threads)
        return out

    def _pooled(
        self, tokens: np.ndarray, query_offsets: np.ndarray, pool_divisor: float, num_threads: int
    ) -> np.ndarray:
        """Pooled features of validated tokens (in the model's space) and offsets."""
        out = aligned_empty((query_offsets.size - 1, self.feature_dim), np.float32)
        self._run(tokens, query_offsets, pool_divisor, out, num_threads)
        return out

    def _run(
        self,
        tokens: np.ndarray,
        query_offsets: np.ndarray,
        pool_divisor: float,
        out: np.ndarray,
        num_threads: int,
    ) -> None:
        if out.shape[0] == 0:
            return
        kernels.compute_features(
            tokens,
            query_offsets,
            self._kernel_layers,
            KINDS[self._kind],
            ACTIVATIONS[self._activation],
            math.sqrt(2.0 / self.feature_dim),
            pool_divisor,
            out,
            kernels.feature_workspace(self._kernel_layers, num_threads),
            num_threads,
        )

    # -- files -------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, format: str = "lemur") -> None:
        """Write the model to `path`: see :func:`lemur.save`."""
        from lemur import formats

        formats.save(self, path, format=format)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, activation: str | None = None) -> Model:
        """The model in any file :func:`lemur.load` reads (an index file gives
        its model).

        Parameters
        ----------
        path : path-like
        activation : str, optional
            Only for files that do not record it (the fork's): which activation
            the model was trained with; default "gelu" (exact). For the other
            formats it must be None or match the recorded one.
        """
        from lemur import formats

        return formats.load_model(path, activation=activation)
