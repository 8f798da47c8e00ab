# syntax=docker/dockerfile:1
# One image recipe for every lmforge service, built from the repository root:
#   docker build --build-arg SERVICE=gateway -t lmforge/gateway:0.1.0 .
# SERVICE is one of ingest, preprocess, trainer, registry, inference, gateway.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# --- build: a virtualenv with lmforge-common and the one service, installed from source ------
FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
RUN case "${SERVICE}" in \
      ingest|preprocess|trainer|registry|inference|gateway) ;; \
      *) echo "build with --build-arg SERVICE=<ingest|preprocess|trainer|registry|inference|gateway>, not '${SERVICE}'" >&2; exit 1 ;; \
    esac
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints.txt ./
COPY libs/common libs/common
COPY services/${SERVICE} services/${SERVICE}
RUN python -m venv /opt/lmforge \
 && /opt/lmforge/bin/pip install -c constraints.txt ./libs/common ./services/${SERVICE}

# --- runtime: the virtualenv, a non-root user and folders it may write --------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/lmforge/bin:${PATH} \
    LMFORGE_SERVICE=${SERVICE} \
    HOME=/app/var/home \
    HF_HOME=/app/var/cache/huggingface
# Named volumes are mounted at /artifacts (artifact store) and /models (Triton's repository).
# They are created here owned by uid 10001, so a fresh named volume inherits that ownership;
# docker-compose's volume-init step fixes volumes that already exist (see docker-compose.yml).
RUN groupadd --system --gid 10001 lmforge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app/var/home \
      --shell /usr/sbin/nologin lmforge \
 && mkdir -p /app/var/home /artifacts /models \
 && chown -R 10001:10001 /app/var /artifacts /models
COPY --from=build /opt/lmforge /opt/lmforge
COPY deploy/docker/healthcheck.py /opt/lmforge/healthcheck.py
WORKDIR /app
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
  CMD ["python", "/opt/lmforge/healthcheck.py"]
# exec: the service is PID 1 and gets SIGTERM itself (graceful drain of consumers and HTTP).
CMD ["/bin/sh", "-c", "exec python -m \"lmforge.${LMFORGE_SERVICE}\""]
