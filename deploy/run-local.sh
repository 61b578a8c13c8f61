#!/usr/bin/env bash
# Run Tend locally against the services from deploy/services.sh (`make run` does both):
# migrate, seed demo data when the binary supports it and the database is empty, apply
# campaigns/*.yaml (with the templates/ they use) and activate them, then exec `tend all`
# (API + worker). Every step is idempotent, so running it again changes nothing that is
# already there: the seed is skipped, unchanged campaigns stay as they are, and campaigns
# that are already active are not activated (nor enrolled, nor sent) twice.
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

# The example campaigns target the demo's segments (new-accounts, at-risk, low-adoption,
# advocates, smb, enterprise), which the seed creates; a build that cannot seed cannot
# apply them. --activate activates the campaigns that are drafts and enrolls the current
# members of drips with enroll_existing; active and paused campaigns are left alone (resume
# a paused one with POST /v1/campaigns/{name}/activate).
shopt -s nullglob
campaign_files=(campaigns/*.yaml campaigns/*.yml)
shopt -u nullglob
if ((${#campaign_files[@]})) && has_command campaigns && has_command seed; then
	apply=("$TEND" campaigns apply campaigns/)
	if grep -q -- "--activate" <<<"$help_text"; then
		apply+=(--activate)
	fi
	echo "run-local: ${apply[*]}"
	if ! "${apply[@]}"; then
		echo "run-local: applying campaigns/ failed (above). Fix campaigns/ or templates/ and run again;" >&2
		echo "run-local: '$TEND campaigns diff campaigns/' checks them without changing anything." >&2
		exit 1
	fi
elif ((${#campaign_files[@]})) && has_command campaigns; then
	echo "run-local: this build cannot seed the demo's segments; not applying campaigns/"
fi

http_addr="${TEND_HTTP_ADDR:-:8080}"
public_url="${TEND_PUBLIC_URL:-http://localhost:8080}"
cat <<MSG

Tend is starting (tend all: API and worker). Within a minute every account is scored, the
segments are built and the example campaigns' first emails are in the mail UI.
  API:         ${public_url}  (listening on ${http_addr}; try ${public_url}/healthz)
  Mail (UI):   http://127.0.0.1:8025  (mailpit catches everything sent to ${TEND_SMTP_URL:-smtp://127.0.0.1:1025})
  Queues:      ${public_url}/admin/queues  (user: anything, password: an admin key)
  Try, in another terminal:
    KEY=\$($TEND keys create --name me --role admin); H="Authorization: Bearer \$KEY"
    curl -s -H "\$H" ${public_url}/v1/health/summary
    curl -s -H "\$H" ${public_url}/v1/segments
    curl -s -H "\$H" ${public_url}/v1/campaigns/at-risk-checkin/stats
    curl -s -H "\$H" ${public_url}/v1/accounts/acct-00008/health
    TEND_DEMO_CLOCK=true $TEND clock advance 2d      # fast-forward the drips
  README.md has the whole walk-through.
  Stop:        Ctrl-C

MSG
exec "$TEND" all
