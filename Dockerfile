# medaug image: CPU by default; a CUDA image by build argument, e.g.
#   docker build -t medaug:cpu .
#   docker build -t medaug:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# The cluster launcher (cluster/cluster.yaml) runs this image on every node.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg

# CUDA base images come without Python; the slim image already has it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends rsync openssh-client procps \
 && (command -v python3 >/dev/null || apt-get install -y --no-install-recommends python3 python3-venv python3-pip) \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/medaug
COPY requirements.lock pyproject.toml README.md ./
# torch/torchvision from the index matching the base image (CPU or CUDA wheels), then the rest.
RUN pip install --upgrade pip \
 && pip install --index-url ${TORCH_INDEX} \
      "$(grep '^torch==' requirements.lock)" "$(grep '^torchvision==' requirements.lock)" \
 && grep -vE '^(torch|torchvision)==' requirements.lock > /tmp/rest.txt \
 && pip install -r /tmp/rest.txt

COPY medaug ./medaug
COPY sweeps ./sweeps
COPY cluster ./cluster
RUN pip install --no-deps -e .

# MLflow UI / tracking server port and Ray dashboard.
EXPOSE 5000 8265
CMD ["medaug", "--help"]
