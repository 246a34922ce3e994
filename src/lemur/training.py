"""Building indexes from scratch: :func:`train` (the original LEMUR's MLP
training, without PyTorch) and :func:`fit_elm` (its ``epochs=0`` case).

The procedure is the original's ``Lemur.fit``:

1. Training data: a random subset T of `train_subset_size` documents and a
   random subset X of `learn_subset_size` learn token vectors (the corpus'
   own tokens unless query-side ones are given). Targets Y[x, j] = max over
   document j's tokens t of <x, t>, (|X|, |T|), standardised by their
   population mean and standard deviation (the model keeps both).
2. The model: L layers of Linear -> LayerNorm -> activation (`hidden_dim`
   wide inside, `final_hidden_dim` the last), then a training-only linear
   output layer (final_hidden_dim -> |T|, no bias). PyTorch's default
   initialisation: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
   LayerNorm's gamma 1 and beta 0.
3. Mean squared error; Adam (lr, betas (0.9, 0.999), eps 1e-8); batches in a
   fresh random order every epoch; the gradients' global norm clipped to
   `grad_clip`; the epoch with the lowest loss is kept (the mean of its
   batches' losses, or the validation loss with `validation_split`).
4. W for every document against an OLS sample of `sample_size` learn
   vectors, as :meth:`lemur.Index.add_documents` fits rows.

The forward and backward passes run on lemur's kernels: OpenBLAS sgemm per
block of rows, or with matmul_precision="bfloat16" AMX tile products
(lemur/_amx.h) where the CPU has them (the output layer's products are
nearly all the work: about 3 x 2 x |batch| x final_hidden_dim x |T|
operations per batch), fused
LayerNorm + activation passes, the squared-error gradient and Adam in place;
every reduction sums in a fixed order, so a seed gives the same model for
the same number of threads. The targets are computed once (lemur's MaxSim
targets kernel) and kept in float32: |X| x |T| x 4 bytes, 3.3 GB at the
defaults.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np

from lemur import fitting
from lemur._dispatch import kernels
from lemur._threads import resolve_num_threads
from lemur._validation import check_positive_int, check_vectors
from lemur.documents import Documents
from lemur.index import Index
from lemur.model import ACTIVATIONS, Layer, Model, check_activation

#: Activations the original trains with (lemur's models also run "gelu-tanh").
TRAINABLE_ACTIVATIONS = ("relu", "gelu", "silu", "mish", "gelu-tanh")
#: matmul_precision -> the kernel of the forward and backward products.
MATMULS = {"float32": kernels.matmul, "bfloat16": kernels.matmul_bfloat16}
#: Adam's constants (PyTorch's defaults).
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


# -- the data -------------------------------------------------------------------


def _subsets(documents: Documents, learn: np.ndarray, train_subset_size: int, learn_subset_size: int,
             random: np.random.Generator) -> tuple[Documents, np.ndarray]:
    """The training documents and learn vectors, drawn as the original draws them."""
    chosen = np.zeros(documents.num_docs, dtype=bool)
    chosen[random.permutation(documents.num_docs)[:train_subset_size]] = True
    learn_rows = random.permutation(learn.shape[0])[:learn_subset_size]
    return documents.subset(chosen), np.ascontiguousarray(learn[learn_rows], dtype=np.float32)


def training_targets(learn_rows: np.ndarray, documents: Documents, num_threads: int,
                     progress: bool | None = None, matmul_precision: str = "float32"
                     ) -> tuple[np.ndarray, float, float]:
    """Y (num_learn, num_docs) float32, standardised, with the mean and
    population standard deviation it was standardised by (computed block by
    block as the targets are: no copy of Y); the products in
    `matmul_precision` (:func:`lemur.fitting.document_targets`)."""
    targets = np.empty((learn_rows.shape[0], documents.num_docs), np.float32)
    moments = fitting.TargetMoments()
    report = fitting.Progress(documents.num_docs, "training targets", progress)
    for start, stop, part in fitting.target_blocks(fitting.OLSSample(learn_rows), documents.tokens,
                                                   documents.offsets, num_threads, reuse=True,
                                                   matmul_precision=matmul_precision):
        targets[:, start:stop] = part.T
        moments.add(part)
        report.update(stop - start)
    report.close()
    mean, std = moments.mean, moments.std
    if not std > 0:
        raise ValueError("the training targets are all equal (every token and document alike?): nothing to learn")
    targets -= np.float32(mean)
    targets /= np.float32(std)
    return targets, mean, std


# -- the model being trained -----------------------------------------------------


@dataclass
class _Parameter:
    """One parameter array, its gradient and Adam's moments."""

    value: np.ndarray
    grad: np.ndarray
    first_moment: np.ndarray
    second_moment: np.ndarray

    @classmethod
    def of(cls, value: np.ndarray) -> _Parameter:
        value = np.array(value, dtype=np.float32, order="C")  # a copy: training writes into it
        return cls(value, np.zeros_like(value), np.zeros_like(value), np.zeros_like(value))


