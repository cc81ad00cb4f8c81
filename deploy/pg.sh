#!/usr/bin/env bash
# deploy/pg.sh -- a private PostgreSQL cluster for local development and tests (no Docker).
#
#   deploy/pg.sh start NAME PORT [--fast]  install/init/start as needed, print the URL on stdout
#   deploy/pg.sh stop NAME                 fast shutdown; no error if it is not running
#   deploy/pg.sh url NAME PORT             print the URL on stdout
#   deploy/pg.sh status NAME               exit 0 if running, 3 if not
#
# --fast (for tests) turns durability off (fsync, synchronous_commit, full_page_writes) and
# raises max_connections to 300. A later `start` in the other mode restarts the server.
#
# Everything lives in <repo>/.local/pg-NAME/: data/, socket/ (unix socket), server.log.
# Diagnostics go to stderr; stdout carries only the requested value.
#
# When run as root, the server runs as the `postgres` OS user (PostgreSQL refuses root).
#
# Security: the cluster uses trust authentication (no passwords). That is acceptable only
# because it listens on 127.0.0.1 alone (plus a unix socket inside the repo); never point
# listen_addresses at an address other hosts can reach.
set -euo pipefail

readonly PG_OS_USER=postgres   # account that runs the server when we are invoked as root
readonly DB_USER=fleetyard
readonly DB_NAME=fleetyard

log() { printf 'pg.sh: %s\n' "$*" >&2; }
die() { printf 'pg.sh: error: %s\n' "$*" >&2; exit 1; }
usage() {
  { echo 'usage:'; sed -n '4,7s/^#  //p' "${BASH_SOURCE[0]}"; } >&2
  exit 2
}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO_ROOT
readonly LOCAL_DIR=$REPO_ROOT/.local
IS_ROOT=false
[[ $(id -u) -eq 0 ]] && IS_ROOT=true
readonly IS_ROOT

# Every client call below passes explicit connection parameters; keep the caller's libpq
# environment from interfering with them.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE PGSERVICEFILE PGDATA \
  PGSSLMODE PGTARGETSESSIONATTRS || true

# ---------------------------------------------------------------------------------------------
# Arguments and paths

set_name() {
  [[ ${1:-} =~ ^[A-Za-z0-9_-]+$ ]] || die "invalid NAME '${1:-}' (use letters, digits, _ and -)"
  NAME=$1
  INST=$LOCAL_DIR/pg-$NAME
  DATA=$INST/data
  SOCK_DIR=$INST/socket
  LOG_FILE=$INST/server.log
}

set_port() {
  if ! [[ ${1:-} =~ ^[1-9][0-9]{0,4}$ ]] || (( $1 > 65535 )); then
    die "invalid PORT '${1:-}'"
  fi
  PORT=$1
}

url() { printf 'postgres://%s@127.0.0.1:%s/%s\n' "$DB_USER" "$PORT" "$DB_NAME"; }

# ---------------------------------------------------------------------------------------------
# Binaries

# Highest-versioned complete bin directory under /usr/lib/postgresql, or nothing.
highest_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [[ -x $d/pg_ctl && -x $d/initdb && -x $d/postgres && -x $d/pg_isready &&
          -x $d/psql && -x $d/createdb ]]; then
      printf '%s\n' "$d"
    fi
  done | sort -V | tail -n 1
}

install_server() {
  local -a sudo=()
  if ! $IS_ROOT; then
    command -v sudo >/dev/null 2>&1 ||
      die "PostgreSQL server not found under /usr/lib/postgresql/*/bin and cannot install it:" \
          "not root and sudo is not available. As root run: apt-get install postgresql"
    sudo=(sudo)
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "PostgreSQL server not found and apt-get is unavailable; install PostgreSQL manually"
  # Debian's package also creates and starts its own 'main' cluster (port 5432); we never
  # use it and leave it alone.
  log "PostgreSQL server not found; installing it with apt-get (package: postgresql)"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2 ||
    die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends postgresql >&2 ||
    die "apt-get install postgresql failed"
}

