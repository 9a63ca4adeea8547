"""Fuzzing the receive path: mutated frames against the pure decode path in-process, and against a real
StageServer in a child process over the gRPC Frames stream and the raw TCP data path.

Properties:

* in-process, nothing but :class:`FrameError` / :class:`CodecError` ever escapes header parsing, header
  validation, stream-message parsing, data-path records, the unary request parsers, or any codec's ``decode``
  (no IndexError, RuntimeError, struct.error, RecursionError ... and no crash);
* the server answers every case within a deadline, accepts exactly what the wire rules (the oracle in
  ``hardening_support``) accept, rejects everything else with INVALID_ARGUMENT naming the field the oracle
  names, counts each rejection in ``invalid_frames`` and reports it to ``on_reject`` with its reason, stays
  within a bounded RSS, and still delivers valid frames bit-exactly afterwards.

Scale with ``LAYEREDGE_FUZZ_CASES=100000`` (cases per target); a failure prints the seed and the case index
(rerun one with ``LAYEREDGE_FUZZ_SEED``).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
import time
import traceback
from collections.abc import Iterator

import pytest
import torch
from hardening_support import (
    CONTROL_EDGE,
    Answer,
    Expect,
    CONTROL_ROLE,
    CONTROL_STEP0,
    DECODE_CODECS,
    FUZZ_CASES,
    FUZZ_SEED,
    ServerProc,
    _flip_bits,
    _mutate_bytes,
    fuzz_cases,
    fuzz_grpc_messages,
    fuzz_tcp_bytes,
    grpc_frames_call,
    grpc_oracle,
    mutate_header,
    open_data_connection,
    random_codec_spec,
    rate_limited,
    start_servers,
    tcp_exchange,
    tcp_oracle,
    valid_frame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layeredge_dist.codecs import CodecError, parse_any
from layeredge_dist.codecs.base import Encoded
from layeredge_dist.codecs.stateful import DeltaCodec, ErrorFeedback
from layeredge_dist.transport.accounting import reject_reason
from layeredge_dist.types import EdgeId, TensorRole
from layeredge_dist.wire import (
    ChecksumKind,
    Frame,
    FrameError,
    FrameHeader,
    Limits,
    datapath,
    encoded_from_frame,
    envelope,
    header_from_bytes,
    service,
    validate_frame,
    validate_header,
)
from layeredge_dist.wire import checksum as wc

ALLOWED = (FrameError, CodecError)
#: Hypothesis examples per property: CI size, or a fifth of LAYEREDGE_FUZZ_CASES in a long run (generating
#: structured examples costs ~10 ms each, twenty times a mutation case).
EXAMPLES = fuzz_cases(200) if not FUZZ_CASES else max(200, FUZZ_CASES // 5)
#: In-process decoding allocates what a header claims; keep claims small enough for the test process.
SMALL_LIMITS = Limits(max_elements=1 << 22, max_frame_bytes=1 << 24)
TOKEN = "fuzz-token-5f2a"
CONTROL = (CONTROL_EDGE, CONTROL_ROLE)


class Failures:
    """Collects unexpected outcomes with enough to reproduce each; fails the test with the first few."""

    def __init__(self, target: str, seed: int) -> None:
        self.target = target
        self.seed = seed
        self.items: list[str] = []

    def add(self, case: int, desc: str, what: str) -> None:
        self.items.append(f"case {case} ({desc}): {what}")

    def check(self, cases: int) -> None:
        if self.items:
            head = "\n".join(self.items[:8])
            pytest.fail(f"{self.target}: {len(self.items)} of {cases} cases failed (LAYEREDGE_FUZZ_SEED="
                        f"{self.seed}):\n{head}", pytrace=False)


def _escaped(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip() + " at " + \
        traceback.extract_tb(err.__traceback__)[-1].filename.rsplit("/", 1)[-1] + ":" + \
        str(traceback.extract_tb(err.__traceback__)[-1].lineno)


# =============================================================================================== in-process


def _decode(spec: str, enc: Encoded) -> torch.Tensor:
    codec = parse_any(spec)
    if isinstance(codec, DeltaCodec):
        return codec.decode(enc, codec.new_state(), ("k", 0))
    return codec.decode(enc)  # type: ignore[union-attr]


def _encode_with(spec: str, rng: random.Random) -> Encoded:
    codec = parse_any(spec)
    shape = tuple(rng.randint(0, 20) for _ in range(rng.randint(0, 3)))
    g = torch.Generator().manual_seed(rng.randrange(1 << 31))
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16])
    x = (torch.randn(shape, generator=g) * rng.choice([1e-3, 1.0, 50.0])).to(dtype)
    if isinstance(codec, ErrorFeedback):
        return codec.encode(x, codec.new_state(), generator=g)
    if isinstance(codec, DeltaCodec):
        return codec.encode(x, codec.new_state(), ("k", 0), generator=g)
    return codec.encode(x, generator=g)  # type: ignore[union-attr]


def _mutate_encoded(rng: random.Random, enc: Encoded) -> tuple[str, Encoded]:
    """Change what a decoder is handed: payload bytes, shape, dtype or spec (bypassing the wire checks)."""
    op = rng.choice(["payload", "payload", "payload", "shape", "dtype", "spec", "empty"])
    payload = bytes(enc.payload_bytes())
    if op == "payload":
        what, payload = _mutate_bytes(rng, payload)
        op = f"payload:{what}"
    elif op == "empty":
        payload = b""
    shape = enc.shape
    if op == "shape":
        shape = rng.choice([(), (0,), tuple(d + 1 for d in shape) or (1,), tuple(max(0, d - 1) for d in shape),
                            tuple(reversed(shape)), (enc.numel,), (1 << 11, 1 << 11), (enc.numel + 1,)])
    dtype = rng.choice(["float32", "float16", "bfloat16", "int64", "bool", "float64"]) if op == "dtype" else enc.dtype
    spec = rng.choice(DECODE_CODECS) if op == "spec" else enc.spec
    t = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.empty(0, dtype=torch.uint8)
    return op, Encoded(spec, shape, dtype, t)


def test_decode_path_raises_only_frame_and_codec_errors() -> None:
    """Header bytes, header fields, payloads (with the checksum fixed so they reach the codec) and Encoded
    objects handed straight to every codec's decode: only FrameError or CodecError may escape."""
    cases = fuzz_cases(2500)
    rng0 = random.Random(FUZZ_SEED)
    fails = Failures("decode path", FUZZ_SEED)
    outcomes: collections.Counter[str] = collections.Counter()
    t0 = time.monotonic()
    for i in range(cases):
        rng = random.Random(rng0.randrange(1 << 62) ^ i)
        kind = ("header", "payload", "encoded")[i % 3]
        desc = kind
        try:
            if kind == "encoded":
                spec = rng.choice(DECODE_CODECS)
                desc, enc = _mutate_encoded(rng, _encode_with(spec, rng))
                desc = f"{spec} {desc}"
                _decode(enc.spec, enc)
            else:
                f = valid_frame(rng)
                payload = f.payload
                if kind == "header":
                    desc, hb = mutate_header(rng, f.header)
                    header = header_from_bytes(hb, SMALL_LIMITS)
                else:
                    raw = bytes(f.payload_bytes())
                    what, raw = _mutate_bytes(rng, raw) if rng.random() < 0.5 else ("flip", _flip_bits(rng, raw))
                    desc = f"payload:{what}"
                    payload = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
                    header = dataclasses.replace(f.header, payload_length=len(raw),
                                                 checksum=wc.compute(f.header.checksum_kind, raw))
                if header.payload_length != payload.numel():
                    raise FrameError("payload_length", "the receiver would have rejected the length")
                frame = Frame(header, payload)
                validate_frame(frame, SMALL_LIMITS)
                _decode(header.codec, encoded_from_frame(frame))
            outcomes["accepted"] += 1
        except ALLOWED as e:
            outcomes[type(e).__name__] += 1
        except Exception as e:  # noqa: BLE001 - exactly what the fuzzer is looking for
            fails.add(i, desc, _escaped(e))
    fails.check(cases)
    # not vacuous: every outcome occurs
    assert outcomes["FrameError"] > cases // 20 and outcomes["CodecError"] > cases // 20, outcomes
    assert outcomes["accepted"] > 0, outcomes
    print(f"decode path: {cases} cases in {time.monotonic() - t0:.1f} s: {dict(outcomes)}")


