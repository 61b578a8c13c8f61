#!/usr/bin/env bash
# Make the local development services reachable at the configured URLs:
#   PostgreSQL  TEND_DATABASE_URL  (default postgres://postgres@127.0.0.1:5432/tend?sslmode=disable)
#   Redis       TEND_REDIS_URL     (default redis://127.0.0.1:6379/0)
#   SMTP sink   TEND_SMTP_URL      (default smtp://127.0.0.1:1025, served by mailpit)
#
# For each service, in order: use it if it is already reachable; start it if it is installed;
# install it (Debian/Ubuntu as root: apt-get; mailpit: go install) and start it; fall back to
# `docker compose -f deploy/docker-compose.yml up -d <service>` when Docker is usable; otherwise
# print what to install and exit non-zero. Only loopback hosts are managed; a remote host is only
# checked. Idempotent, and quiet when everything is up (one line per service).
#
# Usage: deploy/services.sh [--smtp-optional]
#   --smtp-optional  do not fail when no SMTP sink can be provided (the tests run their own
#                    in-process SMTP server); an installed mailpit is still started, but
#                    nothing is installed or pulled for it.
#
# Other knobs: TEND_MAILPIT_UI (default 127.0.0.1:8025), TEND_SERVICES_WAIT (seconds, default 30),
# TEND_SERVICES_STATE (logs, pid files, Redis dir; default ${TMPDIR:-/tmp}/tend-services-$UID).
set -euo pipefail

SMTP_OPTIONAL=0
for arg in "$@"; do
	case "$arg" in
	--smtp-optional) SMTP_OPTIONAL=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "services.sh: unknown argument: $arg (try --help)" >&2
		exit 2
		;;
	esac
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_FILE="$REPO_ROOT/deploy/docker-compose.yml"
MAILPIT_VERSION="v1.27.11"

DATABASE_URL="${TEND_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tend?sslmode=disable}"
REDIS_URL="${TEND_REDIS_URL:-redis://127.0.0.1:6379/0}"
SMTP_URL="${TEND_SMTP_URL:-smtp://127.0.0.1:1025}"
MAILPIT_UI="${TEND_MAILPIT_UI:-127.0.0.1:8025}"
WAIT_SECONDS="${TEND_SERVICES_WAIT:-30}"
STATE_DIR="${TEND_SERVICES_STATE:-${TMPDIR:-/tmp}/tend-services-$(id -u)}"

