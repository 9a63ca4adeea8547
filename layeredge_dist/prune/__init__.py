"""Pruning the edges: fewer channels at the cuts, sparse weights, compressed weight transfer.

Layer rank 3: imports torch, ``types``, ``config``, ``metrics``, ``codecs``, ``model`` and ``measure`` only (no wire,
transport, stage or pipeline); the driver side (training, shipping weights over the transport) is
:mod:`layeredge_dist.pipeline.prune_run`.

- :mod:`.channels`: channel removal with weight surgery at a cut of a ``sequential`` model
  (:func:`prune_cut_channels`) and of transformer MLP hidden units (:func:`prune_mlp_hidden`); why residual-stream
  cuts cannot lose channels (:func:`cut_prunability`, :class:`NotPrunable`).
- :mod:`.projection`: a learned low-rank projection at a cut (:func:`apply_projection`), PCA- or
  importance-initialised; built by every stage from the model config's ``prune`` section.
- :mod:`.weights`: magnitude / Taylor / N:M weight masks, kept through optimizer steps (:class:`MaskKeeper`),
  sparse export.
- :mod:`.transfer`: a state dict as frames-ready Encoded parts (int8 / int4 blockwise, sparse indices + values)
  with XXH3 checksums of the decoded tensors.
- :mod:`.calib`: calibration passes (tensors at the cuts, channel importance, validation loss).
"""

from .calib import accumulate_gradients, cut_channel_scores, cut_tensors, val_loss
from .channels import (
    NotPrunable,
    cut_plan,
    cut_prunability,
    drop_least_important,
    mlp_hidden_scores,
    mlp_keep,
    prune_cut_channels,
    prune_mlp_hidden,
)
from .projection import CutProjection, apply_projection, projection_weights
from .transfer import (
    EncodedState,
    TransferPolicy,
    WeightChecksumError,
    assemble,
    decode_encoded,
    decode_state,
    encode_state,
    load_manifest,
)
from .weights import MaskKeeper, SparseWeight, apply_masks, check_nm, prune_masks, sparsity_report, to_sparse

__all__ = [
    "accumulate_gradients", "cut_channel_scores", "cut_tensors", "val_loss",
    "NotPrunable", "cut_plan", "cut_prunability", "drop_least_important", "mlp_hidden_scores", "mlp_keep",
    "prune_cut_channels", "prune_mlp_hidden",
    "CutProjection", "apply_projection", "projection_weights",
    "EncodedState", "TransferPolicy", "WeightChecksumError", "assemble", "decode_encoded", "decode_state",
    "encode_state", "load_manifest",
    "MaskKeeper", "SparseWeight", "apply_masks", "check_nm", "prune_masks", "sparsity_report", "to_sparse",
]