def test_stream_records_and_requests_raise_only_frame_errors() -> None:
    """Random and mutated bytes into every parser a peer can reach: stream messages (and their header and ack
    bodies), data-path hello / header length / records, Ping / Sink / OpenDataPath requests and replies."""
    cases = fuzz_cases(3000)
    rng0 = random.Random(FUZZ_SEED + 1)
    fails = Failures("parsers", FUZZ_SEED + 1)
    f = valid_frame(random.Random(3))
    seeds = [envelope.header_message(f.header, f.payload_bytes()), envelope.ack_message(7),
             envelope.chunk_message(b"abc"), datapath.ack_record(3), datapath.error_record("INVALID_ARGUMENT", "x"),
             datapath.hello(bytes(32)), datapath.frame_prefix(f.header),
             service.ping_request_to_bytes(service.PingRequest(b"hi", 5)),
             service.data_path_request_to_bytes(service.DataPathRequest(EdgeId.parse("s0->s1"), TensorRole.GRADIENT)),
             service.data_path_grant_to_bytes(service.DataPathGrant(1234, bytes(32)))]
    parsers = [
        ("parse_message", envelope.parse_message),
        ("header_body", lambda b: envelope.parse_header_body(b, Limits())),
        ("ack_body", envelope.parse_ack_body),
        ("hello", datapath.parse_hello),
        ("header_length", lambda b: datapath.header_length(b[:4]) if len(b) >= 4 else None),
        ("ping", service.ping_request_from_bytes), ("ping_reply", service.ping_reply_from_bytes),
        ("sink_reply", service.sink_reply_from_bytes), ("open", service.data_path_request_from_bytes),
        ("grant", service.data_path_grant_from_bytes),
    ]

    def record(data: bytes) -> object:
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(data):
                raise EOFError
            pos += n
            return data[pos - n:pos]

        try:
            return datapath.read_record(take)
        except EOFError:
            return None

    parsers.append(("record", record))
    for i in range(cases):
        rng = random.Random(rng0.randrange(1 << 62) ^ i)
        base = rng.choice(seeds)
        desc, data = _mutate_bytes(rng, base) if rng.random() < 0.8 else ("random", rng.randbytes(rng.randint(0, 64)))
        for name, parse in parsers:
            try:
                parse(data)
                if name == "parse_message":  # then the bodies, as the server would
                    msg = envelope.parse_message(data)
                    if msg.header is not None:
                        envelope.parse_header_body(msg.header, Limits())
                    if msg.ack is not None:
                        envelope.parse_ack_body(msg.ack)
            except FrameError:
                pass
            except Exception as e:  # noqa: BLE001
                fails.add(i, f"{name} {desc} {data[:24].hex()}", _escaped(e))
    fails.check(cases)


