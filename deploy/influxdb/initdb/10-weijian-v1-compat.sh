#!/bin/bash
# InfluxDB 2.x initialisation for Weijian; mounted into /docker-entrypoint-initdb.d.
#
# The influxdb image runs this ONCE: on the first start of an empty data volume
# (DOCKER_INFLUXDB_INIT_MODE=setup), after it has created the org, the bucket and the operator
# token, against a temporary influxd with the `influx` CLI already configured
# (INFLUX_HOST / INFLUX_CONFIGS_PATH). It never runs again once influxd.bolt exists, so changing
# these values later means running the same commands by hand (see docs/deployment.md).
#
# Weijian speaks only the v1-compatible API (/write, /query with InfluxQL). On 2.x that API
# finds a bucket through a DBRP mapping: database WEIJIAN_INFLUX_DATABASE, retention policy
# WEIJIAN_INFLUX_RETENTION_POLICY -> the initial bucket. The mapping is the default one for the
# database, so requests that name no retention policy land there too.
set -euo pipefail

# Exported by the image's entrypoint after setup.
bucket_id="${DOCKER_INFLUXDB_INIT_BUCKET_ID:?not run by the influxdb image after setup}"
org="${DOCKER_INFLUXDB_INIT_ORG:?}"
bucket="${DOCKER_INFLUXDB_INIT_BUCKET:?}"
# Set by docker-compose.yml.
db="${WEIJIAN_INFLUX_DATABASE:?}"
rp="${WEIJIAN_INFLUX_RETENTION_POLICY:?}"
grafana_user="${GRAFANA_INFLUX_USER:?}"
grafana_password="${GRAFANA_INFLUX_PASSWORD:?}"

echo "weijian-init: mapping InfluxQL ${db}.${rp} (default) -> bucket ${bucket} (${bucket_id})"
influx v1 dbrp create \
    --org "$org" \
    --bucket-id "$bucket_id" \
    --db "$db" \
    --rp "$rp" \
    --default

# Grafana reads through a v1 (username/password) authorization that may only READ this bucket,
# so a leaked Grafana credential cannot write or delete data. Tenant buckets get their own
# grants when they are created.
echo "weijian-init: creating read-only v1 authorization '${grafana_user}' for Grafana"
influx v1 auth create \
    --org "$org" \
    --username "$grafana_user" \
    --password "$grafana_password" \
    --read-bucket "$bucket_id" \
    --description "Grafana (read-only, InfluxQL over the v1 API)"

echo "weijian-init: done"
