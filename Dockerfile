# canaryproxy: docker build -t canaryproxy . && docker run -v $PWD/config:/etc/canaryproxy -p 8080:8080 canaryproxy
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /var/lib/canaryproxy --create-home canaryproxy
WORKDIR /opt/canaryproxy
COPY pyproject.toml README.md ./
COPY canaryproxy ./canaryproxy
RUN pip install --no-cache-dir . && python -c "import aiohttp._http_parser"

USER canaryproxy
# 8080: data plane; 9090: admin API, /metrics, health. The admin listener must bind beyond
# loopback inside a container, which requires admin.token (from an environment variable).
EXPOSE 8080 9090
VOLUME ["/etc/canaryproxy", "/var/lib/canaryproxy"]
ENTRYPOINT ["canaryproxy", "run", "--config", "/etc/canaryproxy/config.yaml"]
