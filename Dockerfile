# One image for the code server, the webserver and the daemon.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 DAGSTER_HOME=/opt/dagster/home
WORKDIR /opt/cv-dataops
COPY pyproject.toml README.md workspace.yaml ./
COPY cv_dataops ./cv_dataops
# Editable, so dg.load_from_defs_folder finds pyproject.toml above the package.
RUN pip install -e . && mkdir -p "$DAGSTER_HOME"
COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/home/
