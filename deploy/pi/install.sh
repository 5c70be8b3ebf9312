#!/usr/bin/env bash
# Install the soundwarden edge daemon as a systemd service on Raspberry Pi OS / Debian 12
# (64-bit; onnxruntime has no 32-bit ARM wheels). Run it from a checkout, as root:
#
#   sudo deploy/pi/install.sh [--device ID]           install or upgrade; safe to re-run
#   sudo deploy/pi/install.sh --uninstall [--purge]   remove; --purge also deletes the data
#
#   --dry-run    print every action without doing any
#   --root DIR   install into DIR instead of / (also: DESTDIR=DIR), for tests and staging.
#                Steps only a live system can take (apt-get, systemctl start/restart/
#                daemon-reload) are then skipped with a "skip (--root)" line; users are made
#                with useradd --prefix DIR (when DIR/etc/passwd exists) and the unit is
#                enabled with systemctl --root DIR, both for real.
#
# What it does (docs/pi-guide.md): apt packages, a system user `soundwarden` in group `audio`,
# a virtualenv in /opt/soundwarden/venv with the edge,mic,tflite extras (through
# constraints.txt), /etc/soundwarden/edge.toml from deploy/edge.example.toml (never
# overwritten), /etc/soundwarden/edge.env for secrets, the release key the shipped bundles are
# signed with in /etc/soundwarden/keys (the bundles themselves ship inside the package), and
# soundwarden-edge.service enabled and started. Output: "+ CMD" for each change made,
# "would: CMD" in a dry run, "ok: ..." for what was already in place; a re-run that finds
# everything in place prints no "+" line.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SERVICE=soundwarden-edge.service
USER_NAME=soundwarden
VENV=/opt/soundwarden/venv
CONF_DIR=/etc/soundwarden
DATA_DIR=/var/lib/soundwarden
UNIT_PATH=/etc/systemd/system/$SERVICE
APT_PACKAGES=(python3-venv python3-dev build-essential pkg-config libsystemd-dev
  portaudio19-dev alsa-utils libsndfile1)

