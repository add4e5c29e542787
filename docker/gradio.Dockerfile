# The thin clients: the Gradio UI (default) or, with EXTRAS=load, the Locust load generator.
#
#   docker build -f docker/gradio.Dockerfile -t agegender-triton/gradio:0.1.0 .
#   docker build -f docker/gradio.Dockerfile --build-arg EXTRAS=load -t agegender-triton/locust:0.1.0 .
#
# Neither needs TensorFlow: they speak to Triton through tritonclient only.
FROM python:3.11.11-slim-bookworm

ARG EXTRAS=ui
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
# Copy only what the packages need so the layer cache survives edits to training code.
COPY pyproject.toml README.md ./
COPY common/ common/
COPY client/ client/
COPY gradio_frontend/ gradio_frontend/
COPY loadtest/ loadtest/
RUN pip install ".[${EXTRAS}]"

# Inside a container the UI must listen on all interfaces to be reachable through the
# published port; docker-compose.yml publishes it on the host's loopback only.
ENV GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860
EXPOSE 7860 8089
CMD ["python", "-m", "gradio_frontend"]
