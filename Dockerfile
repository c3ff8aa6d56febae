FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY tasks ./tasks
COPY worker ./worker
RUN pip install --no-cache-dir . && mkdir -p /var/lib/idvcancel/audit-archive \
    && chown nobody /var/lib/idvcancel/audit-archive
USER nobody
CMD ["idvcancel", "worker"]
