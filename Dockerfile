# rtinjury images: one multi-stage build, two targets.
#
#   docker build --target cpu  -t rtinjury:cpu  .   API, DICOM node and CPU worker (also CPU-only sites)
#   docker build --target cuda -t rtinjury:cuda .   GPU inference worker
#
# Stages: base (Python 3.11, a virtual environment, the service user) -> deps-<target> (the
# dependencies alone, read from pyproject.toml) -> <target> (the code, installed without its
# dependencies). Editing the code rebuilds only the last layers. A plain `docker build .` builds
# the last stage, cpu.
#
# CUDA libraries. The cuda target stays on python:3.11-slim-bookworm and takes CUDA and cuDNN as
# NVIDIA's pip wheels instead of starting from an nvidia/cuda image: those images carry no
# Python 3.11 (Ubuntu 22.04 has 3.10, 24.04 has 3.12), and the wheels are what PyTorch itself
# depends on. The default PyPI build of the pinned torch 2.13.0 is a CUDA 13.0 build that pulls
# cuda-toolkit 13.0 and nvidia-cudnn-cu13 9.x; onnxruntime-gpu >= 1.28 with its [cuda,cudnn]
# extras is a CUDA 13 / cuDNN 9 build whose extras resolve to the same wheels, so one copy of the
# libraries serves both (deploy/requirements.py, ORT_GPU). The wheels keep their libraries in
# site-packages/nvidia/cu13/lib and site-packages/nvidia/cudnn/lib; torch finds them through its
# RPATH, ONNX Runtime's CUDA provider through LD_LIBRARY_PATH below. The host needs an NVIDIA
# driver for CUDA 13 (>= 580) and the NVIDIA Container Toolkit; nothing CUDA is installed on it.

FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    RTINJURY_STORAGE_ROOT=/data \
    HF_HUB_OFFLINE=1 \
    MPLBACKEND=Agg

# The service user (uid/gid 10001) owns /data only; the code and the environment stay root's.
RUN python -m venv /opt/venv \
    && groupadd --system --gid 10001 rtinjury \
    && useradd --system --uid 10001 --gid rtinjury --no-log-init --create-home \
        --home-dir /home/rtinjury --shell /usr/sbin/nologin rtinjury \
    && mkdir -p /data /opt/rtinjury \
    && chown rtinjury:rtinjury /data

# ---------------------------------------------------------------------------------------------
# CPU dependencies: torch from the PyTorch CPU index (the PyPI default is a multi-GB CUDA build),
# then everything else from PyPI.
FROM base AS deps-cpu
# A mirror of the PyTorch CPU wheels can be given with --build-arg TORCH_INDEX_URL=...
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY pyproject.toml deploy/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml --target cpu --out /tmp/build \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" -r /tmp/build/torch.txt \
    && pip install --no-cache-dir -r /tmp/build/requirements.txt \
    && python -c "import torch, onnxruntime; assert torch.version.cuda is None, torch.__version__" \
    && rm -rf /tmp/build

# ---------------------------------------------------------------------------------------------
# CUDA dependencies: the default PyPI torch (CUDA 13) and onnxruntime-gpu in place of onnxruntime.
FROM base AS deps-cuda
COPY pyproject.toml deploy/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml --target cuda --out /tmp/build \
    && pip install --no-cache-dir -r /tmp/build/torch.txt -r /tmp/build/requirements.txt \
    && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()" \
    && rm -rf /tmp/build

# ---------------------------------------------------------------------------------------------
# The GPU inference worker (compose: worker-gpu). No GPU is needed to build it.
FROM deps-cuda AS cuda
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RTINJURY_DEVICE=cuda
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
COPY models ./models
COPY deploy/healthcheck.py /opt/rtinjury/healthcheck.py
# --no-deps: onnxruntime-gpu stands in for the onnxruntime that pyproject.toml names.
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000 11112
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/opt/rtinjury/healthcheck.py", "http", "http://127.0.0.1:8000/healthz"]
# Like cpu, it serves the API by default (with the embedded worker when no broker is set, e.g. a
# single GPU machine: docker run --gpus all); compose runs it as `rtinjury worker --queues gpu`.
CMD ["rtinjury", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# The CPU image: API (default command), DICOM node and CPU worker.
FROM deps-cpu AS cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
COPY models ./models
COPY deploy/healthcheck.py /opt/rtinjury/healthcheck.py
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000 11112
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/opt/rtinjury/healthcheck.py", "http", "http://127.0.0.1:8000/healthz"]
CMD ["rtinjury", "serve", "--host", "0.0.0.0", "--port", "8000"]
