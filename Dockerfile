# One image for every batchshift process: api, scheduler, worker, emulator.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY scheduler ./scheduler
COPY workers ./workers
COPY api ./api
COPY emulator ./emulator
COPY batchshift ./batchshift
RUN pip install . && useradd --system --uid 10001 batchshift

USER batchshift
# The shipped config/batchshift.toml points at a laptop; containers are configured by environment.
ENV BATCHSHIFT_CONFIG="" \
    BATCHSHIFT_LOG_FORMAT=json

EXPOSE 8000
ENTRYPOINT ["batchshift"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
