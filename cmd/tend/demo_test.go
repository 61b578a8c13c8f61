package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/smtptest"
	"github.com/tendhq/tend/internal/testsvc"
)

// demoRun is the real binary, built from this package, run as `make run`
// runs it against private PostgreSQL and Redis databases and an SMTP server on
// loopback.
type demoRun struct {
	t   *testing.T
	bin string
	env []string
	url string
	key string
	log *syncBuffer
}

// syncBuffer is the process's output, written by exec's copier while the
// test may read it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tend runs one command of the binary and returns its stdout.
func (d *demoRun) tend(args ...string) string {
	d.t.Helper()
	cmd := exec.Command(d.bin, args...)
	cmd.Env = d.env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		d.t.Fatalf("tend %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

func (d *demoRun) get(path string, into any) {
	d.t.Helper()
	req, _ := http.NewRequest("GET", d.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+d.key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		d.t.Fatalf("GET %s: %d %s", path, res.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, into); err != nil {
		d.t.Fatalf("GET %s: %v", path, err)
	}
}

func (d *demoRun) eventually(what string, within time.Duration, cond func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	d.t.Fatalf("%s: not within %s; the process said:\n%s", what, within, tail(d.log.String(), 40))
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

// TestTheDemo does what `make run` does — migrate, seed a (small) demo, apply
// and activate the example campaigns, start `tend all` on the shared demo
// clock — and checks what a newcomer is promised: CSM-signed emails from at
// least three example campaigns in the sink, nudges pending after a
// fast-forward, and a health summary of the seeded accounts.
func TestTheDemo(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	rd := testsvc.NewRedis(t)
	sink := smtptest.Start(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "tend")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	d := &demoRun{t: t, bin: bin, url: "http://" + addr, log: &syncBuffer{}}
	d.env = append(os.Environ(),
		"TEND_DATABASE_URL="+db.URL, "TEND_REDIS_URL="+rd.URL, "TEND_SMTP_URL="+sink.URL(),
		"TEND_HTTP_ADDR="+addr, "TEND_PUBLIC_URL="+d.url, "TEND_DEMO_CLOCK=true",
		"TEND_SWEEP_INTERVAL=200ms", "TEND_LOG_LEVEL=info")

	d.tend("migrate")
	if out := d.tend("seed", "--demo", "--accounts", "60"); !strings.Contains(out, "accounts") {
		t.Fatalf("seed said %q", out)
	}
	d.tend("campaigns", "apply", "../../campaigns", "--activate")
	d.key = strings.TrimSpace(d.tend("keys", "create", "--name", "demo", "--role", "admin"))

	ctx, cancel := context.WithCancel(context.Background())
	all := exec.CommandContext(ctx, bin, "all")
	all.Env, all.Stdout, all.Stderr = d.env, d.log, d.log
	all.Cancel = func() error { return all.Process.Signal(syscall.SIGTERM) }
	all.WaitDelay = 20 * time.Second
	if err := all.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		// Wait reports the cancelled context; the exit status is what counts.
		if err := all.Wait(); all.ProcessState == nil || all.ProcessState.ExitCode() != 0 {
			t.Errorf("tend all did not stop cleanly on SIGTERM: %v\n%s", err, tail(d.log.String(), 20))
		}
	})
	d.eventually("the API answers", 60*time.Second, func() bool {
		res, err := http.Get(d.url + "/readyz")
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == 200
	})

	// CSM-signed email from at least three example campaigns. Each email
	// names its outbox row (X-Tend-Message); the row names the campaign.
	var csms []string
	if err := db.Select(&csms, `SELECT email FROM csm`); err != nil || len(csms) == 0 {
		t.Fatalf("csms %v: %v", csms, err)
	}
	signedBy := func(from string) bool {
		for _, c := range csms {
			if strings.Contains(from, "<"+c+">") {
				return true
			}
		}
		return false
	}
	var campaigns []string
	d.eventually("CSM-signed email from three example campaigns", 120*time.Second, func() bool {
		var ids []int64
		for _, m := range sink.Messages() {
			var id int64
			if _, err := fmt.Sscan(m.Header.Get("X-Tend-Message"), &id); err == nil && signedBy(m.Header.Get("From")) {
				ids = append(ids, id)
			}
		}
		campaigns = nil
		if err := db.Select(&campaigns, `SELECT DISTINCT c.name FROM message m JOIN campaign c ON c.id = m.campaign_id
			WHERE m.id = ANY($1) ORDER BY 1`, pq.Array(ids)); err != nil {
			t.Fatal(err)
		}
		return len(campaigns) >= 3
	})
	t.Logf("CSM-signed email from %v (%d emails in the sink)", campaigns, sink.Count())

	// The release broadcast waits for its variants' segments to be built,
	// then reaches every admin of an SMB or enterprise account.
	var admins int
	if err := db.Get(&admins, `SELECT count(*) FROM contact ct JOIN account a ON a.id = ct.account_id
		WHERE ct.role = 'admin' AND a.tier IN ('smb', 'enterprise')`); err != nil || admins == 0 {
		t.Fatalf("%d admins in smb and enterprise accounts (%v)", admins, err)
	}
	d.eventually("the release announced to every smb and enterprise admin", 60*time.Second, func() bool {
		var n int
		db.Get(&n, `SELECT count(*) FROM message m JOIN campaign c ON c.id = m.campaign_id WHERE c.name = 'release-2026-12'`)
		return n == admins
	})

	// The seeded accounts are scored: the summary shows every persona's band.
	var sum struct {
		Accounts, Unscored int
		Bands              map[string]struct{ Accounts int }
		Distribution       []struct{ Accounts int }
		Change30d          struct {
			ScoredThen int `json:"scored_then"`
			Declined   int
		} `json:"change_30d"`
	}
	d.eventually("every seeded account scored", 60*time.Second, func() bool {
		d.get("/v1/health/summary", &sum)
		return sum.Accounts == 60 && sum.Unscored == 0
	})
	n := 0
	for _, b := range sum.Distribution {
		n += b.Accounts
	}
	if n != 60 || sum.Bands["at_risk"].Accounts == 0 || sum.Bands["healthy"].Accounts+sum.Bands["advocate"].Accounts == 0 {
		t.Fatalf("the seeded distribution: %+v", sum)
	}
	// The seed backfills the history, so the 30-day change shows the
	// disengaging accounts' decline on the first day.
	if sum.Change30d.ScoredThen == 0 || sum.Change30d.Declined == 0 {
		t.Fatalf("the change over 30 days: %+v", sum.Change30d)
	}

	// Fast-forward two days: the onboarding drip's in-app step comes due,
	// and nudges wait in contacts' inboxes.
	if out := d.tend("clock", "advance", "2d"); !strings.Contains(out, "offset 48h") {
		t.Fatalf("clock advance said %q", out)
	}
	var contact string
	d.eventually("nudges pending", 60*time.Second, func() bool {
		err := db.Get(&contact, `SELECT ct.external_id FROM nudge n JOIN message m ON m.id = n.message_id
			JOIN contact ct ON ct.id = m.contact_id WHERE n.status = 'pending' ORDER BY n.id LIMIT 1`)
		return err == nil
	})
	var inbox struct {
		Nudges []struct{ Title, Status string }
	}
	d.get("/v1/nudges?contact_id="+contact, &inbox)
	if len(inbox.Nudges) == 0 || inbox.Nudges[0].Title == "" {
		t.Fatalf("the nudge inbox of %s: %+v", contact, inbox)
	}
}
