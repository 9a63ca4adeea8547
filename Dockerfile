# LayerEdge image: the `layeredge` CLI, Ray and a CPU build of torch on Python 3.11.
#
#   docker build -t layeredge:latest .
#   docker run --rm layeredge:latest --help
#
# The same image runs every Ray node of a KubeRay cluster (deploy/kuberay/raycluster.yaml): KubeRay replaces the
# container command with its own `ray start ...`, so ENTRYPOINT only matters for `docker run`.
#
# GPU image: build with the CUDA wheel index of torch 2.13.0 and tag it separately, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t layeredge:cuda .
FROM python:3.11-slim

# Where torch comes from. The CPU index serves a CPU-only wheel (~200 MB); a plain `pip install torch` from PyPI
# would pull a multi-GB CUDA build. The version stays pinned to torch==2.13.0 below whatever the index: the
# package's own range (torch<=2.13.0) must resolve to exactly this build, as on the development machines.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

# wget: KubeRay's readiness/liveness probes and its job submitter run `wget` inside the Ray containers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

# torch first, from its own index, so that `pip install .` finds the requirement already satisfied.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

WORKDIR /opt/layeredge
COPY pyproject.toml README.md ./
COPY layeredge_dist ./layeredge_dist
# Ray pinned to the version the manifests declare (RayCluster spec.rayVersion) and the code was checked against.
RUN pip install . "ray[default]==2.60.0" \
    && python -c "import torch, ray, layeredge_dist; assert torch.__version__.startswith('2.13.0'), torch.__version__"

# Non-root user; uid/gid 1000 as in Ray's own images, so fsGroup 1000 in the pod templates makes volumes writable.
RUN groupadd --gid 1000 layeredge \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash layeredge
USER layeredge
WORKDIR /home/layeredge

ENTRYPOINT ["layeredge"]
CMD ["--help"]
