FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY tasks ./tasks
COPY worker ./worker
RUN pip install --no-cache-dir .
USER nobody
CMD ["idvcancel", "worker"]