say() { printf '%s\n' "$*"; }
err() { printf '%s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

is_root() { [[ $EUID -eq 0 ]]; }
is_debian() { [[ -f /etc/debian_version ]] && have apt-get; }
can_apt() { is_debian && is_root; }

DOCKER_STATE="" # "", "yes" or "no"
docker_usable() {
	if [[ -z $DOCKER_STATE ]]; then
		DOCKER_STATE=no
		if have docker && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
			DOCKER_STATE=yes
		fi
	fi
	[[ $DOCKER_STATE == yes ]]
}

APT_UPDATED=0
apt_install() {
	if [[ $APT_UPDATED -eq 0 ]]; then
		say "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
		APT_UPDATED=1
	fi
	say "apt-get install -y $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" || return 1
}

compose_up() {
	say "docker compose -f deploy/docker-compose.yml up -d $*"
	docker compose -f "$COMPOSE_FILE" up -d "$@"
}

ensure_state_dir() { mkdir -p "$STATE_DIR"; }

# percent-decode (enough for user names and passwords in URLs)
urldecode() {
	local s="${1//+/ }"
	printf '%b' "${s//%/\\x}"
}

# parse_url URL DEFAULT_PORT: sets U_USER U_PASS U_HOST U_PORT U_PATH
parse_url() {
	local url=$1 rest authority userinfo hostport
	U_USER="" U_PASS="" U_HOST="" U_PORT="" U_PATH=""
	rest=${url#*://}
	authority=${rest%%[/?#]*}
	U_PATH=${rest:${#authority}}
	U_PATH=${U_PATH%%[?#]*}
	U_PATH=${U_PATH#/}
	if [[ $authority == *@* ]]; then
		userinfo=${authority%@*}
		hostport=${authority##*@}
		if [[ $userinfo == *:* ]]; then
			U_USER=$(urldecode "${userinfo%%:*}")
			U_PASS=$(urldecode "${userinfo#*:}")
		else
			U_USER=$(urldecode "$userinfo")
		fi
	else
		hostport=$authority
	fi
	if [[ $hostport == \[* ]]; then # [ipv6]:port
		U_HOST=${hostport#[}
		U_HOST=${U_HOST%%]*}
		[[ $hostport == *]:* ]] && U_PORT=${hostport##*]:}
	elif [[ $hostport == *:* ]]; then
		U_HOST=${hostport%%:*}
		U_PORT=${hostport#*:}
	else
		U_HOST=$hostport
	fi
	[[ -n $U_HOST ]] || U_HOST=127.0.0.1
	[[ -n $U_PORT ]] || U_PORT=$2
	if ! [[ $U_PORT =~ ^[0-9]+$ ]]; then
		err "cannot parse a port from URL: $url"
		return 1
	fi
}

is_local() {
	case "$1" in
	localhost | 127.* | ::1 | 0:0:0:0:0:0:0:1) return 0 ;;
	*) return 1 ;;
	esac
}

# hostport HOST PORT: printable address, brackets for IPv6
hostport() { if [[ $1 == *:* ]]; then printf '[%s]:%s' "$1" "$2"; else printf '%s:%s' "$1" "$2"; fi; }

tcp_up() {
	local host=$1 port=$2
	if have timeout; then
		timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" >/dev/null 2>&1
	else
		bash -c "exec 3<>/dev/tcp/$host/$port" >/dev/null 2>&1
	fi
}

# wait_up NAME LOG PROBE...: wait until PROBE succeeds, bounded by WAIT_SECONDS; when WAIT_PID
# is set, stop early if that process exits
WAIT_PID=""
wait_up() {
	local name=$1 log=$2 deadline
	shift 2
	deadline=$((SECONDS + WAIT_SECONDS))
	until "$@"; do
		if [[ -n $WAIT_PID ]] && ! kill -0 "$WAIT_PID" 2>/dev/null; then
			err "$name: the process exited before it became reachable; see ${log}"
			[[ -f $log ]] && tail -n 3 "$log" | sed 's/^/  /' >&2
			WAIT_PID=""
			return 1
		fi
		if ((SECONDS >= deadline)); then
			err "$name: not reachable after ${WAIT_SECONDS}s; see ${log}"
			WAIT_PID=""
			return 1
		fi
		sleep 0.5
	done
	WAIT_PID=""
}

# ---------------------------------------------------------------- PostgreSQL

PG_HOST="" PG_PORT="" PG_USER="" PG_PASS="" PG_DB=""

pg_up() {
	if have pg_isready; then
		pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1
	else
		tcp_up "$PG_HOST" "$PG_PORT"
	fi
}

# psql against the maintenance database as the configured user, over TCP
pg_psql() {
	PGPASSWORD="$PG_PASS" PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 \
		-h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

pg_debian_version() {
	local v
	v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
	[[ -n $v ]] || v=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)
	[[ -n $v ]] && printf '%s' "$v"
}

pg_debian_installed() {
	have pg_ctlcluster || return 1
	[[ -n $(ls /etc/postgresql 2>/dev/null) || -n $(ls /usr/lib/postgresql 2>/dev/null) ]]
}

find_pg_ctl() {
	local c
	if have pg_ctl; then
		command -v pg_ctl
		return 0
	fi
	for c in /usr/lib/postgresql/*/bin/pg_ctl /usr/pgsql-*/bin/pg_ctl /usr/local/pgsql/bin/pg_ctl \
		/opt/homebrew/opt/postgresql*/bin/pg_ctl /usr/local/opt/postgresql*/bin/pg_ctl; do
		[[ -x $c ]] && {
			printf '%s\n' "$c"
			return 0
		}
	done
	return 1
}

PG_LOG=""

pg_start() {
	if pg_debian_installed; then
		local v
		v=$(pg_debian_version)
		if [[ ! -d /etc/postgresql/$v/main ]]; then
			say "postgres: creating cluster $v/main"
			pg_createcluster "$v" main || return 1
		fi
		PG_LOG="/var/log/postgresql/postgresql-$v-main.log"
		local cport
		cport=$(sed -nE 's/^[[:space:]]*port[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p' "/etc/postgresql/$v/main/postgresql.conf" 2>/dev/null | tail -1)
		if [[ -n $cport && $cport != "$PG_PORT" ]]; then
			err "postgres: note: cluster $v/main is configured for port $cport, TEND_DATABASE_URL uses $PG_PORT"
		fi
		say "postgres: starting cluster $v/main"
		if ! pg_ctlcluster --skip-systemctl-redirect "$v" main start; then
			# "already running" is fine; anything else shows in the log
			pg_lsclusters 2>/dev/null | grep -qE "^$v +main +[0-9]+ +online" || {
				is_root || err "postgres: starting a cluster needs root or the postgres user; try: sudo $0"
				return 1
			}
		fi
		return 0
	fi
	local pg_ctl bindir data
	pg_ctl=$(find_pg_ctl) || return 1
	bindir=$(dirname "$pg_ctl")
	data="${PGDATA:-${XDG_DATA_HOME:-$HOME/.local/share}/tend/pgdata}"
	ensure_state_dir
	PG_LOG="$STATE_DIR/postgres-$PG_PORT.log"
	if [[ ! -f $data/PG_VERSION ]]; then
		if is_root; then
			err "postgres: initdb refuses to run as root; run this script as a normal user, or set PGDATA to an existing cluster"
			return 1
		fi
		say "postgres: initdb $data (user postgres, trust auth)"
		mkdir -p "$data"
		"$bindir/initdb" -D "$data" -U postgres --auth=trust >"$PG_LOG" 2>&1 || {
			err "postgres: initdb failed; see $PG_LOG"
			return 1
		}
	fi
	say "postgres: pg_ctl start -D $data"
	"$bindir/pg_ctl" -D "$data" -l "$PG_LOG" \
		-o "-p $PG_PORT -c listen_addresses=$PG_HOST -k $STATE_DIR" start >/dev/null || {
		err "postgres: pg_ctl start failed; see $PG_LOG"
		return 1
	}
}

pg_installed() { pg_debian_installed || find_pg_ctl >/dev/null; }

# After it is up: the configured user must log in over TCP (Debian defaults to password auth
# for TCP; for local dev we trust loopback), and the configured database must exist.
pg_finish() {
	have psql || return 0
	local out
	if ! out=$(pg_psql -tAc 'select 1' 2>&1); then
		if is_local "$PG_HOST" && is_debian && is_root && have su; then
			local hba
			hba=$(cd / && PGPORT="$PG_PORT" su postgres -c "psql -X -tAc 'show hba_file'" 2>/dev/null | head -1) || hba=""
			if [[ -n $hba && -f $hba ]]; then
				if ! grep -qE '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
					local tmp
					tmp=$(mktemp)
					{
						echo "# added by tend deploy/services.sh: local development, trust loopback TCP"
						echo "host all all 127.0.0.1/32 trust"
						echo "host all all ::1/128 trust"
						cat "$hba"
					} >"$tmp"
					cat "$tmp" >"$hba" # keep owner and mode of the original
					rm -f "$tmp"
					(cd / && PGPORT="$PG_PORT" su postgres -c "psql -X -qtAc 'select pg_reload_conf()'") >/dev/null
					say "postgres: added 'host all all 127.0.0.1/32 trust' and '::1/128 trust' at the top of $hba and reloaded"
					sleep 0.5
				fi
			fi
		fi
		if ! out=$(pg_psql -tAc 'select 1' 2>&1); then
			err "postgres: reachable at $(hostport "$PG_HOST" "$PG_PORT") but user '$PG_USER' cannot log in:"
			err "  $out"
			if [[ $out == *password* || $out == *authentication* ]]; then
				err "  for local development allow trust auth for loopback in pg_hba.conf, e.g.:"
				err "    host all all 127.0.0.1/32 trust"
				err "    host all all ::1/128 trust"
			fi
			return 1
		fi
	fi
	if [[ -n $PG_DB && $PG_DB != postgres ]]; then
		local dbq=${PG_DB//\'/\'\'}
		if [[ $(pg_psql -tAc "select 1 from pg_database where datname = '$dbq'" 2>/dev/null) != 1 ]]; then
			local ident=${PG_DB//\"/\"\"}
			if pg_psql -c "create database \"$ident\"" >/dev/null 2>&1; then
				say "postgres: created database $PG_DB"
			else
				err "postgres: database $PG_DB does not exist and could not be created"
				return 1
			fi
		fi
	fi
}

ensure_postgres() {
	parse_url "$DATABASE_URL" 5432 || return 1
	PG_HOST=$U_HOST PG_PORT=$U_PORT PG_USER=${U_USER:-postgres} PG_PASS=$U_PASS PG_DB=$U_PATH
	local addr
	addr=$(hostport "$PG_HOST" "$PG_PORT")

	if pg_up; then
		pg_finish || return 1
		say "postgres: up at $addr"
		return 0
	fi
	if ! is_local "$PG_HOST"; then
		err "postgres: $addr (from TEND_DATABASE_URL) is not reachable, and it is not a loopback address, so this script does not manage it"
		return 1
	fi

	PG_LOG=""
	if pg_installed; then
		pg_start || {
			err "postgres: could not start it${PG_LOG:+; see $PG_LOG}"
			return 1
		}
	elif can_apt && apt_install postgresql; then
		pg_start || {
			err "postgres: installed but could not start it${PG_LOG:+; see $PG_LOG}"
			return 1
		}
	elif docker_usable; then
		compose_up postgres || return 1
		PG_LOG="docker compose -f deploy/docker-compose.yml logs postgres"
	else
		err "postgres: not reachable at $addr and not installed. Install and start PostgreSQL, e.g.:"
		err "  Debian/Ubuntu: sudo apt-get install -y postgresql   (then re-run: sudo deploy/services.sh)"
		err "  macOS:         brew install postgresql@16 && brew services start postgresql@16"
		err "  Docker:        docker compose -f deploy/docker-compose.yml up -d postgres"
		err "  or point TEND_DATABASE_URL at a PostgreSQL server the user can reach without a password."
		return 1
	fi
	wait_up postgres "${PG_LOG:-the PostgreSQL server log}" pg_up || return 1
	pg_finish || return 1
	say "postgres: up at $addr"
}

# ---------------------------------------------------------------- Redis

ensure_redis() {
	parse_url "$REDIS_URL" 6379 || return 1
	local host=$U_HOST port=$U_PORT addr log=""
	addr=$(hostport "$host" "$port")

	if tcp_up "$host" "$port"; then
		say "redis: up at $addr"
		return 0
	fi
	if ! is_local "$host"; then
		err "redis: $addr (from TEND_REDIS_URL) is not reachable, and it is not a loopback address, so this script does not manage it"
		return 1
	fi

	if ! have redis-server && can_apt; then
		apt_install redis-server || true
	fi
	if have redis-server; then
		ensure_state_dir
		local dir="$STATE_DIR/redis-$port" bind="127.0.0.1" major
		mkdir -p "$dir"
		log="$STATE_DIR/redis-$port.log"
		major=$(redis-server --version 2>/dev/null | sed -nE 's/.*v=([0-9]+).*/\1/p')
		if [[ $host == *:* ]]; then
			bind="::1 -127.0.0.1"
		elif [[ ${major:-0} -ge 7 ]]; then
			bind="127.0.0.1 -::1" # "-" : skip the address if it is unavailable (Redis 7+)
		fi
		say "redis: starting redis-server on port $port"
		# shellcheck disable=SC2086 # bind is a list of addresses
		redis-server --daemonize yes --bind $bind --port "$port" --save "" --appendonly no \
			--dir "$dir" --logfile "$log" --pidfile "$STATE_DIR/redis-$port.pid" >/dev/null || {
			err "redis: redis-server failed to start; see $log"
			return 1
		}
	elif docker_usable; then
		compose_up redis || return 1
		log="docker compose -f deploy/docker-compose.yml logs redis"
	else
		err "redis: not reachable at $addr and not installed. Install and start Redis, e.g.:"
		err "  Debian/Ubuntu: sudo apt-get install -y redis-server   (then re-run deploy/services.sh)"
		err "  macOS:         brew install redis && brew services start redis"
		err "  Docker:        docker compose -f deploy/docker-compose.yml up -d redis"
		return 1
	fi
	wait_up redis "$log" tcp_up "$host" "$port" || return 1
	say "redis: up at $addr"
}

# ---------------------------------------------------------------- SMTP sink (mailpit)

find_mailpit() {
	if have mailpit; then
		command -v mailpit
		return 0
	fi
	if have go; then
		local gobin
		gobin=$(go env GOBIN 2>/dev/null || true)
		if [[ -z $gobin ]]; then
			gobin=$(go env GOPATH 2>/dev/null || true)
			gobin="${gobin%%:*}/bin"
		fi
		if [[ -x $gobin/mailpit ]]; then
			printf '%s\n' "$gobin/mailpit"
			return 0
		fi
	fi
	return 1
}

ensure_mailpit() {
	parse_url "$SMTP_URL" 1025 || return 1
	local host=$U_HOST port=$U_PORT addr log mailpit pidfile
	addr=$(hostport "$host" "$port")

	if tcp_up "$host" "$port"; then
		say "smtp: up at $addr"
		return 0
	fi
	if ! is_local "$host"; then
		err "smtp: $addr (from TEND_SMTP_URL) is not reachable, and it is not a loopback address, so this script does not manage it"
		return 1
	fi

	if ! mailpit=$(find_mailpit) && [[ $SMTP_OPTIONAL -eq 0 ]] && have go; then
		say "smtp: go install github.com/axllent/mailpit@$MAILPIT_VERSION"
		(cd "$REPO_ROOT" && GOFLAGS= go install "github.com/axllent/mailpit@$MAILPIT_VERSION") || true
		mailpit=$(find_mailpit) || mailpit=""
	fi
	if [[ -n ${mailpit:-} ]]; then
		ensure_state_dir
		log="$STATE_DIR/mailpit-$port.log"
		pidfile="$STATE_DIR/mailpit-$port.pid"
		say "smtp: starting mailpit (SMTP $addr, UI http://$MAILPIT_UI, log $log)"
		nohup "$mailpit" --smtp "$(hostport "$host" "$port")" --listen "$MAILPIT_UI" --disable-version-check \
			</dev/null >"$log" 2>&1 &
		echo $! >"$pidfile"
		WAIT_PID=$!
	elif [[ $SMTP_OPTIONAL -eq 0 ]] && docker_usable; then
		compose_up mailpit || return 1
		log="docker compose -f deploy/docker-compose.yml logs mailpit"
	else
		err "smtp: nothing listens at $addr and mailpit is not installed. Provide an SMTP sink, e.g.:"
		err "  go install github.com/axllent/mailpit@$MAILPIT_VERSION   (then re-run deploy/services.sh)"
		err "  or: docker compose -f deploy/docker-compose.yml up -d mailpit"
		return 1
	fi
	wait_up smtp "$log" tcp_up "$host" "$port" || return 1
	say "smtp: up at $addr (mailpit UI http://$MAILPIT_UI)"
}

# ---------------------------------------------------------------- main

failed=()
ensure_postgres || failed+=(postgres)
ensure_redis || failed+=(redis)
if [[ $SMTP_OPTIONAL -eq 1 ]]; then
	ensure_mailpit 2>/dev/null || say "smtp: not available (skipped: --smtp-optional)"
else
	ensure_mailpit || failed+=(smtp)
fi

if ((${#failed[@]})); then
	err "services.sh: not available: ${failed[*]}"
	exit 1
fi
