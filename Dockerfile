# modelpress service image: the API (`modelpress serve`) and the Celery worker (`modelpress worker`).
# CPU-only PyTorch; runs as an unprivileged user; data under /data (mount a volume there).

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# CPU wheels of the pinned torch/torchvision pair first, so the project install finds them satisfied
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml constraints.txt README.md ./
COPY compressors ./compressors
COPY service ./service
RUN grep -v -E '^(torch|torchvision)==' constraints.txt > /tmp/constraints.txt \
 && pip install -c /tmp/constraints.txt .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 modelpress && mkdir -p /data && chown modelpress /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODELPRESS_DATA_DIR=/data
USER modelpress
WORKDIR /home/modelpress
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["modelpress"]
# the API and local workers; for the distributed mode run `worker` in other containers
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
