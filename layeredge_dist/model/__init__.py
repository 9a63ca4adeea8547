"""Partitioning of models into pipeline stages, and the demo workload.

A stage gets a :class:`PartitionSpec` (plain data) and builds its own share with :func:`build_partition`;
weights come from a state-dict slice (:func:`split_state_dict`), a safetensors file every node can read, or the
deterministic seeded initialisation. Families: ``sequential`` (declarative ``nn.Sequential``), ``byte_gpt``
(the demo model), ``hf_gpt2`` and ``hf_bert`` (HF transformers, extra ``hf``, imported lazily).

This package imports neither ray, grpc, transport nor wire.
"""

from .batches import BatchSampler, fixed_batches, split_microbatches
from .chain import ChainStep, SavedForward, run_chain, stage_backward, stage_forward, train_chain
from .corpus import CorpusConfig, TextCorpus, load_corpus
from .demo import ByteGPTConfig, byte_gpt_spec
from .family import Family, family_for, known_families, register_family
from .partition import Partition, build_partition, build_reference
from .spec import ModelSpec, PartitionSpec, check_cuts, even_cuts, partition_specs, stage_blocks
from .state import TiedParameter, merge_state_dicts, split_state_dict, tied_parameters
from .workload import Batch, ByteLMWorkload, SyntheticWorkload, Workload, split_batch, workload_for

__all__ = [
    "BatchSampler", "ByteGPTConfig", "CorpusConfig", "TextCorpus", "byte_gpt_spec", "fixed_batches", "load_corpus",
    "split_microbatches",
    "ChainStep", "Family", "ModelSpec", "Partition", "PartitionSpec", "SavedForward", "TiedParameter",
    "build_partition", "build_reference", "check_cuts", "even_cuts", "family_for", "known_families",
    "merge_state_dicts", "partition_specs", "register_family", "run_chain", "split_state_dict", "stage_backward",
    "stage_blocks", "stage_forward", "tied_parameters", "train_chain",
    "Batch", "ByteLMWorkload", "SyntheticWorkload", "Workload", "split_batch", "workload_for",
]
