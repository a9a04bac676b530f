FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Fixed uid so bind-mounted files (SSH keys) can be granted to it on the host.
RUN useradd --create-home --uid 10001 --user-group worker

WORKDIR /app
# The worker's locked, hashed dependencies (make lock), then the project itself.
COPY requirements-runtime.lock .
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements-runtime.lock
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && rm -rf build *.egg-info

# Pre-create the state dir so a fresh named volume mounted here inherits worker ownership.
RUN mkdir /state && chown worker:worker /state

USER 10001:10001
CMD ["python", "worker.py"]
