# MiniVault image: quantised GPT-2 (GGML, ctransformers) behind a streaming HTTP API.
#
#   docker build -t minivault .                                         # amd64: ctransformers' wheel
#   docker build --build-arg CTRANSFORMERS_FROM_SOURCE=1 -t minivault .  # compile ctransformers instead
#   docker buildx build --platform linux/arm64 -t minivault .           # arm64: compiled from source
#   docker build --build-arg WITH_LLAMACPP=1 -t minivault .             # with the llama.cpp engine
#
# Build stages: `deps` installs the dependencies into /opt/venv (with a compiler only when
# ctransformers is built from source), `venv` strips that venv, `app` installs MiniVault
# itself. The runtime stage starts again from the bare base image and copies in the
# stripped venv and MiniVault's files: no compiler, pip, pip cache or build tool.

FROM python:3.11-slim-bookworm AS deps

# Set by BuildKit and buildah; install-deps.sh asks dpkg when it is empty (legacy builder).
ARG TARGETARCH
# auto: from source on every architecture but amd64; 1: always; 0: never.
ARG CTRANSFORMERS_FROM_SOURCE=auto

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src

# From pyproject.toml alone: editing MiniVault's code keeps these layers cached.
COPY pyproject.toml ./
COPY docker/install-deps.sh docker/slim-venv.sh docker/
RUN TARGETARCH="$TARGETARCH" CTRANSFORMERS_FROM_SOURCE="$CTRANSFORMERS_FROM_SOURCE" sh docker/install-deps.sh
# The llama.cpp engine compiles here (a C++ compiler from Debian, CMake and Ninja from PyPI):
# the runtime stage copies only the venv. Declared here, so the layers above stay cached either way.
# 1: compile the llama.cpp engine (`minivault[llamacpp]`) in; LLAMACPP_CPU picks its kernels (auto:
# this build machine's, avx512 or avx2; set avx2 for an image that must run on any x86-64 CPU).
ARG WITH_LLAMACPP=0
ARG LLAMACPP_CPU=auto
COPY docker/build-llamacpp.sh docker/
RUN if [ "$WITH_LLAMACPP" = 1 ]; then \
        apt-get update && apt-get install -y --no-install-recommends g++ make \
        && LLAMACPP_CPU="$LLAMACPP_CPU" sh docker/build-llamacpp.sh python \
        && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["llamacpp"]))' > /tmp/llamacpp.txt \
        && pip install -r /tmp/llamacpp.txt; \
    fi


FROM deps AS venv
RUN sh docker/slim-venv.sh /opt/venv


FROM deps AS app
# A C compiler and Python's headers for the sampler's top-k (service/engine/_sampler.c), in this
# stage only: the runtime stage copies the built module. Optional: where it cannot be built,
# the sampler finds the same tokens with numpy, slower.
RUN need=""; command -v gcc >/dev/null || need="gcc libc6-dev"; \
    python -c 'import os, sysconfig; os.stat(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
        2>/dev/null || need="$need python3-dev"; \
    if [ -n "$need" ]; then \
        { apt-get update && apt-get install -y --no-install-recommends $need; } \
        || echo "could not install $need: the sampler's top-k will run on numpy" >&2; \
    fi
COPY README.md ./
COPY service ./service
COPY docker/stage-app.py docker/
RUN pip install --no-deps --no-build-isolation . && python docker/stage-app.py


FROM python:3.11-slim-bookworm AS runtime

RUN groupadd --gid 10001 minivault \
 && useradd --uid 10001 --gid minivault --no-log-init --home-dir /home/minivault --create-home \
        --shell /usr/sbin/nologin minivault \
 && mkdir -p /models /logs /cache/huggingface \
 && chown minivault:minivault /models /logs /cache /cache/huggingface

# llama.cpp's threads are OpenMP's: its runtime library, where the engine was compiled in
ARG WITH_LLAMACPP=0
RUN if [ "$WITH_LLAMACPP" = 1 ]; then \
        apt-get update && apt-get install -y --no-install-recommends libgomp1 \
        && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi

COPY --from=venv /opt/venv /opt/venv
COPY --from=app /staging/ /
COPY docker/entrypoint.sh docker/init-models.sh docker/healthcheck.py /app/docker/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/cache/huggingface \
    MINIVAULT_HOST=0.0.0.0 \
    MINIVAULT_PORT=8000 \
    MINIVAULT_MODELS_DIR=/models \
    MINIVAULT_LOG_FILE=/logs/log.jsonl

WORKDIR /app
EXPOSE 8000

# The model loads in a second or two: probe every 5 s (healthy soon after start), give
# start-up 15 s before failures count, call it unhealthy after 3 misses in a row.
HEALTHCHECK --interval=5s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]

# Runs as the numeric non-root user by default (Kubernetes' runAsNonRoot needs a number).
# compose.yaml starts it as root instead, only so the entrypoint can make root-owned bind
# mounts (/logs, /models) writable before it exec's the command as an unprivileged user
# (see docker/entrypoint.sh); the server is PID 1 and gets SIGTERM itself, which makes
# it drain running generations.
USER 10001:10001
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["minivault", "serve"]