_ints = st.one_of(st.integers(-2, 3), st.integers(-(1 << 70), 1 << 70), st.just((1 << 64) - 1), st.just(1 << 64))
_junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=4),
                  st.lists(st.integers(), max_size=2))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(edge=st.one_of(st.builds(EdgeId.parse, st.sampled_from(["s0->s1", "s2->s1"])), _junk),
       role=st.one_of(st.sampled_from(list(TensorRole)), _junk),
       step=st.one_of(_ints, _junk), micro_batch=st.one_of(_ints, _junk),
       codec=st.one_of(st.sampled_from(DECODE_CODECS), st.builds(random_codec_spec, st.randoms()), _junk),
       shape=st.one_of(st.lists(_ints, max_size=18).map(tuple), _junk),
       dtype=st.one_of(st.sampled_from(["float32", "bfloat16", "int64", "bool", "float64"]), _junk),
       payload_length=st.one_of(_ints, _junk),
       checksum_kind=st.one_of(st.sampled_from(list(ChecksumKind)), _junk),
       checksum=st.one_of(_ints, _junk), payload=st.one_of(st.none(), st.binary(max_size=64)))
def test_validate_header_with_arbitrary_field_values(edge, role, step, micro_batch, codec, shape, dtype,  # type: ignore[no-untyped-def]
                                                     payload_length, checksum_kind, checksum, payload) -> None:
    """validate_header on FrameHeaders whose fields hold anything (wrong types included): FrameError or OK."""
    h = FrameHeader(edge, role, step, micro_batch, codec, shape, dtype, payload_length, checksum_kind, checksum)
    try:
        validate_header(h, Limits(), payload)
    except FrameError:
        pass


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.binary(max_size=300))
def test_header_from_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes as a serialized header: FrameError or a header that passes validation again."""
    try:
        h = header_from_bytes(data, Limits())
    except FrameError:
        return
    validate_header(h, Limits())


# =============================================================================================== real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One StageServer child with a token and the TCP data path; every receiver but the control one drains."""
    procs = start_servers({"fuzz": {"token": TOKEN, "tcp_data_path": True, "tune_malloc": True}},
                          tmp_path_factory.mktemp("fuzz-server"))
    yield procs["fuzz"]
    for p in procs.values():
        p.kill()


