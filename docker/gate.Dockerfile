# The gate between the door (nginx) and Triton: serving/runtime/gate.py, docs/security.md "The gate".
#
#   docker build -f docker/gate.Dockerfile -t agegender-triton/gate:0.1.0 .
#
# The project's base install (numpy, pillow, tritonclient[grpc,http], which brings grpcio and aiohttp) is all it needs.
FROM python:3.11.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY common/ common/
COPY serving/ serving/
RUN pip install .

USER nobody
EXPOSE 8010 8011
# Inside the compose network only (expose, not published): the door is its one caller. --held-bytes: compose gives
# this container 512 MiB (mem_limit), and a body is held up to about twice while it is read, so the gate's budget of
# request bytes held at once is 192 MiB here, not its 520 MiB default (tests/test_compose.py checks the two agree).
CMD ["python", "-m", "serving.runtime.gate", "--grpc", "0.0.0.0:8011", "--http", "0.0.0.0:8010", \
     "--triton-grpc", "triton:8001", "--triton-http", "triton:8000", "--held-bytes", "201326592"]
