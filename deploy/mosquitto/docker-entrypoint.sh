#!/bin/sh
# Entrypoint wrapper for the eclipse-mosquitto image (POSIX sh: the image is Alpine/busybox).
#
# At every container start it (re)writes the platform's own entries in the broker's password
# and ACL files, then hands over to the image's entrypoint (which chowns /mosquitto to the
# `mosquitto` user) and so to mosquitto itself.
#
# The files live in the `mosquitto-auth` volume and are SHARED with the platform:
#   passwd  every line except the collector's belongs to the device registry (hashed lines);
#   acl     everything outside the "BEGIN/END weijian-platform" block belongs to the registry.
# The registry rewrites its part and sends SIGHUP to the broker to apply it; this script keeps
# whatever it finds there and only replaces the collector's line and the managed block, so a
# restart never loses device accounts. The block is kept at the end of the ACL file so that
# its leading `user` line cannot capture topic lines written above it.
#
# Environment:
#   MQTT_COLLECTOR_PASSWORD  required; the collector's password (same value as the platform's
#                            WEIJIAN_MQTT__PASSWORD). Refused while it is the .env.example
#                            placeholder.
#   MQTT_COLLECTOR_USER      default weijian-collector (the platform's WEIJIAN_MQTT__USERNAME)
#   MQTT_TOPIC_PREFIX        default weijian/v1        (the platform's WEIJIAN_MQTT__TOPIC_PREFIX)
#   MOSQUITTO_AUTH_DIR       default /mosquitto/auth   (must match mosquitto.conf)
set -eu

auth_dir="${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}"
collector="${MQTT_COLLECTOR_USER:-weijian-collector}"
prefix="${MQTT_TOPIC_PREFIX:-weijian/v1}"
password="${MQTT_COLLECTOR_PASSWORD:-}"

die() {
    echo "weijian-mosquitto: $*" >&2
    exit 1
}

case "$password" in
    "") die "MQTT_COLLECTOR_PASSWORD is not set (see .env.example)" ;;
    please-change-me*) die "MQTT_COLLECTOR_PASSWORD still holds the .env.example placeholder" ;;
esac
nl='
'
case "$password" in *"$nl"*) die "MQTT_COLLECTOR_PASSWORD must be a single line" ;; esac
case "$collector" in *:* | *" "* | "") die "MQTT_COLLECTOR_USER must be non-empty, without ':' or spaces" ;; esac

# Secrets are created readable by their owner only (mosquitto warns about anything looser).
umask 077
mkdir -p "$auth_dir"
passwd_file="$auth_dir/passwd"
acl_file="$auth_dir/acl"
[ -f "$passwd_file" ] || : >"$passwd_file"
[ -f "$acl_file" ] || : >"$acl_file"

tmp_line="$auth_dir/.collector.$$"
tmp_passwd="$auth_dir/.passwd.$$"
tmp_acl="$auth_dir/.acl.$$"
trap 'rm -f "$tmp_line" "$tmp_passwd" "$tmp_acl"' EXIT

# Password file: hash the collector's line on its own (mosquitto_passwd -U hashes every line of
# the file it is given, and would re-hash the registry's already hashed lines), then swap it in.
printf '%s:%s\n' "$collector" "$password" >"$tmp_line"
mosquitto_passwd -U "$tmp_line"
awk -F: -v user="$collector" '$1 != user' "$passwd_file" >"$tmp_passwd"
cat "$tmp_line" >>"$tmp_passwd"
chmod 600 "$tmp_passwd"
mv -f "$tmp_passwd" "$passwd_file"

# ACL file: drop the previous managed block, append the current one.
begin="# BEGIN weijian-platform (rewritten by docker-entrypoint.sh at every start; do not edit)"
end="# END weijian-platform"
awk -v b="$begin" -v e="$end" '
    $0 == b { skip = 1; next }
    $0 == e { skip = 0; next }
    !skip
' "$acl_file" >"$tmp_acl"
{
    printf '%s\n' "$begin"
    printf 'user %s\n' "$collector"
    # Every device's readings (tenant/site/device); read-only, the collector never publishes there.
    printf 'topic read %s/+/+/+/telemetry\n' "$prefix"
    # The platform's own coordination topics (same grant as the embedded stack).
    printf 'topic readwrite %s/_system/#\n' "$prefix"
    # Lets the compose healthcheck prove a full authenticated round trip ($SYS is literal).
    # shellcheck disable=SC2016
    printf 'topic read $SYS/broker/uptime\n'
    printf '%s\n' "$end"
} >>"$tmp_acl"
chmod 600 "$tmp_acl"
mv -f "$tmp_acl" "$acl_file"

# mosquitto drops root for the `mosquitto` user and then needs to read both files (and re-read
# them on SIGHUP). The image's entrypoint chowns /mosquitto too; this also covers an auth dir
# mounted elsewhere.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto:mosquitto "$auth_dir" "$passwd_file" "$acl_file"
fi

rm -f "$tmp_line"
trap - EXIT
echo "weijian-mosquitto: wrote $collector's entries to $passwd_file and $acl_file" >&2

if [ -x /docker-entrypoint.sh ]; then
    exec /docker-entrypoint.sh "$@"
fi
exec "$@"