def _control_round_trip(server: ServerProc, n: int, tcp: bool) -> None:
    """Valid frames through the real senders arrive bit-exactly (after whatever the fuzzer sent)."""
    from layeredge_dist.transport import TransportConfig, open_sender

    rng = random.Random(n)
    cfg = TransportConfig(token=TOKEN, tcp_data_path=tcp, chunk_bytes=64 << 10, max_message_bytes=1 << 20)
    edge, role = EdgeId.parse(CONTROL[0]), TensorRole(CONTROL[1])
    frames = [valid_frame(rng, CONTROL[0], CONTROL[1], CONTROL_STEP0 + n * 10 + k, max_numel=100_000)
              for k in range(3)]
    with open_sender(server.address, edge, role, cfg) as tx:
        for fr in frames:
            tx.send(fr, timeout_s=20)
        tx.flush(timeout_s=20)
    for fr in frames:
        got = server.cmd("receive", edge=CONTROL[0], role=CONTROL[1], step=fr.step, timeout_s=20)
        assert got.get("sha256") == hashlib.sha256(fr.payload_bytes()).hexdigest(), got
        assert (got["codec"], tuple(got["shape"]), got["dtype"]) == (fr.codec, fr.header.shape, fr.header.dtype)


def _grpc_case(i: int, seed: int) -> tuple[str, list[bytes], Expect]:
    desc, msgs = fuzz_grpc_messages(random.Random(seed ^ i))
    return desc, msgs, grpc_oracle(msgs, Limits())


def _run_grpc_cases(server: ServerProc, start: int, count: int, fails: Failures,
                    reasons: collections.Counter[str]) -> int:
    """Cases ``start .. start + count`` on the Frames stream, 6 in flight; each is built (and its outcome
    predicted) in the worker, so a long run holds only the results."""
    import grpc

    from layeredge_dist.transport import TransportConfig
    from layeredge_dist.transport.options import channel_options

    rng0 = random.Random(FUZZ_SEED + 2)
    seeds = [rng0.randrange(1 << 62) for _ in range(start + count)]
    channel = grpc.insecure_channel(server.address, options=channel_options(TransportConfig()))

    def one(i: int) -> tuple[str, Expect, Answer]:
        desc, msgs, exp = _grpc_case(i, seeds[i])
        return desc, exp, grpc_frames_call(channel, msgs, TOKEN, 30.0)

    invalid = 0
    try:
        for i, (desc, exp, ans) in rate_limited(list(range(start, start + count)), one, workers=6):
            if exp.field is None:
                ok = ans.code == "OK" and ans.acked == exp.frames
            else:
                invalid += 1
                reasons[reject_reason(FrameError(exp.field, ""))] += 1
                ok = ans.code == "INVALID_ARGUMENT" and ans.details.startswith(exp.field + ":") \
                    and ans.acked == exp.frames
            if not ok:
                fails.add(i, desc, f"expected {exp.frames} acks then {exp.field or 'OK'}, got {ans.acked} acks then "
                                   f"{ans.code}: {ans.details[:200]} after {ans.seconds:.1f} s")
    finally:
        channel.close()
    return invalid


