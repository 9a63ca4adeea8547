"""Weights pushed from the driver to the stages over the edge transport, on a real 3-node local Ray cluster:
int8 push of fine-tuned weights to an inference pipeline, a corrupted checksum rejected with every stage's
weights intact, exported raw / wire bytes, deployment of ``model.weights`` by the driver, re-shipping to a
restarted stage."""

from __future__ import annotations

import re
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from layeredge_dist.model import (
    ByteGPTConfig,
    build_partition,
    byte_gpt_spec,
    even_cuts,
    merge_state_dicts,
    partition_specs,
    run_chain,
)
from layeredge_dist.model.workload import SyntheticWorkload
from layeredge_dist.codecs import parse_codec
from layeredge_dist.prune.transfer import (
    Part,
    TransferPolicy,
    block_error,
    decode_state,
    encode_state,
    manifest_tensor,
)
from layeredge_dist.stage import OptimizerSpec, StageSpec
from layeredge_dist.transport import TransportConfig

# d_model 128: weight matrices dominate, so per-frame headers of the small vectors do not dilute the int8 ratio
MODEL = ByteGPTConfig(context=16, d_model=128, n_layer=3, n_head=4)


def _spec(**kw: object) -> StageSpec:
    base = StageSpec(0, 3, byte_gpt_spec(MODEL, seed=11), even_cuts(3, 3), "1f1b", 2,
                     optimizer=OptimizerSpec("sgd", lr=0.5),
                     transport=TransportConfig(token="weights-token", tcp_data_path=True), recv_timeout_s=30.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def _placement(**kw: object):  # type: ignore[no-untyped-def]
    from layeredge_dist.pipeline.driver import Placement

    return Placement(**{"start_timeout_s": 60.0, "step_timeout_s": 60.0, **kw})  # type: ignore[arg-type]


def _work() -> SyntheticWorkload:
    return SyntheticWorkload(_spec().model, batch_size=4, context=16, seed=3)


def _local_outputs(spec: StageSpec, states: list[dict[str, torch.Tensor]], batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    parts = [build_partition(ps, st) for ps, st in zip(partition_specs(spec.model, spec.cuts), states)]
    x, side = batch
    return run_chain(parts, x, side)[0]


def _scrape(target: str) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read().decode()
    out = {}
    for line in body.splitlines():
        m = re.match(r"^(layeredge_weight_\w+)\{([^}]*)\} ([0-9.e+-]+)$", line)
        if m:
            out[f"{m.group(1)}{{{m.group(2)}}}"] = float(m.group(3))
    return out


@pytest.fixture(scope="module")
def trained(ray_cluster) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:  # type: ignore[no-untyped-def]
    """Weights after 3 training steps on a pipeline (fp32 edges), and that pipeline's inference outputs."""
    from layeredge_dist.pipeline.driver import Pipeline

    work = _work()
    with Pipeline(_spec(), _placement()) as pipe:
        for k in range(3):
            pipe.call(work.batch(k), "train")
        out = torch.cat(pipe.call(work.batch(10), "infer").outputs)
        return pipe.parameters(), out


def test_int8_push_of_finetuned_weights_to_an_inference_pipeline(trained, ray_cluster) -> None:  # type: ignore[no-untyped-def]
    from layeredge_dist.pipeline.driver import Pipeline, WeightTransferError

    states, fp32_out = trained
    spec = _spec()
    batch = _work().batch(10)
    bundles = [encode_state(st, TransferPolicy("int8")) for st in states]
    decoded = [decode_state(b) for b in bundles]
    for st, dec in zip(states, decoded):  # the int8 error bound, per block of 128, on every float tensor
        for k, t in st.items():
            if t.is_floating_point() and t.numel():
                assert block_error(t, dec[k])["max_rel_to_absmax"] <= 1 / 127 + 1e-6, k
    int8_local = _local_outputs(spec, decoded, batch)
    with Pipeline(replace(spec, metrics=True), _placement()) as pipe:
        fresh_out = torch.cat(pipe.call(batch, "infer").outputs)
        assert (fresh_out - fp32_out).abs().max() > 1e-3  # training changed the weights: the push must matter

        push = pipe.push_weights(states, "int8")
        got = pipe.parameters()
        for dec, have in zip(decoded, got):  # exactly what the int8 codec decodes, on every stage
            assert dec.keys() == have.keys() and all(torch.equal(dec[k], have[k]) for k in dec)
        out = torch.cat(pipe.call(batch, "infer").outputs)
        # the pipeline computes what the int8 weights compute in one process ...
        torch.testing.assert_close(out, int8_local, atol=1e-5, rtol=1e-5)
        # ... so its distance from the fp32 pipeline is the measured int8 error, and that error is small
        measured = float((int8_local - fp32_out).abs().max())
        assert float((out - fp32_out).abs().max()) <= measured + 1e-5
        rel = float((out - fp32_out).norm() / fp32_out.norm())
        assert 0 < rel < 0.02, rel

        assert push.ratio >= 3.8, push
        assert push.raw_bytes == sum(b.raw_nbytes for b in bundles)
        assert push.wire_bytes > push.payload_bytes  # headers and framing counted
        assert [r["stage"] for r in push.stages] == [0, 1, 2]
        for info, row in zip(pipe.infos, push.stages):
            series = _scrape(info["metrics"])
            stage = f's{row["stage"]}'
            raw = series[f'layeredge_weight_raw_bytes_total{{stage="{stage}"}}']
            wire = series[f'layeredge_weight_wire_bytes_total{{stage="{stage}"}}']
            assert raw == row["raw_bytes"] and wire == row["wire_bytes"]
            assert raw / wire >= 3.8, (stage, raw / wire)
            assert series[f'layeredge_weight_transfer_seconds_count{{stage="{stage}"}}'] == 1.0

        # a corrupted checksum: stage 1 rejects, naming the tensor; no stage loads anything
        before = pipe.parameters()
        tampered = [encode_state(st, TransferPolicy("int4")) for st in states]
        entry = tampered[1].manifest["tensors"][0]
        entry["xxh3"] = "0" * 16
        body = manifest_tensor(tampered[1].manifest)  # the sender's checksum of one tensor, corrupted
        tampered[1] = replace(tampered[1], manifest_part=Part("raw", body, parse_codec("raw").encode(body)))
        with pytest.raises(WeightTransferError, match=re.escape(repr(entry["name"]))) as err:
            pipe.push_encoded(tampered)
        assert err.value.stage == 1 and "checksum" in str(err.value)
        after = pipe.parameters()
        for a, b in zip(before, after):
            assert all(torch.equal(a[k], b[k]) for k in a)
        torch.testing.assert_close(torch.cat(pipe.call(batch, "infer").outputs), out, atol=0, rtol=0)
        assert _scrape(pipe.infos[1]["metrics"])['layeredge_weight_rejected_total{reason="checksum",stage="s1"}'] == 1


def test_deployment_ships_the_weights_file_and_reships_after_a_restart(trained, ray_cluster,
                                                                        tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import ray
    from safetensors.torch import save_file

    from layeredge_dist.pipeline.driver import Pipeline

    states, fp32_out = trained
    spec = _spec()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in merge_state_dicts(spec.model, spec.cuts, states).items()}, str(path))
    spec = replace(spec, model=replace(spec.model, weights=str(path)))
    batch = _work().batch(10)
    with Pipeline(spec, _placement(weight_codec="fp32", max_restarts=1)) as pipe:
        assert pipe.deployment is not None and [r["stage"] for r in pipe.deployment.stages] == [0, 1, 2]
        assert pipe.base.model.weights == str(path)  # checkpoint identity keeps the file
        for want, have in zip(states, pipe.parameters()):  # fp32: lossless
            assert all(torch.equal(want[k], have[k]) for k in want)
        torch.testing.assert_close(torch.cat(pipe.call(batch, "infer").outputs), fp32_out, atol=1e-5, rtol=1e-5)

        pid = pipe.infos[1]["pid"]
        pipe.kill_stage(1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until Ray has restarted it (the kill is asynchronous)
            try:
                if ray.get(pipe.actors[1].info.remote(), timeout=5)["pid"] != pid:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            time.sleep(0.2)
        pipe.recover()  # the restarted stage 1 built seeded weights; the deployment push is re-shipped to it
        assert pipe.infos[1]["pid"] != pid
        for want, have in zip(states, pipe.parameters()):
            assert all(torch.equal(want[k], have[k]) for k in want)
