#!/bin/sh
# Entrypoint wrapper for the eclipse-mosquitto image (POSIX sh: the image is Alpine/busybox).
#
# At every container start it (re)writes the platform's own entries in the broker's password
# and ACL files, then hands over to the image's entrypoint (which chowns /mosquitto to the
# `mosquitto` user) and so to mosquitto itself.
#
# The files live in the `mosquitto-auth` volume and are SHARED with the platform:
#   acl     the "BEGIN/END weijian-platform" block (always last) is this script's; everything
#           outside it belongs to the device registry;
#   passwd  the lines of the users named in that block (the collector) are this script's; every
#           other line belongs to the registry (hashed lines).
# protocols/mosquitto_auth.py implements the same contract for the platform (and for the
# embedded broker). This script keeps whatever it finds outside its own part, so a restart never
# loses device accounts. The block is kept at the end of the ACL file so that its leading `user`
# line cannot capture topic lines written above it.
#
# The registry runs in another container, as another user: it cannot signal this one, and files
# it wrote would be owned by it (mosquitto warns, and later versions refuse, files it does not
# own). So the platform writes its part to a staging directory, registry/passwd and
# registry/acl (device lines only, WEIJIAN_GATEWAY__BROKER_*_FILE in docker-compose.yml), and a
# background watcher here (root) merges them into the real files, owned by mosquitto, and sends
# mosquitto SIGHUP within ~2 s; mosquitto then re-reads both without dropping connections.
#
# Environment:
#   MQTT_COLLECTOR_PASSWORD  required; the collector's password (same value as the platform's
#                            WEIJIAN_MQTT__PASSWORD). Refused while it is the .env.example
#                            placeholder.
#   MQTT_COLLECTOR_USER      default weijian-collector (the platform's WEIJIAN_MQTT__USERNAME)
#   MQTT_TOPIC_PREFIX        default weijian/v1        (the platform's WEIJIAN_MQTT__TOPIC_PREFIX)
#   MOSQUITTO_AUTH_DIR       default /mosquitto/auth   (must match mosquitto.conf)
#   MOSQUITTO_AUTH_POLL      default 2; seconds between the watcher's looks at the files
#                            (0 turns the watcher off: reload by hand with SIGHUP)
#   WEIJIAN_UID / WEIJIAN_GID  default 10001; owner of the staging directory (the platform's
#                            user in its image, see Dockerfile)
set -eu

auth_dir="${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}"
collector="${MQTT_COLLECTOR_USER:-weijian-collector}"
prefix="${MQTT_TOPIC_PREFIX:-weijian/v1}"
password="${MQTT_COLLECTOR_PASSWORD:-}"
poll="${MOSQUITTO_AUTH_POLL:-2}"

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
case "$poll" in "" | *[!0-9.]*) die "MOSQUITTO_AUTH_POLL must be a number of seconds" ;; esac

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

# The block is recognised by the start of its first line (Python writers word the rest
# differently); an unterminated block runs to the end of the file.
marker="# BEGIN weijian-platform"
begin="$marker (rewritten by docker-entrypoint.sh at every start; do not edit)"
end="# END weijian-platform"

# Password file: hash the collector's line on its own (mosquitto_passwd -U hashes every line of
# the file it is given, and would re-hash the registry's already hashed lines), then swap it in
# for the lines of the users the old block names (the collector's, even under a previous
# MQTT_COLLECTOR_USER) and the collector's.
printf '%s:%s\n' "$collector" "$password" >"$tmp_line"
mosquitto_passwd -U "$tmp_line"
awk -v user="$collector" -v b="$marker" -v e="$end" '
    FILENAME == ARGV[1] {
        if (index($0, b) == 1) inside = 1
        else if ($0 == e) inside = 0
        else if (inside && $1 == "user") managed[$2] = 1
        next
    }
    { name = $0; sub(/:.*/, "", name) }
    name != user && !(name in managed)
' "$acl_file" "$passwd_file" >"$tmp_passwd"
cat "$tmp_line" >>"$tmp_passwd"
chmod 600 "$tmp_passwd"
mv -f "$tmp_passwd" "$passwd_file"

# ACL file: drop the previous managed block, append the current one.
awk -v b="$marker" -v e="$end" '
    index($0, b) == 1 { skip = 1; next }
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

# ---- The registry's staging directory ---------------------------------------------------------
registry_dir="$auth_dir/registry"
mkdir -p "$registry_dir"
if [ "$(id -u)" = 0 ]; then
    chown "${WEIJIAN_UID:-10001}:${WEIJIAN_GID:-10001}" "$registry_dir"
fi
chmod 700 "$registry_dir"

