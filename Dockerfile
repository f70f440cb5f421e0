# Weijian platform image: `docker compose build weijian` (see docker-compose.yml).
#
# Two stages: the first installs the project and its dependencies into a virtualenv (every
# dependency ships manylinux wheels, so no compiler is needed); the second copies only that
# virtualenv onto a clean base and runs it as an unprivileged user.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore keeps .env, .git, virtualenvs and local data out of the build context.
COPY . .
RUN python -m venv /opt/weijian \
    && /opt/weijian/bin/pip install .

FROM python:3.11.14-slim-bookworm
# Fixed uid/gid so volume ownership stays stable across rebuilds.
RUN groupadd --system --gid 10001 weijian \
    && useradd --system --uid 10001 --gid weijian --no-create-home \
        --home-dir /var/lib/weijian --shell /usr/sbin/nologin weijian \
    && mkdir -p /var/lib/weijian \
    && chown weijian:weijian /var/lib/weijian
COPY --from=build /opt/weijian /opt/weijian
ENV PATH=/opt/weijian/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WEIJIAN_DATA_DIR=/var/lib/weijian
# The spool lives under the data directory. Declaring it a volume keeps it out of the
# container's writable layer even when the image is run without compose; a new named volume
# mounted here starts with this directory's ownership (weijian).
VOLUME ["/var/lib/weijian"]
WORKDIR /var/lib/weijian
USER weijian:weijian
# Prometheus metrics (WEIJIAN_METRICS__PORT).
EXPOSE 9464
# `docker compose run --rm weijian <subcommand>` runs other CLI commands with the same settings.
ENTRYPOINT ["weijian"]
CMD ["serve"]