def initial_weights(input_dim: int, num_layers: int, hidden_dim: int, final_hidden_dim: int, num_outputs: int,
                    random: np.random.Generator) -> tuple[list[Layer], np.ndarray]:
    """PyTorch's default initialisation of the layers and the output layer
    (drawn from `random`: the same distribution, not PyTorch's numbers)."""
    layers = []
    dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [final_hidden_dim]
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        bound = 1 / math.sqrt(fan_in)
        layers.append(Layer(random.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
                            random.uniform(-bound, bound, fan_out).astype(np.float32),
                            np.ones(fan_out, np.float32), np.zeros(fan_out, np.float32)))
    bound = 1 / math.sqrt(final_hidden_dim)
    return layers, random.uniform(-bound, bound, (num_outputs, final_hidden_dim)).astype(np.float32)


class Trainer:
    """The MLP and its output layer under training: one :meth:`step` per
    batch (forward, backward, clipping, Adam), :meth:`loss` for validation.

    Parameters
    ----------
    layers : list of Layer
        The starting weights of psi (each with bias and LayerNorm).
    output : ndarray of float32, (num_outputs, final_hidden_dim)
        The output layer's starting weights.
    activation : str
    lr, grad_clip : float
        grad_clip <= 0: no clipping.
    num_threads : int
    matmul_precision : {"float32", "bfloat16"}
        The matrix products' operands: float32, or rounded to bfloat16 with
        float32 accumulation (see :func:`train`).
    """

    def __init__(self, layers: list[Layer], output: np.ndarray, activation: str, lr: float, grad_clip: float,
                 num_threads: int, matmul_precision: str = "float32") -> None:
        self._matmul = MATMULS[matmul_precision]
        self.activation = activation
        self._code = ACTIVATIONS[activation]
        self.layers = [tuple(_Parameter.of(array) for array in (layer.weight, layer.bias, layer.ln_weight,
                                                                 layer.ln_bias)) for layer in layers]
        self.output = _Parameter.of(output)
        self.lr, self.grad_clip, self.num_threads, self.steps = lr, grad_clip, num_threads, 0

    @property
    def parameters(self) -> list[_Parameter]:
        """In PyTorch's order: each layer's weight, bias, gamma, beta; the output layer."""
        return [parameter for layer in self.layers for parameter in layer] + [self.output]

    def model_layers(self) -> list[Layer]:
        """Copies of psi's current weights."""
        return [Layer(*(parameter.value.copy() for parameter in layer)) for layer in self.layers]

    def _forward(self, x: np.ndarray) -> tuple[list, np.ndarray]:
        """The activations of each layer (input, normalized, inverse std, output) and the predictions."""
        threads, saved, h = self.num_threads, [], x
        for weight, bias, gamma, beta in self.layers:
            values = np.empty((h.shape[0], weight.value.shape[0]), np.float32)
            self._matmul(h, False, weight.value, True, values, False, threads)
            normalized = np.empty_like(values)
            inverse_std = np.empty(values.shape[0], np.float32)
            kernels.layer_forward(values, bias.value, gamma.value, beta.value, normalized, inverse_std,
                                  self._code, threads)
            saved.append((h, normalized, inverse_std))
            h = values
        predictions = np.empty((h.shape[0], self.output.value.shape[0]), np.float32)
        self._matmul(h, False, self.output.value, True, predictions, False, threads)
        saved.append((h, None, None))
        return saved, predictions

    def loss(self, x: np.ndarray, y: np.ndarray, batch_size: int = 4096) -> float:
        """The mean squared error over these rows (no update)."""
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            _, predictions = self._forward(x[start : start + batch_size])
            total += kernels.squared_error_gradient(predictions, y, np.arange(start, start + predictions.shape[0]),
                                                    0.0, self.num_threads)
        return total / max(1, y.size)

    def step(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> float:
        """One batch: forward, the mean squared error's gradients, clipping,
        Adam. Returns the batch's loss."""
        loss = self.gradients(x, y, rows)
        self._update()
        return loss

    def gradients(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> float:
        """The batch's mean squared error, its gradients left in each
        parameter's `grad` (no update). The batch's targets: the rows `rows`
        of y (int64), or all of y."""
        threads = self.num_threads
        rows = np.arange(x.shape[0]) if rows is None else rows
        saved, predictions = self._forward(x)
        squared = kernels.squared_error_gradient(predictions, y, rows, 2.0 / predictions.size, threads)
        grad = predictions  # now d loss / d predictions
        last = saved[-1][0]
        self._matmul(grad, True, last, False, self.output.grad, False, threads)
        upstream = np.empty_like(last)
        self._matmul(grad, False, self.output.value, False, upstream, False, threads)
        for position in range(len(self.layers) - 1, -1, -1):
            weight, bias, gamma, beta = self.layers[position]
            h, normalized, inverse_std = saved[position]
            kernels.layer_backward(upstream, normalized, inverse_std, gamma.value, beta.value, self._code,
                                   bias.grad, gamma.grad, beta.grad, threads)
            self._matmul(upstream, True, h, False, weight.grad, False, threads)
            if position:
                below = np.empty_like(h)
                self._matmul(upstream, False, weight.value, False, below, False, threads)
                upstream = below
        return squared / predictions.size

    def _update(self) -> None:
        """Clip the gradients' global norm, then one Adam step (PyTorch's
        clip_grad_norm_ and Adam, in float32)."""
        scale = 1.0
        if self.grad_clip > 0:
            norm = math.sqrt(sum(kernels.sum_of_squares(parameter.grad.reshape(-1), self.num_threads)
                                 for parameter in self.parameters))
            scale = min(1.0, self.grad_clip / (norm + 1e-6))
        self.steps += 1
        step_size = self.lr / (1 - BETA1**self.steps)
        correction = math.sqrt(1 - BETA2**self.steps)
        for parameter in self.parameters:
            kernels.adam_step(parameter.value.reshape(-1), parameter.grad.reshape(-1),
                              parameter.first_moment.reshape(-1), parameter.second_moment.reshape(-1),
                              scale, BETA1, BETA2, step_size, correction, EPS, self.num_threads)


# -- the loop -------------------------------------------------------------------


class _Stop:
    """Ctrl-C while training: the first stops after the current batch (the
    best epoch so far is kept), a second one interrupts at once. Installed
    only in the main thread (elsewhere signals cannot be caught)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nlemur.train: stopping after this batch (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _EpochProgress:
    """"epoch 3/10, batch 120/196, loss 0.4321, best 0.4410 (epoch 2), ETA 2m10s" on stderr."""

    def __init__(self, epochs: int, batches: int, enabled: bool | None) -> None:
        self.epochs, self.batches = epochs, batches
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.start = self.last = time.perf_counter()

    def update(self, epoch: int, batch: int, loss: float, best: float, best_epoch: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.5 and batch < self.batches):
            return
        self.last = now
        done = epoch * self.batches + batch
        remaining = (now - self.start) / max(1, done) * (self.epochs * self.batches - done)
        best_text = f", best {best:.5f} (epoch {best_epoch})" if best_epoch else ""
        print(f"\repoch {epoch + 1}/{self.epochs}, batch {batch}/{self.batches}, loss {loss:.5f}{best_text}, "
              f"ETA {int(remaining // 60)}m{int(remaining % 60):02d}s ", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def _check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_positive_real(value: object, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


def train(
    doc_tokens: np.ndarray,
    doc_counts: object,
    *,
    learn_tokens: np.ndarray | None = None,
    epochs: int = 10,
    num_layers: int = 1,
    hidden_dim: int = 512,
    final_hidden_dim: int = 2048,
    activation: str = "gelu",
    lr: float = 3e-3,
    batch_size: int = 512,
    grad_clip: float = 0.5,
    train_subset_size: int = 8192,
    learn_subset_size: int = 100_000,
    sample_size: int = fitting.DEFAULT_SAMPLE_SIZE,
    validation_split: float = 0.0,
    keep_tokens: bool = True,
    seed: int | None = 0,
    matmul_precision: str = "float32",
    progress: bool | None = True,
    num_threads: int | None = None,
) -> Index:
    """Train a LEMUR model on a corpus and index it (the original's
    ``Lemur.fit``, see the module's notes), without PyTorch.

    Parameters
    ----------
    doc_tokens : ndarray of float32 or float16, shape (num_doc_tokens, d)
    doc_counts : array-like of int, shape (num_docs,)
    learn_tokens : ndarray of float32, optional
        The learn set (query-side token vectors, when there are some);
        default: the documents' tokens, as the original does.
    epochs : int, default 10
        0 builds an ELM index instead (:func:`fit_elm`, with `final_hidden_dim`).
    num_layers, hidden_dim, final_hidden_dim, activation
        The model: `num_layers` of Linear -> LayerNorm -> activation,
        `hidden_dim` wide inside and `final_hidden_dim` the last.
    lr, batch_size, grad_clip
        Adam's learning rate, the batch size, the clipping norm (0: none).
    train_subset_size, learn_subset_size : int
        The training documents and learn vectors (all, when there are fewer).
    sample_size : int, default 16384
        The OLS sample W is fitted against (kept by the index).
    validation_split : float, default 0.0
        A fraction of the learn vectors held out: the epoch with the lowest
        loss on them is kept (else the one with the lowest training loss).
    keep_tokens : bool, default True
        Keep the documents' tokens in the index, for the exact rerank.
    seed : int, optional
        Seeds NumPy's generator: the subsets, the initial weights, every
        epoch's order and the OLS sample (the same seed and number of
        threads train the same model; PyTorch's random numbers are not
        reproduced).
    matmul_precision : {"float32", "bfloat16"}, default "float32"
        The forward and backward matrix products: in float32, or with their
        operands rounded to bfloat16 and float32 accumulation (what PyTorch's
        autocast does; the weights, Adam's moments, LayerNorm and the loss
        stay float32). bfloat16 runs on AMX tiles where the CPU has them
        (Intel Xeon 4th generation and later: about 3x faster training); on
        other CPUs it computes the same rounded products with float32
        instructions, slower than "float32". ``lemur.show_config()`` says
        which.
    progress : bool, optional
        Progress lines on stderr (epoch, batch, loss, ETA); None: when
        stderr is a terminal.
    num_threads : int, optional

    Returns
    -------
    Index
        The trained model (with its target statistics), W for every
        document, the OLS sample, and the tokens with `keep_tokens`. Its
        ``training_log`` says what happened: the loss and seconds of every
        epoch, the epoch kept, whether training was interrupted, and the
        seconds of the targets and of indexing (not saved with the index).

    Notes
    -----
    Ctrl-C stops training after the current batch and goes on with the best
    epoch so far (the epoch's weights as they were when it ended); a second
    Ctrl-C interrupts at once.
    """
    epochs = _check_count(epochs, "epochs")
    if epochs == 0:
        return fit_elm(doc_tokens, doc_counts, hidden_dim=final_hidden_dim, activation=activation,
                       sample_size=sample_size, learn_tokens=learn_tokens, seed=seed,
                       train_subset_size=train_subset_size, learn_subset_size=learn_subset_size,
                       keep_tokens=keep_tokens, progress=progress, num_threads=num_threads)
    threads = resolve_num_threads(num_threads)
    check_activation(activation)
    if activation not in TRAINABLE_ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, TRAINABLE_ACTIVATIONS))}, got {activation!r}")
    num_layers = check_positive_int(num_layers, name="num_layers")
    hidden_dim = check_positive_int(hidden_dim, name="hidden_dim")
    final_hidden_dim = check_positive_int(final_hidden_dim, name="final_hidden_dim")
    batch_size = check_positive_int(batch_size, name="batch_size")
    lr = _check_positive_real(lr, "lr")
    grad_clip = _check_positive_real(grad_clip, "grad_clip", allow_zero=True)
    validation_split = _check_fraction(validation_split, "validation_split")
    if matmul_precision not in MATMULS:
        raise ValueError(f"matmul_precision must be one of {', '.join(map(repr, MATMULS))}, got {matmul_precision!r}")
    if matmul_precision == "bfloat16" and not kernels.AMX_BFLOAT16:
        warnings.warn("matmul_precision='bfloat16' without AMX tiles here (see lemur.show_config()): the rounded "
                      "products run through float32 sgemm, slower than matmul_precision='float32'",
                      RuntimeWarning, stacklevel=2)
    documents = Documents.check(doc_tokens, doc_counts, num_threads=threads)
    learn = documents.tokens if learn_tokens is None else check_vectors(
        learn_tokens, name="learn_tokens", dim=documents.dim, num_threads=threads)
    random = np.random.default_rng(seed)
    subset, learn_rows = _subsets(documents, learn, check_positive_int(train_subset_size, name="train_subset_size"),
                                  check_positive_int(learn_subset_size, name="learn_subset_size"), random)
    num_validation = int(round(validation_split * learn_rows.shape[0]))
    if learn_rows.shape[0] - num_validation < 1:
        raise ValueError("validation_split leaves no learn vectors to train on")
    started = time.perf_counter()
    targets, mean, std = training_targets(learn_rows, subset, threads, progress, matmul_precision)
    log = {"targets_seconds": time.perf_counter() - started, "losses": [], "epoch_seconds": [],
           "matmul_precision": matmul_precision}
    training = slice(0, learn_rows.shape[0] - num_validation)
    validation = slice(training.stop, learn_rows.shape[0])
    layers, output = initial_weights(documents.dim, num_layers, hidden_dim, final_hidden_dim, subset.num_docs,
                                     random)
    trainer = Trainer(layers, output, activation, lr, grad_clip, threads, matmul_precision)
    best_layers, best_loss, best_epoch, completed = trainer.model_layers(), math.inf, 0, 0
    x, y = learn_rows[training], targets[training]
    batches = -(-x.shape[0] // batch_size)
    report = _EpochProgress(epochs, batches, progress)
    with _Stop() as stop:
        for epoch in range(epochs):
            started = time.perf_counter()
            order = random.permutation(x.shape[0])
            total = 0.0
            for batch, start in enumerate(range(0, x.shape[0], batch_size)):
                rows = order[start : start + batch_size]
                total += trainer.step(x[rows], y, rows)
                report.update(epoch, batch + 1, total / (batch + 1), best_loss, best_epoch)
                if stop.requested:
                    break
            if stop.requested:
                break
            completed = epoch + 1
            loss = trainer.loss(learn_rows[validation], targets[validation]) if num_validation else total / batches
            log["losses"].append(loss)
            log["epoch_seconds"].append(time.perf_counter() - started)
            if loss < best_loss:
                best_layers, best_loss, best_epoch = trainer.model_layers(), loss, epoch + 1
    report.close()
    if stop.requested:
        print(f"lemur.train: interrupted after {completed} complete epoch{'s' * (completed != 1)}; "
              + (f"keeping epoch {best_epoch} (loss {best_loss:.5f})" if best_epoch else
                 "keeping the weights as they are"), file=sys.stderr, flush=True)
        if not best_epoch:
            best_layers = trainer.model_layers()
    del targets, trainer
    model = Model(best_layers, kind="mlp", activation=activation, output_mean=mean, output_std=std)
    started = time.perf_counter()
    index = _indexed(model, documents, learn, sample_size, keep_tokens, random, progress, threads)
    log.update(best_epoch=best_epoch, interrupted=stop.requested, indexing_seconds=time.perf_counter() - started)
    index.training_log = log
    return index


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _indexed(model: Model, documents: Documents, learn: np.ndarray, sample_size: int, keep_tokens: bool,
             random: np.random.Generator, progress: bool | None, num_threads: int) -> Index:
    """The index of the corpus over `model`: W fitted against an OLS sample
    of `sample_size` learn vectors drawn with `random`, which it keeps."""
    index = Index(
        model,
        np.empty((0, model.feature_dim), dtype=np.float32),
        np.empty((0, documents.dim), dtype=documents.tokens.dtype) if keep_tokens else None,
        np.empty(0, dtype=np.int64) if keep_tokens else None,
    )
    index._sample = fitting.OLSSample.draw(np.asarray(learn, dtype=np.float32), size=sample_size, seed=random)
    index.add_documents(documents.tokens, documents.counts, progress=progress, num_threads=num_threads)
    return index


def fit_elm(
    doc_tokens: np.ndarray,
    doc_counts: object,
    *,
    hidden_dim: int = 2048,
    activation: str = "gelu",
    sample_size: int = fitting.DEFAULT_SAMPLE_SIZE,
    learn_tokens: np.ndarray | None = None,
    seed: int | None = 0,
    train_subset_size: int = 8192,
    learn_subset_size: int = 100_000,
    keep_tokens: bool = True,
    precision: str = "float32",
    progress: bool | None = None,
    num_threads: int | None = None,
) -> Index:
    """Build an ELM (random-feature) index from scratch, with no training.

    The original LEMUR's ``epochs=0`` mode: psi(x) = LayerNorm_no_affine(
    sqrt(2/h) act(x R)) with R ~ N(0, 1) of shape (d, hidden_dim); the target
    statistics over a subset, as the original computes them (max <x, d> over
    up to `learn_subset_size` learn vectors x and the tokens of up to
    `train_subset_size` documents); then W through the same path as
    :meth:`Index.add_documents`, against an OLS sample of `sample_size` learn
    vectors that the index keeps.

    Parameters
    ----------
    doc_tokens : ndarray of float32 or float16, shape (num_doc_tokens, d)
        float16 is kept as it is in the index's token store.
    doc_counts : array-like of int, shape (num_docs,)
    hidden_dim : int, default 2048
    activation : str, default "gelu"
    sample_size : int, default 16384
    learn_tokens : ndarray of float32, optional
        The learn set (query-side tokens, when available); default: the
        documents' tokens, as the original does.
    seed : int, optional
        Seeds NumPy's generator: the same seed builds the same index (PyTorch's
        random numbers are not reproduced).
    train_subset_size, learn_subset_size : int
        The subsets for the target statistics (the original's defaults).
    keep_tokens : bool, default True
        Keep the documents' tokens in the index, for the exact rerank.
    precision : {"float32", "bfloat16", "int8"}, default "float32"
        The first stage's precision (see :class:`Index`).
    progress : bool, optional
    num_threads : int, optional

    Returns
    -------
    Index
    """
    threads = resolve_num_threads(num_threads)
    documents = Documents.check(doc_tokens, doc_counts, num_threads=threads)
    learn = documents.tokens if learn_tokens is None else check_vectors(
        learn_tokens, name="learn_tokens", dim=documents.dim, num_threads=threads)
    hidden_dim = check_positive_int(hidden_dim, name="hidden_dim")
    check_activation(activation)
    random = np.random.default_rng(seed)
    layers = fitting.elm_layers(documents.dim, hidden_dim, random)
    subset, learn_rows = _subsets(documents, learn, check_positive_int(train_subset_size, name="train_subset_size"),
                                  check_positive_int(learn_subset_size, name="learn_subset_size"), random)
    mean, std = fitting.target_statistics(learn_rows, subset.tokens, subset.offsets, threads)
    model = Model(layers, kind="elm", activation=activation, output_mean=mean, output_std=std)
    index = _indexed(model, documents, learn, sample_size, keep_tokens, random, progress, threads)
    return index.with_precision(precision, num_threads=threads) if precision != "float32" else index
