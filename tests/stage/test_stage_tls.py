"""A run configured with transport.tls_* trains over mutual TLS on every edge (loopback here)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from stage_support import ThreadedPipeline

from layeredge_dist.config import ConfigError, RunConfig, with_overrides
from layeredge_dist.model import ByteGPTConfig, byte_gpt_spec, even_cuts
from layeredge_dist.model.workload import SyntheticWorkload
from layeredge_dist.pipeline import setup


def _stage_certs(root: Path) -> dict[str, str]:
    """A CA and one certificate for 127.0.0.1 usable as server and client (what every stage presents)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "run CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stage")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    files = {"ca": ca.public_bytes(serialization.Encoding.PEM), "cert": cert.public_bytes(serialization.Encoding.PEM),
             "key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())}
    for name, data in files.items():
        (root / f"{name}.pem").write_bytes(data)
    return {name: str(root / f"{name}.pem") for name in files}


def test_run_config_with_tls_trains_over_mutual_tls(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    certs = _stage_certs(tmp_path)
    cfg = with_overrides(RunConfig(), ["transport.data_path=grpc", f"transport.tls_ca={certs['ca']}",
                                       f"transport.tls_cert={certs['cert']}", f"transport.tls_key={certs['key']}"])
    transport = setup.transport(cfg)
    assert transport.tls is not None and transport.tls.require_client_auth and transport.token
    model = byte_gpt_spec(ByteGPTConfig(context=16, d_model=32, n_layer=3, n_head=2), seed=1)
    pipe = ThreadedPipeline(model, even_cuts(3, 3), 3, "1f1b", microbatches=2, transport=transport)
    try:
        losses = pipe.call(SyntheticWorkload(model, batch_size=4, context=16, seed=0).batch(0))
        assert len(losses) == 2 and all(float(x) > 0 for x in losses)
    finally:
        pipe.close()


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="transport.tls_ca"):
        with_overrides(RunConfig(), ["transport.data_path=grpc", "transport.tls_ca=/x.pem"])  # cert and key missing
    with pytest.raises(ConfigError, match="transport.data_path"):
        with_overrides(RunConfig(), ["transport.tls_ca=/a", "transport.tls_cert=/b", "transport.tls_key=/c"])
