"""lemur's file formats: one module per format, one neutral record, one dispatcher.

========================= ============ ==========================================
format                    module       what it is
========================= ============ ==========================================
``"lemur"``               lemur_npz    lemur's own ``.npz``: everything an index
                                       holds, arrays aligned for mapping
``"lemur-numpy"``         fork_npz     the Numba fork's ``.npz`` export (read only)
``"original"``            original     the original LEMUR's index directory
                                       (``mlp.pt``, ``w.pt``) or a lone ``mlp.pt``
``"txtai"``               txtai        txtai's LEMUR artifact directory
                                       (``config.json``, ``model.safetensors``)
========================= ============ ==========================================

Each format module reads into and writes from a :class:`~.record.Record`;
:func:`detect` tells formats apart by content (not by name);
:func:`load` / :func:`save` turn records into :class:`~lemur.Model` and
:class:`~lemur.Index` objects and back. ``Model`` and ``Index`` know nothing of
files: their ``load``/``save`` methods call these.
"""

from __future__ import annotations

import os

from lemur.formats import fork_npz, lemur_npz, original, txtai
from lemur.formats.archive import Archive, ArchiveError, is_zip
from lemur.formats.npz_members import NpzMembers
from lemur.formats.record import Record, compact_arrays, index_of, model_of, record_of
from lemur.index import Index
from lemur.model import Model

__all__ = ["WRITERS", "Index", "Model", "Record", "convert", "detect", "load", "load_model", "read",
           "save"]

#: format name -> writer(record, path) -> a note on what it wrote.
WRITERS = {"lemur": lemur_npz.write, "original": original.write, "txtai": txtai.write}


