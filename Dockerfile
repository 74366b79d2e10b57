# rankopt: one image for the REST API (`rankopt serve`) and the workers (`rankopt worker`).
#
#   docker build -t rankopt .                       # torch from PyPI (CUDA wheels on x86_64)
#   docker build -t rankopt:cpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# docker-compose.yml runs it; see README "Deployment and scaling out".
FROM python:3.11-slim

# TORCH_INDEX_URL: install torch/torchvision from this index first (e.g. the CPU-only wheels);
# empty: the PyPI wheels that `pip install .` pulls in. EXTRAS: the optional dependencies
# (postgres = psycopg 3; onnx = the ONNX export).
ARG TORCH_INDEX_URL=""
ARG EXTRAS="postgres,onnx"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RANKOPT_ARTIFACT_ROOT=/artifacts

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tensorops ./tensorops
COPY worker ./worker
COPY service ./service
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" torch torchvision; \
    fi \
    && pip install ".[${EXTRAS}]" \
    && rm -rf /src/build

# Run as an unprivileged user; /artifacts is where the shared artifact volume is mounted (a
# named volume takes this folder's owner when it is first created).
RUN groupadd --gid 10001 rankopt \
    && useradd --uid 10001 --gid rankopt --create-home --shell /usr/sbin/nologin rankopt \
    && mkdir -p /artifacts \
    && chown rankopt:rankopt /artifacts
USER rankopt
WORKDIR /home/rankopt

EXPOSE 8000
ENTRYPOINT ["rankopt"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
