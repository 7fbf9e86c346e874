# syntax=docker/dockerfile:1.7
# BlindAI server image. Build: docker build -t blindai . ; run (simulation quickstart): docker compose up
# The base is pinned by version; pin the digest too in production:
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm   ->   FROM python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/blindai \
 && /opt/blindai/bin/pip install --upgrade pip \
 && /opt/blindai/bin/pip install ".[server]" \
 && find /opt/blindai -name "__pycache__" -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="blindai" \
      org.opencontainers.image.description="Confidential inference for ONNX models in TEEs (SGX/Gramine, TDX, SEV-SNP)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 blindai \
 && useradd --system --uid 10001 --gid blindai --home-dir /home/blindai --create-home blindai \
 && mkdir -p /var/lib/blindai && chown blindai:blindai /var/lib/blindai
COPY --from=build /opt/blindai /opt/blindai
ENV PATH=/opt/blindai/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1
USER 10001:10001
WORKDIR /home/blindai
EXPOSE 50051 50052
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:50052/health', timeout=2).status == 200 else 1)"]
# TEE auto-detection: Gramine SGX (/dev/attestation), then configfs-tsm (TDX, SEV-SNP).
# Without a TEE it refuses to start; add --simulation for development (docker-compose.yml does).
ENTRYPOINT ["blindai", "serve", "--host", "0.0.0.0"]
CMD ["--tee", "auto"]