ROOT=${DESTDIR:-}
MODE=install
PURGE=false
DRY_RUN=false
DEVICE=
while (($#)); do
  case $1 in
    --uninstall) MODE=uninstall ;;
    --purge) PURGE=true ;;
    --dry-run) DRY_RUN=true ;;
    --root) ROOT=${2:?--root needs a directory}; shift ;;
    --root=*) ROOT=${1#--root=} ;;
    --device) DEVICE=${2:?--device needs an id}; shift ;;
    --device=*) DEVICE=${1#--device=} ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -n $ROOT ]]; then
  [[ $ROOT == /* ]] || ROOT=$PWD/$ROOT
  ROOT=${ROOT%/}
fi
if [[ -n $DEVICE && ! $DEVICE =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]]; then
  echo "install.sh: device id '$DEVICE': lowercase letters, digits, - and _ only" >&2
  exit 2
fi
if $PURGE && [[ $MODE != uninstall ]]; then
  echo "install.sh: --purge goes with --uninstall" >&2
  exit 2
fi

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
# A change to the system: printed, then made unless this is a dry run.
act() {
  if $DRY_RUN; then say "would: $*"; else say "+ $*"; "$@"; fi
}
# A change only a running system can take (packages, the service manager).
live() {
  if [[ -n $ROOT ]]; then say "skip (--root): $*"; else act "$@"; fi
}

CHANGED=false # anything the running service would need a restart for
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# useradd & co. and systemctl act on the throwaway root's /etc when there is one.
prefix=()
sysctl=(systemctl)
if [[ -n $ROOT ]]; then
  prefix=(--prefix "$ROOT")
  sysctl=(systemctl "--root=$ROOT")
fi

user_exists() { grep -q "^$USER_NAME:" "$ROOT/etc/passwd" 2>/dev/null; }
group_exists() { grep -q "^$1:" "$ROOT/etc/group" 2>/dev/null; }
in_audio_group() { grep -Eq "^audio:[^:]*:[^:]*:(.*,)?$USER_NAME(,|$)" "$ROOT/etc/group"; }
# Numeric ids from the target's own passwd file (the host's would be wrong under --root);
# the name itself only in a dry run, before the user exists.
uid_of() { awk -F: -v u="$USER_NAME" '$1 == u { print $3 }' "$ROOT/etc/passwd" 2>/dev/null; }
gid_of() { awk -F: -v u="$USER_NAME" '$1 == u { print $4 }' "$ROOT/etc/passwd" 2>/dev/null; }
owner() { local id; id=$(uid_of); say "${id:-$USER_NAME}"; }
group() { local id; id=$(gid_of); say "${id:-$USER_NAME}"; }

# ensure_dir PATH MODE UID GID: create it, or fix its mode and owner, or say it is fine.
ensure_dir() {
  local path=$ROOT$1 want="$2 $3 $4"
  if [[ -d $path && $(stat -c '%a %u %g' "$path") == "$want" ]]; then
    say "ok: $1"
  else
    act install -d -m "$2" -o "$3" -g "$4" "$path"
  fi
}

# ensure_file SOURCE DEST MODE UID GID: copy when missing or different (content or mode).
ensure_file() {
  local dest=$ROOT$2
  if [[ -f $dest ]] && cmp -s "$1" "$dest" && [[ $(stat -c '%a %u %g' "$dest") == "$3 $4 $5" ]]
  then
    say "ok: $2"
  else
    act install -m "$3" -o "$4" -g "$5" "$1" "$dest"
    CHANGED=true
  fi
}

# What gets installed into the virtualenv; a re-run reinstalls only when this changes.
source_hash() {
  (cd "$SRC" && find pyproject.toml constraints.txt README.md edge models cloud -type f \
    ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
    sha256sum | cut -d' ' -f1
}

# pip builds in the source tree (build/, *.egg-info): it gets a copy, keeping the checkout clean.
source_copy() {
  mkdir -p "$TMP/src"
  (cd "$SRC" && tar -c --exclude=__pycache__ pyproject.toml README.md edge models cloud) |
    tar -x -C "$TMP/src"
  say "$TMP/src"
}

default_device() {
  local name
  name=$(hostname 2>/dev/null | tr 'A-Z.' 'a-z_' | tr -cd 'a-z0-9_-')
  say "${name:-soundwarden}"
}

render_config() {
  local device=$1 out=$TMP/edge.toml
  [[ $device =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]] ||
    die "device id '$device': lowercase letters, digits, - and _ only (--device ID)"
  {
    say "# Written by deploy/pi/install.sh from deploy/edge.example.toml; never overwritten."
    say "# After a change: sudo systemctl restart soundwarden-edge (journalctl -u it for logs)."
    sed -e "s/^device = \"nursery\" .*/device = \"$device\"/" \
      -e 's|^# trusted_keys = \["/etc/soundwarden/keys"\].*|trusted_keys = ["/etc/soundwarden/keys"]   # add your cloud'"'"'s key here|' \
      "$SRC/deploy/edge.example.toml"
  } >"$out"
  if ! grep -q "^device = \"$device\"$" "$out" || ! grep -q '^trusted_keys = ' "$out"; then
    die "deploy/edge.example.toml no longer has the lines this script edits; update it"
  fi
  say "$out"
}

install_all() {
  step "system packages"
  local missing=()
  for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed' ||
      missing+=("$package")
  done
  if [[ -n $ROOT ]]; then
    say "skip (--root): apt-get install ${APT_PACKAGES[*]}"
  elif ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    act apt-get update -qq
    act apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"
  else
    say "ok: ${APT_PACKAGES[*]}"
  fi

  step "user $USER_NAME (group audio for the sound card)"
  if [[ -n $ROOT && ! -f $ROOT/etc/passwd ]]; then
    say "skip (--root): no $ROOT/etc/passwd to add the user $USER_NAME to"
  else
    group_exists audio || act groupadd "${prefix[@]}" --system audio
    if user_exists; then
      say "ok: user $USER_NAME"
      in_audio_group || act usermod "${prefix[@]}" --append --groups audio "$USER_NAME"
    else
      act useradd "${prefix[@]}" --system --user-group --groups audio --no-create-home \
        --home-dir "$DATA_DIR" --shell /usr/sbin/nologin "$USER_NAME"
    fi
  fi

  step "virtualenv $VENV (soundwarden[edge,mic,tflite])"
  local want stamp=$ROOT$VENV/.soundwarden-source
  want=$(source_hash)
  if [[ -x $ROOT$VENV/bin/python && -f $stamp && $(<"$stamp") == "$want" ]]; then
    say "ok: $VENV is up to date with $SRC"
  else
    ensure_dir "${VENV%/*}" 755 0 0
    [[ -x $ROOT$VENV/bin/python ]] || act python3 -m venv "$ROOT$VENV"
    act "$ROOT$VENV/bin/pip" install --quiet --disable-pip-version-check \
      --constraint "$SRC/constraints.txt" "$(source_copy)[edge,mic,tflite]"
    say "$want" >"$TMP/stamp"
    act install -m 644 "$TMP/stamp" "$stamp"
    CHANGED=true
  fi

  step "configuration $CONF_DIR"
  ensure_dir "$CONF_DIR" 755 0 0
  ensure_dir "$CONF_DIR/keys" 755 0 0
  local key
  for key in "$SRC"/models/pretrained/keys/*.pub; do
    ensure_file "$key" "$CONF_DIR/keys/${key##*/}" 644 0 0
  done
  if [[ -e $ROOT$CONF_DIR/edge.toml ]]; then
    say "ok: $CONF_DIR/edge.toml exists and is kept as it is"
  else
    # Readable by the daemon's group only: it may hold the MQTT password.
    act install -m 640 -o 0 -g "$(group)" "$(render_config "${DEVICE:-$(default_device)}")" \
      "$ROOT$CONF_DIR/edge.toml"
    CHANGED=true
  fi
  if [[ -e $ROOT$CONF_DIR/edge.env ]]; then
    say "ok: $CONF_DIR/edge.env exists and is kept as it is"
  else
    # systemd reads EnvironmentFile= as root, before dropping privileges: root only.
    act install -m 600 -o 0 -g 0 "$SRC/deploy/pi/edge.env" "$ROOT$CONF_DIR/edge.env"
  fi

  step "data $DATA_DIR (spool, clips, models; kept by --uninstall)"
  ensure_dir "$DATA_DIR" 750 "$(owner)" "$(group)"

  step "service $SERVICE"
  local reload=false
  if [[ -f $ROOT$UNIT_PATH ]] && cmp -s "$SRC/deploy/systemd/$SERVICE" "$ROOT$UNIT_PATH"; then
    say "ok: $UNIT_PATH"
  else
    ensure_dir "${UNIT_PATH%/*}" 755 0 0
    act install -m 644 -o 0 -g 0 "$SRC/deploy/systemd/$SERVICE" "$ROOT$UNIT_PATH"
    reload=true
    CHANGED=true
  fi
  $reload && live systemctl daemon-reload
  if "${sysctl[@]}" is-enabled --quiet "$SERVICE" 2>/dev/null; then
    say "ok: $SERVICE enabled"
  else
    act "${sysctl[@]}" enable --quiet "$SERVICE"
  fi
  if [[ -n $ROOT ]]; then
    say "skip (--root): systemctl start $SERVICE"
  elif $DRY_RUN; then
    say "would: systemctl start $SERVICE (or restart it, if it runs and anything changed)"
  else
    "$VENV/bin/soundwarden-edge" check-config "$CONF_DIR/edge.toml"
    if ! systemctl is-active --quiet "$SERVICE"; then
      act systemctl start "$SERVICE" || started_badly
    elif $CHANGED; then
      act systemctl restart "$SERVICE" || started_badly
    else
      say "ok: $SERVICE running"
    fi
  fi
  printf '\nDone. Next: edit %s (device, mqtt, clips.upload_url; secrets in %s),\n' \
    "$CONF_DIR/edge.toml" "$CONF_DIR/edge.env"
  say "then: sudo systemctl restart soundwarden-edge; journalctl -fu soundwarden-edge"
}

