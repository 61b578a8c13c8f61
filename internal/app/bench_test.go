package app_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/app"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/config"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/smtptest"
	"github.com/tendhq/tend/internal/testsvc"
)

// benchTemplate is a personalised CSM email of about 4 KB with tracked links.
var benchTemplate = `{{define "subject"}}{{.Account.Name}}: your quarterly check-in, {{.Contact.FirstName}}{{end}}
{{define "body"}}<p>Hi {{.Contact.FirstName}},</p>` + strings.Repeat(`
<p>Over the last month your team at {{.Account.Name}} logged in {{.Profile.Logins30d}} times and {{.Profile.ActiveUsers}} of
{{.Account.Seats}} seats were active. Teams that use <a href="https://docs.example.com/reports">scheduled reports</a> and
<a href="https://docs.example.com/alerts">alerts</a> save hours every week; here is
<a href="https://docs.example.com/guide">a short guide</a> if you would like to try them.</p>`, 9) + `
<p>If you would rather talk it through, <a href="https://cal.example.com/dana">pick a time on my calendar</a>.</p>{{end}}`

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkSendPipeline sends TEND_BENCH_EMAILS (default 20,000) CSM-signed,
// personalised emails through the whole pipeline (outbox rows → sweep →
// asynq send tasks → claim → render → go-mail over reused connections) into
// a counting SMTP sink on loopback, and reports msgs/s from the first
// enqueue (the earliest enqueued_at the sweep wrote, just before it queued
// the first send task) to the last message accepted, and also from the
// moment the worker starts (its start-up counted: asynq's server, the first
// sweep). It runs Tend's defaults for SMTP connections and worker
// concurrency, which TEND_BENCH_CONNECTIONS and TEND_BENCH_CONCURRENCY
// override. TEND_BENCH_DKIM=rsa also signs each message with an RSA-2048
// DKIM key.
//
// The machine is often shared, which makes msgs/s noisy; the CPU time a
// message costs is steadier, and is reported too: cpu-µs/msg in this
// process (everything but PostgreSQL and Redis: rendering, both ends of
// SMTP, the queue) and pg-cpu-µs/msg in the PostgreSQL backends of the
// benchmark's database, when the server runs on this machine.
func BenchmarkSendPipeline(b *testing.B) {
	n := envInt("TEND_BENCH_EMAILS", 20000)
	defer app.TuneGC()() // as the tend command runs
	perAccount := 10
	db := testsvc.NewDB(b)
	rd := testsvc.NewRedis(b)
	sink := smtptest.StartCounter(b)
	env := map[string]string{
		"TEND_DATABASE_URL": db.URL, "TEND_REDIS_URL": rd.URL, "TEND_SMTP_URL": sink.URL(),
		"TEND_HTTP_ADDR": "127.0.0.1:0", "TEND_SWEEP_INTERVAL": "1s",
		// Ten contacts per account would hit the account cap: this measures throughput.
		"TEND_CAP_PER_CONTACT": "0", "TEND_CAP_PER_ACCOUNT": "0",
	}
	// The defaults, unless set.
	if n := envInt("TEND_BENCH_CONNECTIONS", 0); n > 0 {
		env["TEND_SMTP_CONNECTIONS"] = strconv.Itoa(n)
	}
	if n := envInt("TEND_BENCH_CONCURRENCY", 0); n > 0 {
		env["TEND_WORKER_CONCURRENCY"] = strconv.Itoa(n)
	}
	dkim := "off"
	if os.Getenv("TEND_BENCH_DKIM") == "rsa" {
		// RSA-2048 DKIM signing of every message.
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			b.Fatal(err)
		}
		keyFile := filepath.Join(b.TempDir(), "dkim.pem")
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
			b.Fatal(err)
		}
		env["TEND_DKIM_KEY_FILE"], env["TEND_DKIM_DOMAIN"], dkim = keyFile, "acme.example", "RSA-2048"
	}
	cfg, err := config.Load(env)
	if err != nil {
		b.Fatal(err)
	}
	clk := clock.NewManual(t0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.New(context.Background(), cfg, log, app.WithClock(clk))
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	ctx := context.Background()

	// Accounts, contacts and a CSM, set-based.
	accounts := n / perAccount
	seed(b, db, `
		INSERT INTO csm (email, name, title, signature_html, created_at, updated_at)
		VALUES ('dana@acme.example', 'Dana Reyes', 'Customer Success Manager', '<p>Dana Reyes<br>Customer Success Manager</p>', now(), now())`)
	seed(b, db, `
		INSERT INTO account (external_id, name, plan, seats, signup_at, csm_id, timezone, created_at, updated_at)
		SELECT 'acc-' || i, 'Account ' || i, 'pro', 25, now() - interval '90 days', (SELECT id FROM csm), 'Europe/Paris', now(), now()
		FROM generate_series(1, $1) i`, accounts)
	seed(b, db, `
		INSERT INTO contact (external_id, account_id, email, name, role, created_at, updated_at)
		SELECT 'c-' || a.id || '-' || j, a.id, 'c' || a.id || '.' || j || '@example.com', 'Person ' || j || ' Last', 'admin', now(), now()
		FROM account a, generate_series(1, $1) j`, perAccount)
	if _, err := a.Segments.Create(ctx, segment.Input{Name: "everyone", Predicate: `seats > 0`}); err != nil {
		b.Fatal(err)
	}
	if _, err := a.Campaigns.Apply(ctx, campaign.Bundle{
		Campaigns: []campaign.Definition{{Name: "checkin", Kind: "drip", Segment: "everyone",
			Steps: []campaign.Step{{ID: "checkin", Wait: "0h", Channel: "email", Template: "bench/checkin"}}}},
		Templates: []campaign.TemplateInput{{Name: "bench/checkin", Kind: "email", Source: benchTemplate}},
	}, false); err != nil {
		b.Fatal(err)
	}
	if _, err := a.Campaigns.SetStatus(ctx, "checkin", "activate"); err != nil {
		b.Fatal(err)
	}
	// One enrollment per account and one due outbox row per contact, as
	// enrollment would write them.
	seed(b, db, `
		INSERT INTO enrollment (campaign_id, version, account_id, entry_number, contacts, status, step, anchor_at, entered_at)
		SELECT (SELECT id FROM campaign), 1, a.id, 1, ARRAY(SELECT id FROM contact WHERE account_id = a.id), 'active', 0, $1, $1
		FROM account a`, clk.Now())
	seed(b, db, `
		INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, created_at, updated_at)
		SELECT en.id, en.campaign_id, 1, 'checkin', c, 'email', 'scheduled', $1, $1, $1
		FROM enrollment en, unnest(en.contacts) c`, clk.Now())
	// Statistics, as autovacuum would have gathered them by now (the test
	// server may run without it): the plans of the pipeline's statements
	// depend on them.
	seed(b, db, `ANALYZE`)
	var rows int
	db.Get(&rows, `SELECT count(*) FROM message`)
	if rows != n {
		b.Fatalf("seeded %d messages, want %d", rows, n)
	}
	a.Enroller.ProcessSegmentEvents(ctx, 1) // nothing pending; warms the pool

	b.ResetTimer()
	cpu0, pg0 := processCPU(), postgresCPU(db.URL)
	start := time.Now()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx, app.ModeWorker) }()
	if !sink.WaitFor(n, 10*time.Minute) {
		cancel()
		b.Fatalf("only %d of %d accepted", sink.Count(), n)
	}
	end := time.Now()
	elapsed := end.Sub(start)
	cpu, pg := processCPU()-cpu0, postgresCPU(db.URL)
	if pg >= 0 && pg0 >= 0 {
		pg -= pg0
	} else {
		pg = -1
	}
	b.StopTimer()
	cancel()
	<-done
	var sent int
	db.Get(&sent, `SELECT count(*) FROM message WHERE status = 'sent'`)
	if sent != n || sink.Count() != n {
		b.Fatalf("%d sent, %d accepted, want %d each", sent, sink.Count(), n)
	}
	// enqueued_at is real time (the outbox's lease clock), as end is.
	var first time.Time
	if err := db.Get(&first, `SELECT min(enqueued_at) FROM message`); err != nil {
		b.Fatal(err)
	}
	sending := end.Sub(first)
	rate, fromStart := float64(n)/sending.Seconds(), float64(n)/elapsed.Seconds()
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(fromStart, "msgs/s_from_start")
	b.ReportMetric(elapsed.Seconds(), "s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/msg")
	pgCPU := "not measured"
	if pg >= 0 {
		b.ReportMetric(float64(pg.Microseconds())/float64(n), "pg-cpu-µs/msg")
		pgCPU = (pg / time.Duration(n)).String()
	}
	b.Logf("%d emails in %s from the first enqueue: %.0f msgs/s (%d connections, concurrency %d, DKIM %s); "+
		"%.0f msgs/s from the worker's start (%s before the first enqueue); CPU a message: %s here, %s in PostgreSQL",
		n, sending.Round(time.Millisecond), rate, cfg.SMTPConnections, cfg.WorkerConcurrency, dkim,
		fromStart, first.Sub(start).Round(time.Millisecond), cpu/time.Duration(n), pgCPU)
}

// processCPU is the CPU time this process (the whole pipeline but
// PostgreSQL and Redis) has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// postgresCPU is the CPU time used so far by the PostgreSQL backends serving
// the database of databaseURL, when they run on this machine (read from
// /proc, where a backend's title names its database); -1 otherwise. The
// machine's benchmarks share one server, so its own counters would mix
// them. Backends that have exited are not counted: the app keeps its pool
// open until the measurement ends.
func postgresCPU(databaseURL string) time.Duration {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return -1
	}
	name := " " + strings.TrimPrefix(u.Path, "/") + " "
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	ticks, found := int64(0), false
	for _, p := range procs {
		cmd, err := os.ReadFile(p)
		if err != nil || !strings.HasPrefix(string(cmd), "postgres:") || !strings.Contains(string(cmd), name) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if err != nil {
			continue
		}
		// The fields after the command name (in parentheses): utime and
		// stime are the 12th and 13th.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks, found = ticks+ut+st, true
	}
	if !found {
		return -1
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ is 100 on Linux
}

func seed(b *testing.B, db *testsvc.DB, query string, args ...any) {
	b.Helper()
	if _, err := db.Exec(query, args...); err != nil {
		b.Fatal(err)
	}
}