# Real files = the registry's device lines + this script's own part (the users named in the
# managed block, and the block itself, kept last). Both are replaced atomically.
merge_registry_part() {
    reg_passwd="$registry_dir/passwd"
    reg_acl="$registry_dir/acl"
    { [ -f "$reg_passwd" ] && [ -f "$reg_acl" ]; } || return 0
    managed="$auth_dir/.managed.$$"
    m_passwd="$auth_dir/.merge-passwd.$$"
    m_acl="$auth_dir/.merge-acl.$$"
    awk '/^# BEGIN weijian-platform/ { inb = 1 } inb && $1 == "user" { print $2 }
         /^# END weijian-platform/ { inb = 0 }' "$acl_file" >"$managed"
    # Registry lines never override a platform account (it could take over the collector).
    awk -F: 'NR == FNR { m[$1] = 1; next } !($1 in m) && NF >= 2' "$managed" "$reg_passwd" >"$m_passwd"
    awk -F: 'NR == FNR { m[$1] = 1; next } ($1 in m)' "$managed" "$passwd_file" >>"$m_passwd"
    # ... nor grant a platform account anything: drop staged sections of managed users.
    awk 'NR == FNR { m[$1] = 1; next }
         /^# BEGIN weijian-platform/ { inb = 1 }
         $1 == "user" { skip = ($2 in m) }
         !inb && !skip { print }
         /^# END weijian-platform/ { inb = 0 }' "$managed" "$reg_acl" >"$m_acl"
    awk '/^# BEGIN weijian-platform/ { inb = 1 } inb { print } /^# END weijian-platform/ { inb = 0 }' \
        "$acl_file" >>"$m_acl"
    chmod 600 "$m_passwd" "$m_acl"
    if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
        chown mosquitto:mosquitto "$m_passwd" "$m_acl"
    fi
    mv -f "$m_passwd" "$passwd_file"
    mv -f "$m_acl" "$acl_file"
    rm -f "$managed"
}

# ---- Reload on change ------------------------------------------------------------------------
# Which process to signal: this shell's own PID, $$. Below, `exec /docker-entrypoint.sh` replaces
# this shell with the image's entrypoint *in the same process*, and that script (eclipse-mosquitto
# 2.0.x: chown, then `exec "$@"`) replaces itself with mosquitto, again in the same process; with
# no image entrypoint we exec "$@" directly. Either way mosquitto ends up with the PID this shell
# has now (PID 1 in the container, or whatever it is under `init: true` or in the tests). $$ is
# passed to the watcher as an argument (POSIX keeps $$ as this shell's PID in the background
# subshell too, unlike e.g. bash's $BASHPID, so the value is the same). The watcher stays a child of that PID across the execs; mosquitto never reaps it, which
# is harmless because it only exits once mosquitto is gone (and `docker stop` ends them together).
#
# When to signal: SIGHUP's default action terminates a process, and mosquitto installs its
# handler only after loading its persistence file (seconds with a large queue). Until then the
# PID is this shell, the image's entrypoint or a mosquitto without the handler; the watcher
# waits for /proc/<pid>/comm to read "mosquitto" and for the SIGHUP bit in SigCgt ("signals
# caught") of /proc/<pid>/status, and keeps the change pending meanwhile. Mosquitto reads the
# files as they are when it starts, so only later changes need a signal.
#
# How to notice a change: busybox has no inotifywait, and mtimes have one-second resolution in
# `stat -c %Y` (two writes in one second would look like one), so the watcher compares checksums
# of both files' contents (~150 bytes per device: cheap every 2 s): `md5sum` (busybox builds
# have it; Debian's busybox has no `cksum`), else POSIX `cksum`. Writers replace the files
# atomically, so it never sees half a file.
broker_ready() {
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = mosquitto ] || return 1
    caught=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null)
    [ -n "$caught" ] || return 1
    # SIGHUP is signal 1: the lowest bit of the hex mask.
    [ $((0x${caught#"${caught%?}"} & 1)) -eq 1 ]
}

auth_checksum() {
    # A missing or unreadable file is a state too (its error text), not a reason to stop (set -e).
    "$sum_tool" "$passwd_file" "$acl_file" 2>&1 || :
}

registry_checksum() {
    "$sum_tool" "$registry_dir/passwd" "$registry_dir/acl" 2>&1 || :
}

watch_auth_files() {
    broker_pid=$1
    seen=$(auth_checksum)
    staged=$(registry_checksum)
    while kill -0 "$broker_pid" 2>/dev/null; do
        sleep "$poll"
        now_staged=$(registry_checksum)
        if [ "$now_staged" != "$staged" ]; then
            merge_registry_part && staged=$now_staged
        fi
        now=$(auth_checksum)
        if [ "$now" != "$seen" ] && broker_ready "$broker_pid"; then
            if kill -HUP "$broker_pid" 2>/dev/null; then
                echo "weijian-mosquitto: auth files changed; sent SIGHUP to mosquitto (pid $broker_pid)" >&2
            fi
            seen=$now
        fi
    done
}

# Devices staged while the broker was down are in the files it starts with.
merge_registry_part

# Only when the command is mosquitto itself (not for `true` in tests, or a debugging shell).
case "${1:-}" in
    mosquitto | */mosquitto)
        case "$poll" in
            0 | 0.0) echo "weijian-mosquitto: MOSQUITTO_AUTH_POLL=0: not watching the auth files" >&2 ;;
            *)
                sum_tool=$(command -v md5sum || command -v cksum || :)
                if [ -n "$sum_tool" ]; then
                    watch_auth_files "$$" </dev/null &
                else
                    echo "weijian-mosquitto: no md5sum or cksum: not watching the auth files" >&2
                fi
                ;;
        esac
        ;;
esac

if [ -x /docker-entrypoint.sh ]; then
    exec /docker-entrypoint.sh "$@"
fi
exec "$@"
