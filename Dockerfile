# One image for every part of the checkout system; the command picks the part:
#   docker run checkout api | relay | saga | mocks | consumer NAME | migrate | dlq ...
# (compose.yaml runs one container per part from this image).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies change less often than code: install them in their own layer from
# pyproject.toml alone (with empty packages), then the project itself on top.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN for pkg in contracts checkout_api saga consumers infra operations mock_services; do \
        mkdir -p "$pkg" && touch "$pkg/__init__.py"; \
    done \
    && pip install . \
    && pip uninstall --yes checkout \
    && rm -rf /src/*

COPY . .
RUN pip install --no-deps . && rm -rf /src

# Not root; a working directory of its own (settings may come from a .env there).
RUN useradd --create-home --uid 10001 checkout
USER checkout
WORKDIR /home/checkout

EXPOSE 8000 8001
ENTRYPOINT ["checkout"]
CMD ["--help"]
