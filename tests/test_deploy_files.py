"""The deployment files are complete and well-formed (Docker cannot build here: no engine)."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2, "multi-stage"
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert re.search(r"^USER 10001", text, re.M), "non-root"
    assert "EXPOSE 50051 50052" in text and "HEALTHCHECK" in text and "/health" in text
    assert '"blindai", "serve"' in text and '"--tee", "auto"' in text


def test_compose_is_a_simulation_quickstart() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = doc["services"]["blindai"]
    assert "--simulation" in svc["command"] and {"50051:50051", "50052:50052"} <= set(svc["ports"])


def render_gramine_manifest() -> dict[str, object]:
    jinja2 = pytest.importorskip("jinja2")

    class Gramine:
        libos = "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"

        @staticmethod
        def runtimedir() -> str:
            return "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    text = env.from_string((DEPLOY / "gramine" / "blindai.manifest.template").read_text()).render(
        gramine=Gramine,
        env={},
        entrypoint="/opt/blindai/bin/python3",
        venv="/opt/blindai",
        log_level="error",
        arch_libdir="/lib/x86_64-linux-gnu",
        python_prefix="/usr/local",
        enclave_size="16G",
        max_threads=64,
        omp_threads=8,
    )
    return tomllib.loads(text)


def test_gramine_manifest_renders_and_is_complete() -> None:
    m = render_gramine_manifest()
    sgx = m["sgx"]
    assert isinstance(sgx, dict)
    assert sgx["remote_attestation"] == "dcap" and sgx["debug"] is False
    assert sgx["enclave_size"] == "16G" and sgx["max_threads"] >= 32
    assert any("/opt/blindai" in f for f in sgx["trusted_files"])
    mounts = m["fs"]["mounts"]  # type: ignore[index]
    enc = [x for x in mounts if x.get("type") == "encrypted"]
    assert enc and enc[0]["key_name"] == "_sgx_mrenclave" and enc[0]["path"] == "/var/lib/blindai"
    assert any(x.get("type") == "tmpfs" for x in mounts)
    argv = m["loader"]["argv"]  # type: ignore[index]
    assert argv[1:5] == ["-m", "blindai", "serve", "--tee"] and "sgx" in argv
    assert "--model-store" in argv


def test_kubernetes_manifests() -> None:
    docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    dep = kinds["Deployment"]["spec"]
    assert dep["replicas"] >= 2
    pod = dep["template"]["spec"]
    (c,) = pod["containers"]
    assert {p["containerPort"] for p in c["ports"]} == {50051, 50052}
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and c["livenessProbe"]["httpGet"]["port"] == "evidence"
    assert c["resources"]["limits"]["memory"] and pod["securityContext"]["runAsNonRoot"] is True
    services = [d for d in docs if d["kind"] == "Service"]
    assert all(p["protocol"] == "TCP" for s in services for p in s["spec"]["ports"])
    assert any(s["spec"].get("clusterIP") == "None" for s in services)
    assert "InferenceService" in kinds and "Kustomization" in kinds
    assert "runtimeClassName" in (DEPLOY / "k8s" / "deployment.yaml").read_text()