def _run_tcp_cases(server: ServerProc, start: int, count: int, fails: Failures,
                   reasons: collections.Counter[str]) -> tuple[int, int, int]:
    """Returns (invalid frames, connections closed mid-frame, unauthenticated hellos) expected."""
    import socket

    import grpc

    rng0 = random.Random(FUZZ_SEED + 3)
    seeds = [rng0.randrange(1 << 62) for _ in range(start + count)]
    channel = grpc.insecure_channel(server.address)

    def one(i: int) -> tuple[str, Expect | None, Answer]:
        rng = random.Random(seeds[i] ^ i)
        if rng.random() < 0.05:  # a bad hello: no ticket asked for
            data = rng.randbytes(rng.choice([0, 3, 35, 36, 37]))
            s = socket.create_connection(("127.0.0.1", server.data_port), timeout=30)
            return "hello", None, tcp_exchange(s, data, 30.0)
        desc, data = fuzz_tcp_bytes(rng)
        exp = tcp_oracle(data, Limits())
        return desc, exp, tcp_exchange(open_data_connection(channel, "127.0.0.1", TOKEN, 30.0), data, 30.0)

    invalid = closed = unauth = 0
    try:
        for i, (desc, exp, ans) in rate_limited(list(range(start, start + count)), one, workers=6):
            if exp is None:
                unauth += 1
                reasons["auth"] += 1
                ok = ans.code == "UNAUTHENTICATED"
                want = "UNAUTHENTICATED"
            elif exp.field is not None:
                invalid += 1
                reasons[reject_reason(FrameError(exp.field, ""))] += 1
                ok = ans.code == "INVALID_ARGUMENT" and ans.details.startswith(exp.field + ":") \
                    and ans.acked == exp.frames
                want = f"{exp.frames} acks then INVALID_ARGUMENT {exp.field}"
            else:
                closed += exp.closed
                ok = ans.code == "CLOSED" and ans.acked == exp.frames
                want = f"{exp.frames} acks then close{' (mid-frame)' if exp.closed else ''}"
            if not ok:
                fails.add(i, desc, f"expected {want}, got {ans.acked} acks then {ans.code}: {ans.details[:200]} "
                                   f"after {ans.seconds:.1f} s")
    finally:
        channel.close()
    return invalid, closed, unauth


