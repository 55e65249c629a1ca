#!/bin/sh
# Wheels for the GPU machine's `carry` (README, "GPU throughput"): what its image lacks to import
# tests/bench/gpu_bench.py and the gpu-marked tests, at the versions installed in .venv, built for
# the image's CPython 3.12 on x86-64. Run here (PyPI reachable), from anywhere in the checkout:
#     sh tests/bench/gpu_wheels.sh
# The image already has torch (CUDA), transformers, huggingface-hub, accelerate, safetensors, numpy,
# pillow, opencv, pytest and the rest; the project itself travels as the working tree (PYTHONPATH).
# The list was found by running both on the CPU with only the image's packages and these importable.
# Platform tags stop at manylinux_2_28 (glibc 2.28): the image's glibc is not recorded, older is safer.
set -eu
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"  # never committed, only carried

# gpu_bench: diffusers; the OOM-batcher case imports workers.models.runtime -> shared.config (pydantic).
# The tests' conftest: fastapi, sqlalchemy, celery, boto3, psycopg, redis, opentelemetry, cryptography.
names="diffusers
pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
fastapi starlette
sqlalchemy psycopg psycopg-binary pgvector
celery kombu amqp vine billiard tzlocal redis
boto3 botocore s3transfer jmespath
cryptography cffi
opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto
opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common
opentelemetry-exporter-otlp-common opentelemetry-exporter-http-transport"

pins=""
for name in $names; do
  pins="$pins $name==$(.venv/bin/python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")"
done
rm -rf .whl
# shellcheck disable=SC2086 # one argument per pin
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl $pins
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (the device run carries it: carry [\".whl\"])"
