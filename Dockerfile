# Keyturn server image: `docker build -t keyturn .` at the repo root.
# The database defaults to SQLite in the /data volume; set
# KEYTURN_DATABASE_URL=postgresql+asyncpg://... to use PostgreSQL.

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY clients/python ./clients/python
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
RUN pip install --no-cache-dir ./clients/python .


FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KEYTURN_LISTEN=0.0.0.0:50051 \
    KEYTURN_DATABASE_URL=sqlite+aiosqlite:////data/keyturn.db

RUN groupadd --system --gid 10001 keyturn \
    && useradd --system --no-log-init --uid 10001 --gid keyturn \
       --home-dir /data --no-create-home --shell /usr/sbin/nologin keyturn \
    && mkdir /data \
    && chown keyturn:keyturn /data

COPY --from=builder /opt/venv /opt/venv

WORKDIR /data
USER 10001:10001
VOLUME /data
EXPOSE 50051

# With KEYTURN_TLS_CERT_FILE set, `keyturn health` speaks TLS to the loopback by itself,
# trusting that certificate (README "TLS"): nothing to change here.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["keyturn", "health"]

ENTRYPOINT ["keyturn"]
CMD ["serve"]
