# The stabmon collector: FastAPI service with the detector, the dashboard and /metrics.
# Server extra only (FastAPI, SQLAlchemy, psycopg, plotly, ...): no torch, no training code.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/stabmon
# Only what the collector needs; trainer_hooks (torch) stays out of the image. (README.md is
# the package's long description: copied when present, the build does not depend on it.)
COPY pyproject.toml constraints.txt README.md* ./
COPY stabmon/ stabmon/
COPY stabmon_cli/ stabmon_cli/
COPY monitor/ monitor/
COPY dashboard/ dashboard/
COPY migrations/ migrations/
RUN pip install -c constraints.txt ".[server]" \
    && python -c "import monitor.api, dashboard, plotly, stabmon_cli; import importlib.util as u; assert u.find_spec('torch') is None" \
    && rm -rf build ./*.egg-info

COPY deploy/collector/entrypoint.sh /usr/local/bin/stabmon-entrypoint
RUN useradd --system --uid 10001 --home-dir /var/lib/stabmon stabmon \
    && mkdir -p /var/lib/stabmon && chown stabmon /var/lib/stabmon
USER stabmon
WORKDIR /var/lib/stabmon

ENV STABMON_HOST=0.0.0.0 \
    STABMON_PORT=8321
EXPOSE 8321
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STABMON_PORT', '8321') + '/readyz', timeout=2)"]
ENTRYPOINT ["stabmon-entrypoint"]