# Sets BINDIR. An existing cluster needs the binaries of the major version that created it.
find_bindir() { # install_if_missing(true|false)
  local want=
  [[ -f $DATA/PG_VERSION ]] && want=$(<"$DATA/PG_VERSION")
  BINDIR=$(highest_bindir)
  if [[ -z $BINDIR ]]; then
    $1 || return 1
    install_server
    BINDIR=$(highest_bindir)
    [[ -n $BINDIR ]] || die "PostgreSQL was installed but no binaries found in /usr/lib/postgresql/*/bin"
  fi
  if [[ -n $want && $BINDIR != /usr/lib/postgresql/$want/bin ]]; then
    [[ -x /usr/lib/postgresql/$want/bin/pg_ctl ]] ||
      die "$DATA was created by PostgreSQL $want, which is not installed" \
          "(found $BINDIR); remove $INST to re-create the cluster"
    BINDIR=/usr/lib/postgresql/$want/bin
  fi
}

# ---------------------------------------------------------------------------------------------
# Running things as the server's OS user

# Run "$@" as the user owning the cluster. fd 9 holds our lock; never leak it to the
# postmaster, or the lock would live as long as the server does.
as_pg() {
  if ! $IS_ROOT; then
    "$@" 9>&-
  elif command -v runuser >/dev/null 2>&1; then
    runuser -u "$PG_OS_USER" -- "$@" 9>&-
  else
    setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups -- "$@" 9>&-
  fi
}

ensure_os_user() {
  getent passwd "$PG_OS_USER" >/dev/null && return 0
  log "creating system user '$PG_OS_USER' to run the server (PostgreSQL refuses to run as root)"
  local -a group=(--user-group)
  getent group "$PG_OS_USER" >/dev/null && group=(--gid "$PG_OS_USER")
  useradd --system "${group[@]}" --no-create-home --home-dir /var/lib/postgresql \
    --shell /usr/sbin/nologin "$PG_OS_USER" || die "useradd $PG_OS_USER failed"
}

# The cluster directory must belong to whoever will run the server.
check_owner() {
  [[ -e $INST ]] || return 0
  local owner
  owner=$(stat -c %U "$INST")
  if $IS_ROOT; then
    [[ $owner == root || $owner == "$PG_OS_USER" ]] ||
      die "$INST belongs to '$owner'; run this script as '$owner' (or remove $INST to start over)"
  else
    local me
    me=$(id -un)
    [[ $owner == "$me" ]] ||
      die "$INST belongs to '$owner', not to you ($me); run this script as" \
          "$( [[ $owner == "$PG_OS_USER" ]] && echo root || echo "'$owner'" )" \
          "(or remove $INST to start over)"
  fi
}

# As root, the server user must be able to traverse every directory down to $INST.
check_traverse() {
  local -a dirs=()
  local d=$INST bad
  while :; do
    dirs=("$d" "${dirs[@]}")
    [[ $d == / ]] && break
    d=$(dirname "$d")
  done
  # shellcheck disable=SC2016 # $d is expanded by the inner sh
  if ! bad=$(as_pg sh -c 'for d; do [ -x "$d" ] || { printf "%s" "$d"; exit 1; }; done' \
               sh "${dirs[@]}"); then
    die "the '$PG_OS_USER' user (which runs the server because this script runs as root)" \
        "cannot enter directory '$bad'. Fix it with: chmod o+x '$bad'" \
        "(or run this script as a non-root user)"
  fi
}

lock_instance() {
  exec 9>>"$INST/.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w 120 9 || die "timed out waiting for another pg.sh working on $INST"
  fi
}

# ---------------------------------------------------------------------------------------------
# Server state

