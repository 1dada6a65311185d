# pacs_server in a container: DICOM on 11112, the HTTP side (/metrics, /status, /healthz,
# /api, DICOMweb, the OHIF viewer at /viewer) on 9110, data in /data.
#
#   docker build -t pacs_server .
#   docker run -d --name pacs -p 11112:11112 -p 9110:9110 -v pacs-data:/data pacs_server
#
# The configuration is /etc/pacs_server.yaml (docker/pacs_server.yaml); mount your own
# file over it to change it, and `docker kill -s HUP pacs` to reload it.
# Build stage: the OHIF viewer, fetched with npm pack and verified against the pinned
# checksum by scripts/fetch-viewer (standard-library Python), unpacked for /viewer/.
FROM python:3.11-slim AS viewer
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY scripts/fetch-viewer scripts/fetch-viewer
COPY src/pacs_server/__init__.py src/pacs_server/viewer_fetch.py src/pacs_server/
RUN python scripts/fetch-viewer --dest /opt/pacs_server/viewer

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (not editable) from the build context, then drop the sources.
WORKDIR /tmp/pacs_server
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && cd / && rm -rf /tmp/pacs_server

# An unprivileged user that owns the data volume. Named volumes inherit the owner of
# /data below; for a bind mount, chown the host directory to 10001:10001.
RUN groupadd --system --gid 10001 pacs \
    && useradd --system --uid 10001 --gid pacs --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin pacs \
    && mkdir -p /data \
    && chown pacs:pacs /data

COPY --from=viewer /opt/pacs_server/viewer /opt/pacs_server/viewer
COPY docker/pacs_server.yaml /etc/pacs_server.yaml

VOLUME ["/data"]
EXPOSE 11112 9110
WORKDIR /data
USER pacs

# Healthy while /healthz answers 200: the DICOM listener accepts (or is paused on
# purpose) and the index answers a trivial query within a second; 503 otherwise. (With
# monitoring.enabled: false in your own config, override or disable this check.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9110/healthz', timeout=4)"]

# SIGTERM (docker stop) drains associations for server.shutdown_grace seconds; give
# `docker stop -t` more than that.
STOPSIGNAL SIGTERM
CMD ["pacs_server", "--config", "/etc/pacs_server.yaml"]
