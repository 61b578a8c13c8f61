#!/usr/bin/env bash
# Run Tend locally against the services from deploy/services.sh (`make run` does both):
# migrate, seed demo data when the binary supports it and the database is empty, apply
# campaigns/*.yaml when the binary supports it, then exec `tend all` (API + worker).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TEND="${TEND_BIN:-bin/tend}"
if [[ ! -x $TEND ]]; then
	echo "run-local: $TEND not found; run 'make build' first (or 'make run')" >&2
	exit 1
fi

# The commands this build knows (seed and campaigns may not exist yet).
help_text="$("$TEND" help 2>&1 || true)"
has_command() { grep -qE -- "^  tend $1( |\$)" <<<"$help_text"; }

# Local runs use the shared demo clock, so `tend clock advance 2d` fast-forwards drips.
export TEND_DEMO_CLOCK="${TEND_DEMO_CLOCK:-true}"

echo "run-local: $TEND migrate"
"$TEND" migrate

if has_command seed; then
	echo "run-local: $TEND seed --demo --if-empty"
	"$TEND" seed --demo --if-empty
fi

shopt -s nullglob
campaign_files=(campaigns/*.yaml campaigns/*.yml)
shopt -u nullglob
if ((${#campaign_files[@]})) && has_command campaigns; then
	echo "run-local: $TEND campaigns apply campaigns/"
	"$TEND" campaigns apply campaigns/
fi

http_addr="${TEND_HTTP_ADDR:-:8080}"
public_url="${TEND_PUBLIC_URL:-http://localhost:8080}"
cat <<MSG

Tend is starting (tend all: API and worker).
  API:         ${public_url}  (listening on ${http_addr}; try ${public_url}/healthz)
  Mail (UI):   http://127.0.0.1:8025  (mailpit catches everything sent to ${TEND_SMTP_URL:-smtp://127.0.0.1:1025})
  Admin key:   $TEND keys create --name me --role admin
               then: curl -H "Authorization: Bearer <key>" ${public_url}/v1/...
  Stop:        Ctrl-C

MSG
exec "$TEND" all