def test_server_survives_and_rejects_fuzzed_frames(server: ServerProc) -> None:
    """Fuzzed Frames streams and data-path connections against a real server process, in two rounds with
    control frames after each: every answer within the deadline and as the oracle says, every rejection
    counted with its reason, valid frames delivered bit-exactly, RSS bounded."""
    cases = fuzz_cases(800)
    before, rejects_before = server.counters(), collections.Counter(server.rejects())
    fails_g, fails_t = Failures("gRPC Frames stream", FUZZ_SEED + 2), Failures("TCP data path", FUZZ_SEED + 3)
    reasons: collections.Counter[str] = collections.Counter()
    invalid = closed = unauth = 0
    t0 = time.monotonic()
    warm = max(50, cases // 10)  # warm-up round: allocator, thread pools and pools reach their steady size
    rss0 = 0
    for start, count in ((0, warm), (warm, cases - warm)):
        invalid += _run_grpc_cases(server, start, count, fails_g, reasons)
        ti, tc, tu = _run_tcp_cases(server, start, count, fails_t, reasons)
        invalid, closed, unauth = invalid + ti, closed + tc, unauth + tu
        assert server.alive()
        _control_round_trip(server, start, tcp=False)
        _control_round_trip(server, start + 1, tcp=True)
        if not rss0:
            rss0 = server.rss()["rss"]
    fails_g.check(cases)
    fails_t.check(cases)
    after, rejects_after = server.counters(), collections.Counter(server.rejects())
    delta = {k: after[k] - before[k] for k in after}
    assert delta["invalid_frames"] == invalid, (delta, invalid)
    assert delta["unauthenticated"] == unauth, (delta, unauth)
    assert rejects_after - rejects_before == reasons, (rejects_after - rejects_before, reasons)
    assert delta["stream_errors"] == closed, (delta, closed)  # connections that closed inside a frame
    assert invalid > cases // 2 and delta["frames_received"] > cases // 10, (invalid, delta)
    rss = server.rss()
    growth = rss["rss"] - rss0
    assert growth < 64 << 20, f"server RSS grew {growth >> 20} MiB over {cases - warm} cases per path"
    print(f"server fuzz: {2 * cases} cases in {time.monotonic() - t0:.1f} s; rejected {invalid} "
          f"({dict(reasons)}), accepted {delta['frames_received']} frames; RSS {rss0 >> 20} -> {rss['rss'] >> 20} "
          f"MiB (peak {rss['peak'] >> 20} MiB)")


def test_unary_requests_with_junk_are_invalid_argument_and_counted(server: ServerProc) -> None:
    """Ping, Sink and OpenDataPath with junk bytes: INVALID_ARGUMENT (or an answer, when the junk happens to
    parse), never anything else; each refusal counts in invalid_frames and reaches on_reject."""
    import grpc

    from layeredge_dist.transport import TransportConfig
    from layeredge_dist.transport.options import channel_options

    before, rejects_before = server.counters(), collections.Counter(server.rejects())
    # the server's limits (a Ping may ask for a reply of up to max_message_bytes - 1 KiB), not gRPC's 4 MiB default
    channel = grpc.insecure_channel(server.address, options=channel_options(TransportConfig()))
    md = (("authorization", f"Bearer {TOKEN}"),)
    rng = random.Random(FUZZ_SEED + 4)
    refused = 0
    codes: collections.Counter[str] = collections.Counter()
    try:
        ping = channel.unary_unary(service.method_path(service.PING_METHOD))
        open_dp = channel.unary_unary(service.method_path(service.OPEN_DATA_PATH_METHOD))
        sink = channel.stream_unary(service.method_path(service.SINK_METHOD))
        for i in range(fuzz_cases(300)):
            which = i % 3
            seed_msg = [service.ping_request_to_bytes(service.PingRequest(b"x", 3)),
                        service.data_path_request_to_bytes(service.DataPathRequest(EdgeId.parse("s0->s1"),
                                                                                   TensorRole.ACTIVATION)),
                        envelope.chunk_message(b"abc")][which]
            _, data = _mutate_bytes(rng, seed_msg)
            try:
                if which == 0:
                    ping(data, timeout=20, metadata=md)
                elif which == 1:
                    open_dp(data, timeout=20, metadata=md)
                else:
                    sink(iter([data, envelope.chunk_message(b"z")]), timeout=20, metadata=md)
                codes["OK"] += 1
            except grpc.RpcError as e:
                codes[e.code().name] += 1  # type: ignore[attr-defined]
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (i, data.hex(), e)  # type: ignore[attr-defined]
                # a well-formed Ping asking for a too large reply is refused by a limit, not as malformed
                refused += not (e.details() or "").startswith("reply_bytes:")  # type: ignore[attr-defined]
    finally:
        channel.close()
    after, rejects_after = server.counters(), collections.Counter(server.rejects())
    assert after["invalid_frames"] - before["invalid_frames"] == refused, codes
    assert sum((rejects_after - rejects_before).values()) == refused, (rejects_after - rejects_before, codes)
    assert refused > 0 and codes["OK"] > 0, codes
