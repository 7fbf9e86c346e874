"""Several replicas, each attested on its own: fan-out upload, own keys, a bad replica refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import blindai
from tests import onnx_models
from tests.fakes.intel_pki import FakeIntelPki
from tests.test_fake_sgx_e2e import MRENCLAVE, NOW, policy, start_world


def test_two_replicas_and_an_impostor(tmp_path: Path) -> None:
    pki = FakeIntelPki(NOW)
    worlds = [
        start_world(tmp_path / "a", pki=pki),
        start_world(tmp_path / "b", pki=pki),
        start_world(tmp_path / "evil", pki=pki, mrenclave=bytes(32)),
    ]  # genuine TEE, other code
    endpoints = [blindai.Endpoint("127.0.0.1", w.server.attested_port, w.server.unattested_port) for w in worlds]
    try:
        with blindai.connect_replicas(
            endpoints, policy=policy(), now=NOW, unsafe_trust_roots=[pki.root_pem], require=2
        ) as replicas:
            assert set(replicas.connections) == set(endpoints[:2])
            (bad,) = replicas.refused.items()
            assert bad[0] == endpoints[2] and isinstance(bad[1], blindai.PolicyError)
            assert "mrenclave" in str(bad[1])
            # each replica answered with its own attested key
            certs = {c.certificate_pem for c in replicas.connections.values()}
            assert len(certs) == 2
            infos = replicas.upload_model(onnx_models.mlp(seed=8))
            assert set(infos) == set(endpoints[:2]) and len({i.sha256 for i in infos.values()}) == 1
            first_id = next(iter(infos.values())).model_id
            x = np.ones((1, 16), np.float32)
            served = {replicas.run_model(first_id, x)[0] for _ in range(4)}
            assert served == set(endpoints[:2])  # round robin over the attested replicas only
            outputs = [replicas.run_model(first_id, x)[1].output for _ in range(2)]
            np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6)
            # the impostor never received the model
            with blindai.connect(
                "127.0.0.1",
                attested_port=endpoints[2].attested_port,
                unattested_port=endpoints[2].unattested_port,
                now=NOW,
                unsafe_trust_roots=[pki.root_pem],
                policy=policy(bytes(32)),
            ) as evil:
                assert evil.list_models() == []
            replicas.delete_model(first_id)
            for conn in replicas.connections.values():
                assert conn.list_models() == []
        with pytest.raises(blindai.PolicyError):
            blindai.connect_replicas(endpoints[2:], policy=policy(), now=NOW, unsafe_trust_roots=[pki.root_pem])
    finally:
        for w in worlds:
            w.server.stop()
            w.gramine.stop()
    assert bytes(32) != MRENCLAVE
