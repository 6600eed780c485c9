#!/bin/sh
# pg.sh — a throwaway PostgreSQL cluster for tests and the demo.
#
#   eval "$(tests/pg.sh start DIR)"   create (or reuse) a cluster in DIR/data, start it, and print
#                                     `export PGHOST=... PGPORT=... PGUSER=... PGDATABASE=...`
#   tests/pg.sh env DIR               print those export lines again (cluster must exist)
#   tests/pg.sh status DIR            exit 0 when the cluster in DIR is running
#   tests/pg.sh stop DIR              stop it (fast shutdown); idempotent
#
# The cluster listens on a unix socket in DIR only (no TCP), trusts local connections and has
# the superuser role "postgres". Databases named in PG_DATABASES ("user_core gear_ops") are
# created when missing. fsync stays on (the server default) because the product's durability
# tests run against it; only initdb itself skips the sync, as the cluster is disposable.
#
# initdb and pg_ctl refuse to run as root, so under uid 0 they run as the "postgres" system
# user (present whenever the Debian postgresql package is) or, failing that, a system user
# "dualwrite-test" created for the purpose; DIR is handed to that user. Only the export lines
# go to stdout; everything else goes to stderr. Server log: DIR/postgres.log.
set -eu

PROG=pg.sh
DEFAULT_PORT=5432
START_TIMEOUT=${PG_START_TIMEOUT:-60}

die() {
	echo "$PROG: $*" >&2
	exit 1
}

usage() {
	cat >&2 <<'EOF'
usage: tests/pg.sh start DIR     create/start a throwaway cluster; prints export lines
       tests/pg.sh env DIR       print the export lines for a cluster in DIR
       tests/pg.sh status DIR    exit 0 if running
       tests/pg.sh stop DIR      stop it (idempotent)
env:   PG_DATABASES="db1 db2"    databases to create (start)
       PG_BINDIR=/path/bin       PostgreSQL binaries (default: highest /usr/lib/postgresql/*/bin)
       PG_START_TIMEOUT=60       seconds pg_ctl waits for start/stop
EOF
	[ "${1:-}" = ok ] && exit 0
	exit 2
}

# The highest installed server version, or whatever initdb is on PATH.
find_bindir() {
	if [ -n "${PG_BINDIR:-}" ]; then
		[ -x "$PG_BINDIR/initdb" ] || die "PG_BINDIR=$PG_BINDIR has no initdb"
		echo "$PG_BINDIR"
		return
	fi
	best=""
	best_v=-1
	for d in /usr/lib/postgresql/*/bin; do
		[ -x "$d/initdb" ] || continue
		v=$(basename "$(dirname "$d")")
		v_major=${v%%.*}
		case $v_major in '' | *[!0-9]*) continue ;; esac
		if [ "$v_major" -gt "$best_v" ]; then
			best_v=$v_major
			best=$d
		fi
	done
	if [ -z "$best" ]; then
		p=$(command -v initdb 2>/dev/null || true)
		[ -n "$p" ] || die "no PostgreSQL server binaries found (install the postgresql package)"
		best=$(dirname "$p")
	fi
	echo "$best"
}

# Under root: the unprivileged user that owns and runs the cluster. Empty otherwise.
pick_runas() {
	[ "$(id -u)" -eq 0 ] || return 0
	if [ -d "$DIR/data" ]; then
		owner=$(stat -c %U "$DIR/data")
		if [ "$owner" != root ] && [ "$owner" != UNKNOWN ]; then
			echo "$owner"
			return
		fi
	fi
	if id -u postgres >/dev/null 2>&1; then
		echo postgres
		return
	fi
	if ! id -u dualwrite-test >/dev/null 2>&1; then
		useradd -r -M -d /nonexistent -s /usr/sbin/nologin dualwrite-test >&2 ||
			die "cannot create the system user dualwrite-test"
	fi
	echo dualwrite-test
}

# Run a command as the cluster owner, from DIR so that a cwd the owner cannot read is no issue.
as_owner() {
	if [ -n "$RUNAS" ]; then
		(cd "$DIR" && runuser -u "$RUNAS" -- "$@")
	else
		(cd "$DIR" && "$@")
	fi
}

# Let the owner reach DIR: every ancestor must be searchable by it.
grant_access() {
	[ -n "$RUNAS" ] || return 0
	chown "$RUNAS" "$DIR"
	chmod 0700 "$DIR"
	d=$(dirname "$DIR")
	while [ "$d" != / ]; do
		if ! runuser -u "$RUNAS" -- test -x "$d"; then
			echo "$PROG: granting search permission on $d to $RUNAS" >&2
			chmod o+x "$d"
		fi
		d=$(dirname "$d")
	done
}

cluster_port() {
	p=""
	if [ -f "$DIR/data/postgresql.auto.conf" ]; then
		p=$(sed -n "s/^port = '\{0,1\}\([0-9]*\)'\{0,1\}\$/\1/p" "$DIR/data/postgresql.auto.conf" | tail -n 1)
	fi
	echo "${p:-$DEFAULT_PORT}"
}

print_env() {
	echo "export PGHOST='$DIR' PGPORT=$(cluster_port) PGUSER=postgres PGDATABASE=postgres"
}

