FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app app
COPY state state
COPY streams streams
COPY schemas schemas
COPY controls controls
COPY features features
COPY connectors connectors
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT []
