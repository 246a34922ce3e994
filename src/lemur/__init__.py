"""lemur: LEMUR multi-vector retrieval on the CPU, without PyTorch.

LEMUR (Jääsaari et al., 2026) learns a small MLP psi that turns a query's token
vectors into one vector, so that one inner-product search over a matrix W
(one row per document) finds candidates for exact MaxSim reranking.
"""

from lemur._build_info import VERSION as __version__
from lemur._config import show_config
from lemur.formats import load, save
from lemur.index import Index
from lemur.model import ACTIVATIONS, Layer, Model
from lemur.retrieval import maxsim_scores, rerank, scores, top_k
from lemur.training import fit_elm, train

__all__ = [
    "ACTIVATIONS",
    "Index",
    "Layer",
    "Model",
    "__version__",
    "fit_elm",
    "load",
    "maxsim_scores",
    "rerank",
    "save",
    "scores",
    "show_config",
    "top_k",
    "train",
]
