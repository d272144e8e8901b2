# MiniVault image: quantised GPT-2 (GGML, ctransformers) behind a streaming HTTP API.
#
#   docker build -t minivault .                                         # amd64: ctransformers' wheel
#   docker build --build-arg CTRANSFORMERS_FROM_SOURCE=1 -t minivault .  # compile ctransformers instead
#   docker buildx build --platform linux/arm64 -t minivault .           # arm64: compiled from source
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
# Optional backends that need compiling (e.g. the llama.cpp one, `minivault[llamacpp]`) belong
# in this stage too, after the line above: the runtime stage copies only the venv.


FROM deps AS venv
RUN sh docker/slim-venv.sh /opt/venv


FROM deps AS app
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