# A live process (a zombie left by a SIGKILLed postmaster that nobody reaped yet is not).
pid_alive() {
	case $1 in '' | *[!0-9]*) return 1 ;; esac
	kill -0 "$1" 2>/dev/null || return 1
	if [ -r "/proc/$1/stat" ]; then
		state=$(sed 's/^.*) \(.\).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)
		[ "$state" != Z ] || return 1
	fi
	return 0
}

# Decided from the pid file rather than `pg_ctl status`, which counts a zombie as running.
is_running() {
	[ -f "$DIR/data/postmaster.pid" ] || return 1
	pid_alive "$(head -n 1 "$DIR/data/postmaster.pid")"
}

# After a crash (SIGKILL, reboot) the lock files name a dead postmaster; the server would
# refuse to start while they point at a pid that still exists as a zombie.
clear_stale() {
	if [ -f "$DIR/data/postmaster.pid" ] && ! is_running; then
		echo "$PROG: removing the stale postmaster.pid in $DIR/data" >&2
		rm -f "$DIR/data/postmaster.pid" "$DIR"/.s.PGSQL.*.lock
	fi
}

do_init() {
	port=$DEFAULT_PORT
	# A unix socket path is limited to 107 bytes.
	sock="$DIR/.s.PGSQL.$port"
	[ "${#sock}" -lt 100 ] || die "socket path $sock is too long; use a shorter DIR"
	mkdir -p "$DIR/data"
	[ -z "$RUNAS" ] || chown "$RUNAS" "$DIR/data"
	chmod 0700 "$DIR/data"
	# initdb has no timeout of its own; bound it where coreutils' timeout exists.
	bound=""
	command -v timeout >/dev/null 2>&1 && bound="timeout $START_TIMEOUT"
	# shellcheck disable=SC2086
	if ! as_owner $bound "$BINDIR/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 \
		--locale=C --no-sync >"$DIR/initdb.log" 2>&1; then
		cat "$DIR/initdb.log" >&2
		die "initdb failed in $DIR/data"
	fi
	# postgresql.auto.conf overrides postgresql.conf and is plain key = 'value' lines.
	cat >>"$DIR/data/postgresql.auto.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$DIR'
port = $port
shared_buffers = '16MB'
max_connections = 60
dynamic_shared_memory_type = posix
max_wal_size = '256MB'
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
EOF
}

create_databases() {
	[ -n "${PG_DATABASES:-}" ] || return 0
	port=$(cluster_port)
	for db in $PG_DATABASES; do
		case $db in
		[A-Za-z_]*) ;;
		*) die "bad database name: $db" ;;
		esac
		case $db in
		*[!A-Za-z0-9_]*) die "bad database name: $db" ;;
		esac
		exists=$("$BINDIR/psql" -h "$DIR" -p "$port" -U postgres -d postgres -XtAq \
			-c "SELECT 1 FROM pg_database WHERE datname = '$db'") ||
			die "cannot query the cluster in $DIR"
		if [ "$exists" != 1 ]; then
			"$BINDIR/createdb" -h "$DIR" -p "$port" -U postgres "$db" ||
				die "createdb $db failed"
		fi
	done
}

cmd_start() {
	mkdir -p "$DIR"
	grant_access
	if [ ! -f "$DIR/data/PG_VERSION" ]; then
		do_init
	fi
	if ! is_running; then
		clear_stale
		if ! as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w \
			-t "$START_TIMEOUT" start >/dev/null 2>&1; then
			tail -n 20 "$DIR/postgres.log" >&2 2>/dev/null || true
			die "pg_ctl start failed for $DIR/data (log: $DIR/postgres.log)"
		fi
	fi
	create_databases
	print_env
}

cmd_stop() {
	[ -d "$DIR/data" ] || return 0
	[ -f "$DIR/data/postmaster.pid" ] || return 0
	if ! is_running; then
		clear_stale
		return 0
	fi
	if ! err=$(as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -m fast -w -t "$START_TIMEOUT" stop 2>&1); then
		# A busy machine can outlast "fast"; what matters is that it stops.
		if is_running; then
			echo "$PROG: fast stop failed ($err); trying immediate" >&2
			err=$(as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -m immediate -w \
				-t "$START_TIMEOUT" stop 2>&1) || true
		fi
		is_running && die "pg_ctl stop failed for $DIR/data: $err"
	fi
	clear_stale
}

case ${1:-} in -h | --help | help)
	usage ok 2>&1
	;;
esac
[ $# -eq 2 ] || usage
CMD=$1
case $2 in
/*) DIR=$2 ;;
*) DIR=$(pwd)/$2 ;;
esac
# Normalise trailing slashes so the socket path and ownership checks are stable.
while [ "${DIR%/}" != "$DIR" ] && [ "$DIR" != / ]; do DIR=${DIR%/}; done
case $DIR in
*[!A-Za-z0-9_./-]*) die "DIR must consist of [A-Za-z0-9_./-] only: $DIR" ;;
esac
BINDIR=$(find_bindir)

case $CMD in
start)
	RUNAS=$(pick_runas)
	cmd_start
	;;
stop)
	[ -d "$DIR" ] || exit 0
	RUNAS=$(pick_runas)
	cmd_stop
	;;
status)
	[ -d "$DIR/data" ] || exit 1
	RUNAS=$(pick_runas)
	is_running
	;;
env)
	[ -f "$DIR/data/PG_VERSION" ] || die "no cluster in $DIR"
	print_env
	;;
*) usage ;;
esac