def detect(path: str | os.PathLike[str]) -> str:
    """The format of `path`, told by its content: a format name of the table
    above. ValueError (or FileNotFoundError) when it is none of them."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "mlp.pt")):
            return "original"
        if txtai.holds(path):
            return "txtai"
        raise ValueError(f"{path}: a directory that is neither an original LEMUR index (no mlp.pt) "
                         "nor a txtai LEMUR artifact (no config.json and model.safetensors)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path!r}")
    with open(path, "rb") as stream:
        head = stream.read(8)
    if not is_zip(path):
        if head[:2] == b"\x80\x02":
            raise ValueError(f"{path}: a legacy (pre-1.6) torch.save file; re-save it with a current PyTorch")
        if head[:6] == b"\x93NUMPY":
            raise ValueError(f"{path}: a single .npy array, not a model or index file")
        if len(head) == 8 and head[:8] != b"PK\x03\x04" and _looks_like_safetensors(path):
            raise ValueError(f"{path}: a bare safetensors file; pass the txtai artifact directory "
                             "that holds it and its config.json")
        raise ValueError(f"{path}: not a file lemur reads (lemur .npz, LEMUR-NumPy export, "
                         "original mlp.pt / index directory, txtai artifact directory)")
    with Archive(path) as archive:
        if any(name.endswith("data.pkl") for name in archive.names):
            return "original"
        members = NpzMembers(archive)
        if lemur_npz.holds(members):
            return "lemur"
        if fork_npz.holds(members):
            return "lemur-numpy"
    raise ValueError(
        f"{path}: neither a lemur file (no 'lemur_format' key) nor a LEMUR-NumPy export "
        "(no 'layer_0_weight', 'W' or 'final_hidden_dim' key)"
    )


def _looks_like_safetensors(path: str) -> bool:
    with open(path, "rb") as stream:
        stream.seek(8)
        return stream.read(1) == b"{"


def read(path: str | os.PathLike[str], *, model_only: bool = False, mmap: bool = False) -> Record:
    """The record of any file or directory lemur reads (only the model's
    parts with `model_only`; W, its compact copy and the token store mapped
    from the file with `mmap`, lemur's own format only)."""
    path = os.fspath(path)
    name = detect(path)
    if mmap and name != "lemur":
        raise ValueError(f"{path}: mmap=True maps lemur's own files only, this is a {name!r} one; "
                         "convert it first (lemur convert SRC DST.npz)")
    if name in ("lemur", "lemur-numpy"):
        with Archive(path) as archive:
            if name == "lemur":
                return lemur_npz.read(archive, model_only=model_only, mmap=mmap)
            return fork_npz.read(archive, model_only=model_only)
    try:
        return (original if name == "original" else txtai).read(path, model_only=model_only)
    except ArchiveError as exc:
        raise ValueError(str(exc)) from None


def load(path: str | os.PathLike[str], *, activation: str | None = None, mmap: bool = False,
         num_threads: int | None = None) -> Index | Model:
    """Open an index or a model from any file or directory lemur reads.

    Parameters
    ----------
    path : path-like
        lemur's ``.npz``, a LEMUR-NumPy export, an original LEMUR index
        directory or ``mlp.pt``, or a txtai LEMUR artifact directory: told
        apart by content.
    activation : str, optional
        For files that do not record it (the fork's exports): the activation
        the model was trained with (default "gelu", the exact erf form). For
        the others it must be None or agree with the file.
    mmap : bool, default False
        Map W, its compact copy and the token store from the file instead of
        reading them (lemur's own ``.npz`` only): opening takes milliseconds
        whatever the file's size, a search brings in only the pages it
        touches (the compact copy it scans, the rows it rescores, the
        candidates' tokens), and processes that open the same file share
        them. Their values are not checked on opening (that would read them
        all). Adding or removing documents copies what it changes (the file
        is never written); ``save`` writes a new file.
    num_threads : int, optional
        Threads for the one-time checks of the arrays.

    Returns
    -------
    Index
        When the file holds W (a fitted index), or an OLS sample to fit
        documents against (a txtai artifact: an index with no documents yet).
    Model
        When it holds only a model (a lone ``mlp.pt``, a lemur model file).

    Raises
    ------
    FileNotFoundError
    ValueError, TypeError
        Naming the file and what is wrong: an unknown or damaged format, a
        member that is missing or of the wrong dtype or shape, arrays that do
        not fit together, values that are not finite, or a file that would
        run code or take more memory than it holds (refused before reading).
    """
    record = read(path, mmap=mmap)
    model = model_of(record, path=os.fspath(path), activation=activation)
    if not record.is_index:
        return model
    return index_of(record, model, path=os.fspath(path), num_threads=num_threads)


def load_model(path: str | os.PathLike[str], *, activation: str | None = None) -> Model:
    """The model of any supported file (an index's without reading its documents)."""
    return model_of(read(path, model_only=True), path=os.fspath(path), activation=activation)


def save(source: Model | Index, path: str | os.PathLike[str], *, format: str = "lemur") -> str:
    """Write a model or an index to `path`, atomically per file.

    Parameters
    ----------
    source : Model or Index
    path : path-like
        A file for ``"lemur"``; a directory (created if need be) for
        ``"original"`` and ``"txtai"``.
    format : {"lemur", "original", "txtai"}
        ``"lemur"`` keeps everything. ``"original"`` writes ``mlp.pt`` (and
        ``w.pt`` for an index) that the original LEMUR and ``torch.load(...,
        weights_only=True)`` read; ``"txtai"`` writes an artifact txtai's
        ``vectors.lemur`` loads (it needs the index's OLS sample).

    Returns
    -------
    str
        What was written, and what the format had no place for (the token
        store in the original's directories, W in a txtai artifact, ...).

    Raises
    ------
    ValueError
        For an unknown format, or a model the format cannot hold: a centre or
        a query scale other than 32 in the original's directories, an
        activation or layer widths the original or txtai do not know, a txtai
        artifact without an OLS sample. Nothing is lost silently.
    """
    if format not in WRITERS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(WRITERS)}")
    return WRITERS[format](record_of(source), path)


def convert(source: str | os.PathLike[str], destination: str | os.PathLike[str], *,
            format: str = "lemur", activation: str | None = None,
            precision: str | None = None) -> tuple[Record, str]:
    """Write the file or directory `source` in `format` at `destination`, record
    to record, so that what a format keeps beyond lemur's model (txtai's seed
    and training record) survives. Everything is checked first, as
    :func:`load` checks it; `precision` (an index's) changes the first
    stage's precision on the way (lemur's format keeps it). Returns the
    source's record and the writer's note."""
    if format not in WRITERS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(WRITERS)}")
    record = read(source)
    model = model_of(record, path=os.fspath(source), activation=activation)
    if record.is_index:
        index = index_of(record, model, path=os.fspath(source))
        if precision is not None:
            index = index.with_precision(precision)
        record = record.replace(precision=index.precision, compact=compact_arrays(index))
    elif precision is not None:
        raise ValueError(f"{os.fspath(source)} holds a model, not an index: it has no precision")
    return record, WRITERS[format](record.replace(activation=model.activation), destination)
