"""The driver's end of the edge transport: model inputs into stage 0, losses / outputs out of the last stage,
weights pushed to any stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from layeredge_dist.prune.transfer import EncodedState
from layeredge_dist.transport import TransportConfig
from layeredge_dist.types import TensorRole

from .endpoint import Endpoint
from .spec import HOST_CODEC


class Host:
    """The host of a ``num_stages`` pipeline: pseudo-stage ``num_stages`` on the edge transport.

    Inputs go to stage 0 on ``s{P}->s0``; the last stage answers on ``s{P-1}->s{P}``. ``timeout_s`` bounds every
    send and receive (seconds).
    """

    def __init__(self, num_stages: int, transport: TransportConfig, bind: str = "127.0.0.1",
                 timeout_s: float = 120.0) -> None:
        self.num_stages = num_stages
        self.timeout_s = timeout_s
        self.endpoint = Endpoint(num_stages, transport, bind)

    @property
    def address(self) -> str:
        """Where the last stage sends results."""
        return self.endpoint.address

    def connect(self, stage0: str, last: str, others: Mapping[int, str] | None = None) -> None:
        """Addresses of stage 0 (inputs go there) and of the last stage; ``others`` (stage index -> address) adds
        the stages in between, needed only to push weights to them."""
        self.endpoint.connect(dict(others or {}) | {0: stage0, self.num_stages - 1: last})

    def send_weights(self, stage: int, seq: int, bundles: Sequence[EncodedState]) -> None:
        """Queue weight push ``seq`` for ``stage``: every bundle (one per local chunk, in chunk order) as its
        manifest and then its parts, each in the codec the bundle chose, on consecutive wire micro-batches with
        ``TensorRole.WEIGHT``. Returns before delivery; raises the transport's errors (PeerUnavailable,
        DeadlineExceeded after ``timeout_s`` of back-pressure, ...) and CodecError."""
        mb = 0
        for bundle in bundles:
            for part in bundle.frames():
                self.endpoint.send(stage, TensorRole.WEIGHT, seq, mb, part.source, part.spec, self.timeout_s)
                mb += 1

    def send_inputs(self, seq: int, inputs: Sequence[torch.Tensor]) -> None:
        """Queue micro-batch ``i``'s model input for stage 0 (raw codec, any dtype); returns before delivery."""
        for mb, x in enumerate(inputs):
            self.endpoint.send(0, TensorRole.ACTIVATION, seq, mb, x.detach().cpu(), HOST_CODEC, self.timeout_s)

    def collect(self, seq: int, count: int, check: Callable[[], None] | None = None) -> list[torch.Tensor]:
        """The last stage's ``count`` results of call ``seq`` (losses or outputs), in micro-batch order.

        ``check`` runs every 0.25 s while waiting (raise from it to report a dead stage); PeerTimeout after
        ``timeout_s``.
        """
        return [self.endpoint.receive(self.num_stages - 1, TensorRole.ACTIVATION, seq, mb, self.timeout_s,
                                      f"result of micro-batch {mb}", check) for mb in range(count)]

    def abort(self, seq: int) -> None:
        """Stop a blocked :meth:`collect` of call ``<= seq`` (StepAborted)."""
        self.endpoint.abort(seq)

    def reset(self) -> None:
        """Forget stashed frames and senders after a failed call."""
        self.endpoint.reset()

    def close(self) -> None:
        """Stop the server. Idempotent."""
        self.endpoint.close()
