package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/testsvc"
)

func tend(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return out.String(), err
}

func TestCommands(t *testing.T) {
	db := testsvc.NewDB(t)
	t.Setenv("TEND_DATABASE_URL", db.URL)
	t.Setenv("TEND_LOG_LEVEL", "error")

	out, err := tend(t, "keys", "create", "--name", "ci", "--role", "ingest")
	if err != nil {
		t.Fatal(err)
	}
	// The key alone on stdout, once, so `KEY=$(tend keys create ...)` works.
	if !regexp.MustCompile(`^tend_[a-z2-7]+\n$`).MatchString(out) {
		t.Fatalf("stdout = %q, want only the key", out)
	}
	key := strings.TrimSpace(out)
	store := apikey.NewStore(db.DB, clock.System{})
	k, err := store.Authenticate(context.Background(), key)
	if err != nil || k.Role != apikey.Ingest || k.Name != "ci" {
		t.Fatalf("the printed key does not authenticate: %+v %v", k, err)
	}
	out, err = tend(t, "keys", "list")
	if err != nil || !strings.Contains(out, "ci") || strings.Contains(out, key) {
		t.Fatalf("list = %q, %v (must name the key, never show it)", out, err)
	}
	if _, err := tend(t, "keys", "revoke", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Authenticate(context.Background(), key); err == nil {
		t.Fatal("a revoked key still authenticates")
	}
	for _, bad := range [][]string{
		{"keys", "create", "--name", "x", "--role", "root"},
		{"keys", "create", "--role", "admin"},
		{"keys", "revoke", "abc"},
		{"keys", "revoke", "999"},
		{"clock", "advance", "2d"}, // demo clock off
		{"nonsense"},
	} {
		if _, err := tend(t, bad...); err == nil {
			t.Errorf("tend %v: want an error", bad)
		}
	}

	t.Setenv("TEND_DEMO_CLOCK", "true")
	if out, err := tend(t, "clock", "advance", "2d"); err != nil || !strings.Contains(out, "offset 48h0m0s") {
		t.Fatalf("clock advance: %q %v", out, err)
	}
	if _, err := tend(t, "clock", "advance", "soon"); err == nil {
		t.Fatal("a bad duration must be refused")
	}
	if out, err := tend(t, "clock", "show"); err != nil || !strings.Contains(out, "offset 48h0m0s") {
		t.Fatalf("clock show: %q %v", out, err)
	}
	var actions []string
	db.Select(&actions, `SELECT action FROM audit_log WHERE actor LIKE 'cli%' ORDER BY id`)
	if strings.Join(actions, ",") != "keys create,keys revoke,clock advance" {
		t.Fatalf("command-line mutations audited as %v", actions)
	}
	if out, _ := tend(t, "help"); !strings.Contains(out, "tend keys create") {
		t.Fatalf("help = %q", out)
	}
}

func TestBadConfigSaysWhatToFix(t *testing.T) {
	t.Setenv("TEND_REDIS_URL", "localhost:6379")
	_, err := tend(t, "migrate")
	if err == nil || !strings.Contains(err.Error(), "TEND_REDIS_URL") {
		t.Fatalf("want an error naming TEND_REDIS_URL, got %v", err)
	}
}

func TestCampaignsApplyAndDiff(t *testing.T) {
	db := testsvc.NewDB(t)
	t.Setenv("TEND_DATABASE_URL", db.URL)
	t.Setenv("TEND_LOG_LEVEL", "error")
	if _, err := db.Exec(`INSERT INTO segment (name, predicate, created_at, updated_at) VALUES ('at-risk', 'health_score < 40', now(), now())`); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	write := func(path, body string) {
		t.Helper()
		full := filepath.Join(root, path)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("campaigns/at-risk.yaml", `
name: at-risk-checkin
kind: drip
segment: at-risk
steps:
  - {id: checkin, wait: 0h, channel: email, template: at-risk/checkin}
`)
	write("templates/at-risk/checkin.html", `{{define "subject"}}Checking in, {{.Contact.FirstName}}{{end}}{{define "body"}}<p>Hi</p>{{end}}`)
	dir := filepath.Join(root, "campaigns")

	out, err := tend(t, "campaigns", "diff", dir)
	if err != nil || !strings.Contains(out, "at-risk-checkin") || !strings.Contains(out, "create") {
		t.Fatalf("diff = %q, %v", out, err)
	}
	var n int
	db.Get(&n, `SELECT count(*) FROM campaign`)
	if n != 0 {
		t.Fatal("diff changed something")
	}
	if out, err = tend(t, "campaigns", "apply", dir, "--activate"); err != nil || !strings.Contains(out, "activated at-risk-checkin") {
		t.Fatalf("apply = %q, %v", out, err)
	}
	var status string
	db.Get(&status, `SELECT status FROM campaign WHERE name = 'at-risk-checkin'`)
	if status != "active" {
		t.Fatalf("status = %s", status)
	}
	if out, _ = tend(t, "campaigns", "diff", dir); strings.Contains(out, "create") || !strings.Contains(out, "unchanged") {
		t.Fatalf("diff after apply = %q", out)
	}
	// A campaign an operator paused stays paused when the files are applied
	// again with --activate (make run does so at every start).
	if _, err := db.Exec(`UPDATE campaign SET status = 'paused' WHERE name = 'at-risk-checkin'`); err != nil {
		t.Fatal(err)
	}
	if out, err = tend(t, "campaigns", "apply", dir, "--activate"); err != nil || strings.Contains(out, "activated") {
		t.Fatalf("re-apply = %q, %v", out, err)
	}
	db.Get(&status, `SELECT status FROM campaign WHERE name = 'at-risk-checkin'`)
	if status != "paused" {
		t.Fatalf("re-applying --activate made a paused campaign %s", status)
	}
	// A broken template is refused by name, and nothing changes.
	write("templates/at-risk/checkin.html", `{{define "subject"}}Hi {{.Contact.Nmae}}{{end}}{{define "body"}}x{{end}}`)
	_, err = tend(t, "campaigns", "apply", dir)
	if err == nil || !strings.Contains(err.Error(), "at-risk/checkin") {
		t.Fatalf("want a refusal naming the template, got %v", err)
	}
	var versions int
	db.Get(&versions, `SELECT count(*) FROM campaign_version`)
	if versions != 1 {
		t.Fatalf("%d versions after a refused apply", versions)
	}
}

func TestSeedCommand(t *testing.T) {
	db := testsvc.NewDB(t)
	t.Setenv("TEND_DATABASE_URL", db.URL)
	t.Setenv("TEND_LOG_LEVEL", "error")
	count := func(table string) int {
		t.Helper()
		var n int
		if err := db.Get(&n, `SELECT count(*) FROM `+table); err != nil {
			t.Fatal(err)
		}
		return n
	}

	if out, _ := tend(t, "help"); !regexp.MustCompile(`(?m)^  tend seed --demo`).MatchString(out) {
		t.Fatalf("help has no `  tend seed` line (deploy/run-local.sh looks for it): %q", out)
	}
	for _, bad := range [][]string{
		{"seed"}, // --demo is required
		{"seed", "--demo", "--accounts", "0"},
		{"seed", "--demo", "--accounts", "many"},
		{"seed", "--demo", "--seed", "-1"},
		{"seed", "--demo", "--colour"},
		{"seed", "--demo", "extra"},
	} {
		if _, err := tend(t, bad...); err == nil {
			t.Errorf("tend %v: want an error", bad)
		}
	}
	if _, err := tend(t, "seed"); err == nil || !strings.Contains(err.Error(), "--demo") {
		t.Errorf("without --demo, the error must say to use it: %v", err)
	}
	if n := count("account"); n != 0 {
		t.Fatalf("refused seeds wrote %d accounts", n)
	}

	out, err := tend(t, "seed", "--demo", "--accounts", "25", "--seed", "3")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"csms", "accounts          25 (healthy", "advocate", "contacts", "events", "segments          6 created"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if count("account") != 25 || count("csm") != 6 || count("segment") != 6 || count("usage_event") == 0 {
		t.Fatalf("seeded %d accounts, %d CSMs, %d segments, %d events", count("account"), count("csm"), count("segment"), count("usage_event"))
	}
	var actions []string
	db.Select(&actions, `SELECT action FROM audit_log WHERE actor LIKE 'cli%' ORDER BY id`)
	if strings.Join(actions, ",") != "seed" {
		t.Fatalf("seed audited as %v", actions)
	}

	// The local runner's call: a database with accounts is left alone.
	out, err = tend(t, "seed", "--demo", "--if-empty")
	if err != nil || !strings.Contains(out, "nothing seeded") {
		t.Fatalf("seed --if-empty on a seeded database: %q %v", out, err)
	}
	if n := count("account"); n != 25 {
		t.Fatalf("--if-empty seeded anyway: %d accounts", n)
	}
}