started_badly() {
  journalctl -u "$SERVICE" -n 30 --no-pager || true
  die "installed, but $SERVICE did not start (log above). Usual causes: no microphone" \
    "(arecord -l lists them; set audio.source.device), or a broker that refuses the" \
    "login. Fix $CONF_DIR/edge.toml, then: systemctl restart soundwarden-edge"
}

remove() {
  if [[ -e $ROOT$1 || -L $ROOT$1 ]]; then act rm -rf "$ROOT$1"; else say "ok: no $1"; fi
}

uninstall_all() {
  step "service $SERVICE"
  if [[ -z $ROOT ]] && systemctl is-active --quiet "$SERVICE" 2>/dev/null; then
    act systemctl stop "$SERVICE"
  fi
  if "${sysctl[@]}" is-enabled --quiet "$SERVICE" 2>/dev/null; then
    act "${sysctl[@]}" disable --quiet "$SERVICE"
  else
    say "ok: $SERVICE not enabled"
  fi
  if [[ -e $ROOT$UNIT_PATH ]]; then
    act rm -f "$ROOT$UNIT_PATH"
    live systemctl daemon-reload
  else
    say "ok: no $UNIT_PATH"
  fi

  step "program and configuration"
  remove "${VENV%/*}"
  remove "$CONF_DIR"

  step "data $DATA_DIR and user $USER_NAME"
  if ! $PURGE; then
    say "kept: $DATA_DIR (recordings, spool, downloaded models) and the user $USER_NAME who" \
      "owns it; --uninstall --purge deletes both"
    return
  fi
  remove "$DATA_DIR"
  if user_exists; then
    act userdel "${prefix[@]}" "$USER_NAME"
  else
    say "ok: no user $USER_NAME"
  fi
  # userdel leaves the user's own group where login.defs has USERGROUPS_ENAB no.
  if group_exists "$USER_NAME"; then act groupdel "${prefix[@]}" "$USER_NAME"; fi
}

if [[ -z $ROOT && $(id -u) != 0 ]] && ! $DRY_RUN; then
  die "run as root (sudo $0 ...), or with --dry-run to see what it would do"
fi
case $(uname -m) in
  armv6l | armv7l) die "32-bit ARM: onnxruntime needs 64-bit Raspberry Pi OS (aarch64)" ;;
esac
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "Python 3.11 or later needed (Debian 12 / Raspberry Pi OS bookworm have it)"

say "soundwarden edge: $MODE into ${ROOT:-/}$($DRY_RUN && echo ' (dry run: nothing is changed)')"
if [[ $MODE == install ]]; then install_all; else uninstall_all; fi
