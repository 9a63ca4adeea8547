"""One stage's partition of a model, built on the stage's own node from a :class:`PartitionSpec`.

``build_partition(spec)`` constructs only this stage's modules (pre part on stage 0, its blocks, post part on the
last stage), initialises each deterministically from ``spec.model.seed`` (so block ``i`` gets the same weights
wherever it is hosted), then loads this stage's weights from, in order of precedence, an explicit partition
state-dict slice or the spec's ``weights`` file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .family import Family, Side, family_for
from .spec import ModelSpec, PartitionSpec, check_cuts
from .surgery import apply_to_native, surgery_for


def derived_seed(seed: int, tag: str) -> int:
    """A 63-bit seed for the module called ``tag`` (``pre``, ``block3``, ``post``) of a model seeded ``seed``."""
    digest = hashlib.sha256(f"{seed}/{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded(seed: int, tag: str, build: Callable[[], nn.Module | None]) -> nn.Module | None:
    """Run ``build`` with torch's CPU RNG seeded from ``(seed, tag)``; the caller's RNG state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, tag))
        return build()


class Partition(nn.Module):
    """The modules one stage owns, run in order: ``pre`` (stage 0 only), ``blocks``, ``post`` (last only).

    ``forward(x, side)`` maps the edge tensor arriving at this stage (the model input on stage 0) to the edge
    tensor leaving it (the model output on the last stage). State-dict keys are ``pre.*``,
    ``blocks.<local index>.*`` and ``post.*``; ``first_block`` is the global index of ``blocks[0]``.
    """

    def __init__(
        self,
        spec: PartitionSpec,
        family: Family,
        pre: nn.Module | None,
        blocks: list[nn.Module],
        post: nn.Module | None,
        first_block: int,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.family = family
        self.pre = pre
        self.blocks = nn.ModuleList(blocks)
        self.post = post
        self.first_block = first_block

    @property
    def block_indices(self) -> range:
        """Global indices of the blocks held."""
        return range(self.first_block, self.first_block + len(self.blocks))

    def forward(self, x: torch.Tensor, side: Side | None = None) -> torch.Tensor:
        """Edge tensor in -> edge tensor out. ``side`` holds the family's per-micro-batch side inputs."""
        side = side or {}
        h = self.family.run_pre(self.pre, x, side) if self.pre is not None else x
        if len(self.blocks):
            extras = self.family.block_extras(h, side)
            for block in self.blocks:
                h = self.family.run_block(block, h, extras)
        if self.post is not None:
            h = self.family.run_post(self.post, h, side)
        return h

    def loss(self, output: torch.Tensor, side: Side | None = None) -> torch.Tensor:
        """Scalar loss of the model output; only the last stage can compute it (RuntimeError otherwise)."""
        if not self.spec.is_last:
            raise RuntimeError(f"stage {self.spec.stage} is not the last stage; only the last computes the loss")
        return self.family.loss(output, side or {})

    def extra_repr(self) -> str:
        return (f"family={self.family.name}, stage={self.spec.stage}/{self.spec.num_stages}, "
                f"blocks={self.block_indices.start}..{self.block_indices.stop - 1}")


def build_partition(
    spec: PartitionSpec,
    state: Mapping[str, torch.Tensor] | None = None,
    strict: bool = True,
    device: torch.device | str = "cpu",
) -> Partition:
    """Build stage ``spec.stage``'s partition on this node.

    Args:
        spec: the model description, all cuts and this stage's index.
        state: this stage's weights in partition keys (from :func:`~layeredge_dist.model.state.split_state_dict`
            or a stage checkpoint). When None and ``spec.model.weights`` is set, the slice is read from that
            file; when both are None the seeded initialisation stands.
        strict: passed to ``load_state_dict``; with True a missing or unexpected key raises RuntimeError.
        device: where the partition's parameters end up.

    Raises ValueError when the cuts do not fit the model, KeyError for an unknown family.
    """
    family = family_for(spec.model.family, spec.model.config)
    n = family.num_blocks
    check_cuts(n, spec.cuts, family.has_pre, family.has_post)
    blocks_range = spec.block_range(n)
    seed = spec.model.seed
    pre = seeded(seed, "pre", family.build_pre) if spec.is_first and family.has_pre else None
    surgery = surgery_for(spec.model.config, n)  # the config's prune section (usually empty)
    blocks = [seeded(seed, f"block{i}", lambda i=i: surgery.apply(family.build_block(i), i)) for i in blocks_range]
    post = seeded(seed, "post", family.build_post) if spec.is_last and family.has_post else None
    part = Partition(spec, family, pre, [b for b in blocks if b is not None], post, blocks_range.start)
    if state is None and spec.model.weights is not None:
        from .weights import read_partition_state

        state = read_partition_state(spec)
    if state is None:
        _share_tied(part)
    else:
        if part.pre is not None and part.post is not None:
            _share_tied(part)  # one Parameter; loading then writes both (equal) keys into it
        part.load_state_dict(dict(state), strict=strict)
    return part.to(device)


def _share_tied(part: Partition) -> None:
    """Make tied parameters equal to their source, as in the native model.

    When the partition owns both ends they become one Parameter. When it owns only the post end, the copy is
    initialised from the seeded pre part (built here and discarded), so an unloaded multi-stage model starts
    with the same weights as the single-process one.
    """
    ties = part.family.tied_partition_keys()
    if part.post is None or not ties:
        return
    pre = part.pre if part.pre is not None else seeded(part.spec.model.seed, "pre", part.family.build_pre)
    assert pre is not None, "a tie needs a pre part"
    for post_key, pre_key in ties:
        src = pre.get_parameter(pre_key.removeprefix("pre."))
        owner_name, _, attr = post_key.rpartition(".")
        owner = part.get_submodule(owner_name)
        if part.pre is not None:
            setattr(owner, attr, src)
        else:
            with torch.no_grad():
                getattr(owner, attr).copy_(src)


def build_reference(spec: PartitionSpec | None = None, model: ModelSpec | None = None) -> nn.Module:
    """The whole model as one native module with exactly the weights the partitions get (for reference runs).

    Pass either a PartitionSpec (its model is used) or a ModelSpec. Weights come from ``model.weights`` when set,
    otherwise from the same seeded per-module initialisation :func:`build_partition` uses. The native module is
    in train mode like any fresh module; call ``.eval()`` for inference.
    """
    from .state import merge_state_dicts

    if model is None:
        if spec is None:
            raise ValueError("build_reference needs a PartitionSpec or a ModelSpec")
        model = spec.model
    family = family_for(model.family, model.config)
    native = family.build_native()
    apply_to_native(native, family.key_map().block_prefix, surgery_for(model.config, family.num_blocks),
                    family.num_blocks)
    whole = build_partition(PartitionSpec(model, (), 0))
    state = merge_state_dicts(model, (), [whole.state_dict()])
    native.load_state_dict(state, strict=True)
    return native