# Prints the PID from postmaster.pid; returns 0 if our server is running. Returns 1 if it is not,
# and 2 if postmaster.pid is stale but names a live PID: a zombie of our crashed server, or a
# process that reused the PID after a crash or a container restart.
running_pid() {
  local pidfile=$DATA/postmaster.pid pid cwd real
  [[ -f $pidfile ]] || return 1
  pid=$(head -n 1 "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  printf '%s\n' "$pid"
  kill -0 "$pid" 2>/dev/null || return 1
  # A killed postmaster can linger as a zombie when PID 1 does not reap orphans (common in
  # containers). The server treats such a PID as alive and would refuse to start.
  local stat
  if stat=$(<"/proc/$pid/stat") 2>/dev/null; then
    stat=${stat##*) }
    [[ ${stat%% *} == Z ]] && return 2
  fi
  # The postmaster's working directory is its data directory.
  real=$(cd "$DATA" && pwd -P) || return 0   # cannot tell: assume it is ours
  if cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) && [[ $cwd != "$real" ]]; then
    return 2
  fi
}

# postmaster.pid and the socket lock file name a PID that is not our server any more.
remove_stale_locks() { # pid
  local f
  rm -f "$DATA/postmaster.pid"
  for f in "$SOCK_DIR"/.s.PGSQL.*.lock; do
    if [[ -f $f && $(head -n 1 "$f" 2>/dev/null) == "$1" ]]; then
      rm -f "$f" "${f%.lock}"
    fi
  done
}

port_in_use() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

check_port_free() {
  port_in_use "$PORT" || return 0
  local who=
  if command -v ss >/dev/null 2>&1; then
    who=$(ss -Hltnp "sport = :$PORT" 2>/dev/null | head -n 3) || true
  fi
  die "port $PORT on 127.0.0.1 is already in use by another process; stop it or pick" \
      "another PORT${who:+$'\n'$who}"
}

# Port of the running server, from line 4 of postmaster.pid.
running_port() {
  sed -n 4p "$DATA/postmaster.pid" 2>/dev/null || true
}

desired_conf() {
  local sock=$SOCK_DIR
  # sun_path holds 107 bytes; beyond that the server cannot create the socket. Fall back to
  # TCP only (everything here connects over TCP anyway).
  if (( ${#sock} + ${#PORT} + 10 > 107 )); then
    log "warning: $sock is too long for a unix socket path; the unix socket is disabled"
    sock=
  fi
  local durable=on max_conn=100
  if $FAST; then durable=off; max_conn=300; fi
  cat <<EOF
# Managed by deploy/pg.sh, rewritten by every 'start'; edits here are lost.
# Trust authentication (pg_hba.conf) is acceptable only because the server listens on
# loopback alone.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '${sock//\'/\'\'}'
max_connections = $max_conn
fsync = $durable
synchronous_commit = $durable
full_page_writes = $durable
EOF
}

# mode 0755 whatever the umask, so that the server user can enter it when we run as root
mkdir_755() {
  mkdir -m 0755 "$1" 2>/dev/null || [[ -d $1 ]] || die "cannot create directory $1"
}

fix_owner() {
  if $IS_ROOT; then chown -R "$PG_OS_USER": "$INST"; fi
}

init_cluster() {
  [[ -e $DATA ]] &&
    die "$DATA exists but is not an initialized data directory; remove $INST to start over"
  local tmp=$INST/data.initdb locale=C
  locale -a 2>/dev/null | grep -iE '^c\.utf-?8$' >/dev/null && locale=C.UTF-8
  rm -rf "$tmp"
  log "initializing a new cluster in $DATA (PostgreSQL $("$BINDIR/postgres" -V | awk '{print $3}'), locale $locale)"
  local -a extra=()
  "$BINDIR/initdb" --help | grep -- --no-instructions >/dev/null && extra=(--no-instructions)
  # Trust auth: see the security note at the top of this file.
  as_pg "$BINDIR/initdb" -D "$tmp" --username="$DB_USER" --auth=trust --encoding=UTF8 \
    --locale="$locale" "${extra[@]}" >&2 || die "initdb failed"
  printf "\n# Added by deploy/pg.sh: settings managed by the script.\ninclude 'fleetyard.conf'\n" \
    >>"$tmp/postgresql.conf"
  # initdb ran in a scratch directory so that an interrupted init never looks initialized.
  mv "$tmp" "$DATA"
}

start_server() {
  local attempt offset
  for attempt in 1 2 3; do
    offset=$(stat -c %s "$LOG_FILE" 2>/dev/null || echo 0)
    log "starting the server on 127.0.0.1:$PORT (log: $LOG_FILE)"
    if as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$LOG_FILE" -w -t 60 start >&2; then
      return 0
    fi
    # After a crash (kill -9 of the postmaster) its children may take a moment to exit.
    if (( attempt < 3 )) &&
       tail -c +"$((offset + 1))" "$LOG_FILE" 2>/dev/null | grep 'pre-existing shared memory block' >/dev/null; then
      log "processes of a previous server still hold its shared memory; retrying in 2s"
      sleep 2
      continue
    fi
    break
  done
  log "the server failed to start; last 30 lines of $LOG_FILE:"
  tail -n 30 "$LOG_FILE" >&2 || true
  exit 1
}

stop_server() {
  if ! as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2; then
    log "fast shutdown failed; trying an immediate shutdown"
    as_pg "$BINDIR/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >&2 ||
      die "could not stop the server in $DATA (see $LOG_FILE)"
  fi
}

# Returns 1 if the server went away while we waited (e.g. it was dying when we looked).
wait_ready() {
  local i
  for (( i = 0; i < 120; i++ )); do
    "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U "$DB_USER" -d postgres && return 0
    running_pid >/dev/null || return 1
    sleep 0.5
  done
  die "the server does not accept connections on 127.0.0.1:$PORT (see $LOG_FILE)"
}

ensure_db() {
  local -a conn=(-h 127.0.0.1 -p "$PORT" -U "$DB_USER")
  local found
  found=$("$BINDIR/psql" -X -q -A -t "${conn[@]}" -d postgres \
            -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ||
    die "cannot query the server on 127.0.0.1:$PORT"
  if [[ $found != 1 ]]; then
    log "creating database $DB_NAME"
    "$BINDIR/createdb" "${conn[@]}" "$DB_NAME" >&2 || die "createdb $DB_NAME failed"
  fi
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_start() {
  find_bindir true
  if $IS_ROOT; then ensure_os_user; fi
  check_owner
  mkdir_755 "$LOCAL_DIR"
  mkdir_755 "$INST"
  mkdir_755 "$SOCK_DIR"
  cd "$INST"   # tools run as the server user must not inherit an unreadable cwd
  lock_instance
  fix_owner
  if $IS_ROOT; then check_traverse; fi

  if [[ ! -f $DATA/PG_VERSION ]]; then init_cluster; fi

  ensure_running
  if ! $READY; then ensure_running; fi   # once more: it may have been dying when we looked
  $READY || die "the server exited while starting up; see $LOG_FILE"
  ensure_db
  url
}

# Start the server, or restart it if its settings changed. Sets READY=false if the server
# vanished while we waited for it to accept connections.
ensure_running() {
  local conf current pid rc=0
  conf=$(desired_conf)
  current=$(cat "$DATA/fleetyard.conf" 2>/dev/null || true)
  pid=$(running_pid) || rc=$?
  if (( rc == 2 )); then
    log "removing stale lock files of a crashed server (PID $pid is a zombie or another process)"
    remove_stale_locks "$pid"
    rc=1
  fi
  # Check the port before stopping a running server that is about to move to another one.
  if (( rc != 0 )) || { [[ $conf != "$current" ]] && [[ $(running_port) != "$PORT" ]]; }; then
    check_port_free
  fi
  if (( rc == 0 )) && [[ $conf != "$current" ]]; then
    log "settings changed (port or --fast); restarting the server (pid $pid)"
    stop_server
    rc=1
  fi
  if [[ $conf != "$current" ]]; then
    printf '%s\n' "$conf" >"$DATA/fleetyard.conf.tmp"
    mv "$DATA/fleetyard.conf.tmp" "$DATA/fleetyard.conf"
  fi
  fix_owner
  if (( rc != 0 )); then
    start_server
  else
    log "server already running (pid $pid)"
  fi
  if wait_ready; then
    READY=true
  else
    log "the server exited while starting up"
    READY=false
  fi
}

cmd_stop() {
  check_owner
  if [[ ! -f $DATA/PG_VERSION ]]; then
    log "no cluster in $INST; nothing to stop"
    return 0
  fi
  cd "$INST"
  lock_instance
  local pid rc=0
  pid=$(running_pid) || rc=$?
  if (( rc != 0 )); then
    log "server $NAME is not running"
    return 0
  fi
  find_bindir false || die "no PostgreSQL binaries found to stop the server (pid $pid)"
  log "stopping server $NAME (pid $pid)"
  stop_server
}

cmd_status() {
  check_owner
  local pid rc=0
  pid=$(running_pid) || rc=$?
  if (( rc == 0 )); then
    log "server $NAME is running (pid $pid, data $DATA)"
    return 0
  fi
  log "server $NAME is not running"
  return 3
}

main() {
  local cmd=${1:-}
  (( $# > 0 )) && shift
  FAST=false
  case $cmd in
    start)
      (( $# >= 2 )) || usage
      set_name "$1"; set_port "$2"; shift 2
      while (( $# > 0 )); do
        case $1 in
          --fast) FAST=true ;;
          *) usage ;;
        esac
        shift
      done
      cmd_start ;;
    stop)   (( $# == 1 )) || usage; set_name "$1"; cmd_stop ;;
    status) (( $# == 1 )) || usage; set_name "$1"; cmd_status ;;
    url)    (( $# == 2 )) || usage; set_name "$1"; set_port "$2"; url ;;
    *) usage ;;
  esac
}

main "$@"
