# The reference agent's image, for CI that can pull from a registry. `cargo xtask image` builds the same image
# without one (from Debian packages, reproducibly); see docs/container-image.md.
#
#   docker build -t python-sandbox-agent:dev .                       # from source (the last stage, `runtime`)
#   docker build --target prebuilt -t python-sandbox-agent:dev CTX  # CTX holds prebuilt/python-sandbox-agent
#
# The stages are in this order for the legacy builder (DOCKER_BUILDKIT=0), which builds every stage up to the
# target in file order: `--target prebuilt` never reaches the Rust image. BuildKit skips unused stages anyway.
#
# The agent embeds CPython 3.11 (libpython3.11.so.1.0). The same binary runs on python:3.11-slim (libpython in
# /usr/local/lib, stdlib in /usr/local/lib/python3.11) and on the Debian base `cargo xtask image --dockerfile`
# loads (/usr/lib/x86_64-linux-gnu, /usr/lib/python3.11): the interpreter computes its prefix itself (from
# python3 on PATH, else libpython's built-in /usr), so no PYTHONHOME is set here.

ARG RUNTIME_BASE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1-bookworm

# What every runnable stage shares. No RUN: the Debian base has no shell.
FROM ${RUNTIME_BASE} AS runtime-base
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    HOME=/tmp \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1
# The nonroot user of deploy/base/sandbox-template.yaml; /tmp is the only place written (read-only root).
USER 65532:65532
# Writable, and (on the Debian base) keeps Python from taking `/` for its prefix (docs/container-image.md).
WORKDIR /tmp
EXPOSE 8494
ENTRYPOINT ["/usr/local/bin/python-sandbox-agent"]
CMD ["--listen", "0.0.0.0:8494"]

# A binary built elsewhere (e.g. by `cargo xtask image`, against Debian 12's libpython3.11).
FROM runtime-base AS prebuilt
COPY prebuilt/python-sandbox-agent /usr/local/bin/python-sandbox-agent

# From source, against Debian 12's libpython3.11 (the Rust image is Debian 12 too).
FROM ${RUST_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpython3.11-dev python3.11 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# pyo3 asks an interpreter for the build configuration: Debian's python3.11, matching libpython3.11-dev.
ENV PYO3_PYTHON=/usr/bin/python3.11
RUN cargo build --release --locked -p python-sandbox-agent \
    && cp target/release/python-sandbox-agent /python-sandbox-agent

# The default target.
FROM runtime-base AS runtime
COPY --from=build /python-sandbox-agent /usr/local/bin/python-sandbox-agent
