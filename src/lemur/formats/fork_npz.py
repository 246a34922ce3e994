"""The Numba fork's export (LEMUR-NumPy's ``export_weights.py``): an ``.npz``.

Keys ``layer_{i}_weight/bias/ln_weight/ln_bias``, ``num_layers``, ``W``,
``final_hidden_dim``, ``output_mean`` and ``output_std``; the fork's README
also shows a hand-written single-layer variant with only ``layer_0_*``, ``W``
and ``final_hidden_dim``. It records no activation (the reader leaves it to
the caller: the exact "gelu" unless told otherwise), no ELM models, no centre
and no query scale (32), no token store, ids or sample. Read only: lemur
writes its own format, which keeps all of that.
"""

from __future__ import annotations

from lemur.formats.archive import Archive
from lemur.formats.npz_members import NpzMembers
from lemur.formats.record import Record

NAME = "lemur-numpy"


def holds(members: NpzMembers) -> bool:
    """Whether an .npz looks like a fork export."""
    return bool(members.keys & {"layer_0_weight", "W", "final_hidden_dim"})


def read(archive: Archive, *, model_only: bool = False) -> Record:
    """The record of a fork export; its activation is None (not recorded)."""
    members = NpzMembers(archive)
    if "W" in members.keys:  # a defective W is reported even when the layers are missing
        members.float_header("W", 2)
    if "num_layers" in members.keys:
        num_layers = members.num_layers()
    else:
        num_layers = 1
        while f"layer_{num_layers}_weight" in members.keys:
            num_layers += 1
    _, feature_dim = members.layer_dims(num_layers, "mlp")
    if "final_hidden_dim" in members.keys:
        final_hidden_dim = members.integer("final_hidden_dim")
        if final_hidden_dim != feature_dim:
            raise members.error(
                f"final_hidden_dim is {final_hidden_dim}, but layer_{num_layers - 1}_weight "
                f"outputs {feature_dim} features"
            )
    members.W_rows(feature_dim)
    return Record(
        kind="mlp",
        layers=members.layers(num_layers, "mlp"),
        activation=None,
        file_format=NAME,
        output_mean=members.real("output_mean") if "output_mean" in members.keys else 0.0,
        output_std=members.real("output_std") if "output_std" in members.keys else 1.0,
        W=None if model_only else members.W(feature_dim),
    )
