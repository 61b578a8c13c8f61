package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/smtptest"
	"github.com/tendhq/tend/internal/testsvc"
)

// process is a real `tend all` process.
type process struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func startProcess(t *testing.T, bin string, env []string) *process {
	t.Helper()
	cmd := exec.Command(bin, "all")
	cmd.Env = append(os.Environ(), env...)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, out: out}
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *process) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
	}
}

// TestAWorkerKilledMidBatch kills a sending worker with SIGKILL, flushes
// Redis and restarts it. Afterwards every message is sent exactly once, or
// uncertain (at most one per SMTP connection that was handing a message
// over); none is lost.
func TestAWorkerKilledMidBatch(t *testing.T) {
	t.Parallel()
	killMidBatch(t, 2, 2)
}

// TestAWorkerKilledMidRound is TestAWorkerKilledMidBatch with more SMTP
// connections than batches at once: each batch hands several messages over
// per round, and still no more can be uncertain than connections.
func TestAWorkerKilledMidRound(t *testing.T) {
	t.Parallel()
	killMidBatch(t, 6, 2)
}

func killMidBatch(t *testing.T, connections, concurrency int) {
	bin := filepath.Join(t.TempDir(), "tend")
	build := exec.Command("go", "build", "-o", bin, "github.com/tendhq/tend/cmd/tend")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	db := testsvc.NewDB(t)
	rd := testsvc.NewRedis(t)
	sink := smtptest.Start(t)
	// Slow sends, so the kill lands while messages are being handed over.
	sink.SetFault(smtptest.Fault{Kind: smtptest.NoFault, Delay: 40 * time.Millisecond})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	// The shortest lease that outlasts a live worker's hand-over, with a
	// short SMTP timeout (the server is on loopback): the dead worker's
	// messages are reclaimed within a minute.
	const smtpTimeout = 2 * time.Second
	env := []string{
		"TEND_DATABASE_URL=" + db.URL, "TEND_REDIS_URL=" + rd.URL, "TEND_SMTP_URL=" + sink.URL(),
		"TEND_HTTP_ADDR=" + addr, "TEND_PUBLIC_URL=http://" + addr, "TEND_SWEEP_INTERVAL=200ms",
		"TEND_SMTP_TIMEOUT=" + smtpTimeout.String(), "TEND_SEND_LEASE=" + delivery.MinSendLease(smtpTimeout).String(),
		fmt.Sprintf("TEND_SMTP_CONNECTIONS=%d", connections),
		fmt.Sprintf("TEND_WORKER_CONCURRENCY=%d", concurrency), "TEND_LOG_LEVEL=warn",
	}
	_, key, err := apikey.NewStore(db.DB, clock.System{}).Create(context.Background(), "kill-test", apikey.Admin)
	if err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, bin, env)
	api := &tend{t: t, url: "http://" + addr, key: key}
	api.eventually("the process answers", 20*time.Second, func() bool {
		res, err := http.Get(api.url + "/healthz")
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == 200
	})

	const n = 40
	api.call(200, "POST", "/v1/csms", map[string]any{"email": "dana@acme-analytics.example", "name": "Dana Reyes"})
	raise := api.addAccounts(n)
	api.call(201, "POST", "/v1/segments", map[string]any{"name": "at-risk", "predicate": `traits.risk == "high"`})
	api.call(200, "PUT", "/v1/templates/at-risk/checkin", map[string]any{"kind": "email", "source": checkin})
	api.call(201, "POST", "/v1/campaigns", map[string]any{"name": "checkin", "kind": "drip", "segment": "at-risk",
		"steps": []any{map[string]any{"id": "checkin", "wait": "0h", "channel": "email", "template": "at-risk/checkin"}}})
	api.call(200, "POST", "/v1/campaigns/checkin/activate", nil)
	api.eventually("segment built", 20*time.Second, func() bool {
		return api.call(200, "GET", "/v1/segments/at-risk", nil)["status"] == "ready"
	})
	raise()

	// Kill the worker in the middle of sending.
	if !sink.WaitFor(8, 30*time.Second) {
		t.Fatalf("sending did not start:\n%s", p.out)
	}
	p.kill()
	before := sink.Count()
	var inFlight int
	db.Get(&inFlight, `SELECT count(*) FROM message WHERE status = 'claimed'`)
	if before >= n || inFlight == 0 {
		t.Fatalf("the kill came too late to test anything: %d sent, %d in flight", before, inFlight)
	}
	// Redis loses every task.
	rc := redis.NewClient(rd.Opt)
	if err := rc.FlushDB(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	sink.SetFault(smtptest.Fault{})
	startProcess(t, bin, env)

	// Messages whose task Redis lost before any worker took it come back
	// once the sweep's requeue delay (a minute) has passed, and those the
	// dead worker held once their lease has.
	api.eventually("every message settled", 3*time.Minute, func() bool {
		var open int
		db.Get(&open, `SELECT count(*) FROM message WHERE status IN ('scheduled', 'claimed')`)
		return open == 0
	})
	time.Sleep(time.Second) // a few sweeps: nothing more may go out
	uncertain := sentExactlyOnce(t, db, sink, n, connections)
	t.Logf("killed after %d of %d; %d in flight at the kill; %d uncertain; %d received in all", before, n, inFlight, uncertain, sink.Count())
}

// addAccounts creates n accounts of the CSM Dana, at low risk, each with
// one admin contact, and returns a func that raises them all to high risk
// (into the at-risk segment, for a reason of data).
func (tn *tend) addAccounts(n int) (raise func()) {
	tn.t.Helper()
	accounts, contacts := []any{}, []any{}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("acc-%03d", i)
		accounts = append(accounts, map[string]any{"id": id, "csm_email": "dana@acme-analytics.example", "traits": map[string]any{"risk": "low"}})
		contacts = append(contacts, map[string]any{"id": fmt.Sprintf("c-%03d", i), "account_id": id, "email": fmt.Sprintf("c%03d@globex.example", i), "role": "admin"})
	}
	tn.call(200, "POST", "/v1/accounts", map[string]any{"accounts": accounts})
	tn.call(200, "POST", "/v1/contacts", map[string]any{"contacts": contacts})
	return func() {
		tn.t.Helper()
		for i := range accounts {
			accounts[i].(map[string]any)["traits"] = map[string]any{"risk": "high"}
		}
		tn.call(200, "POST", "/v1/accounts", map[string]any{"accounts": accounts})
	}
}

// sentExactlyOnce fails the test unless each of the n messages of step
// "checkin" is sent and held once by the server, or uncertain with a reason and held at most once,
// with no more uncertain than the connections that were handing messages
// over. It returns how many are uncertain.
func sentExactlyOnce(t *testing.T, db *testsvc.DB, sink *smtptest.Server, n, connections int) int {
	t.Helper()
	var rows []struct {
		ID     int64  `db:"id"`
		Status string `db:"status"`
		Reason string `db:"reason"`
	}
	if err := db.Select(&rows, `SELECT id, status, reason FROM message WHERE step_id = 'checkin' ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	if len(rows) != n {
		t.Fatalf("%d messages, want %d", len(rows), n)
	}
	received := map[int64]int{}
	for _, m := range sink.Messages() {
		var id int64
		fmt.Sscanf(m.Header.Get("X-Tend-Message"), "%d", &id)
		received[id]++
	}
	uncertain := 0
	for _, r := range rows {
		switch r.Status {
		case "sent":
			if received[r.ID] != 1 {
				t.Errorf("message %d is sent but the server holds %d copies", r.ID, received[r.ID])
			}
		case "uncertain":
			uncertain++
			if r.Reason == "" || received[r.ID] > 1 {
				t.Errorf("uncertain message %d: reason %q, %d copies", r.ID, r.Reason, received[r.ID])
			}
		default:
			t.Errorf("message %d ended %s (%s)", r.ID, r.Status, r.Reason)
		}
	}
	if uncertain > connections {
		t.Fatalf("%d uncertain messages, more than the %d connections handing messages over", uncertain, connections)
	}
	return uncertain
}

// TestRedisRestartsMidSend kills Redis (SIGKILL, no persistence) while a
// running worker sends, and starts it again empty: the worker carries on
// without a restart of its own, the tasks Redis lost are found again, and
// every message is sent exactly once (or uncertain, at most one per
// connection); none is lost.
func TestRedisRestartsMidSend(t *testing.T) {
	rs := testsvc.StartRedisServer(t)
	// Three send tasks (100 messages each at most), run one at a time: when
	// Redis goes down during the first, the others are lost with it.
	const n, connections = 250, 2
	tn := start(t, map[string]string{"TEND_REDIS_URL": rs.URL, "TEND_SMTP_CONNECTIONS": strconv.Itoa(connections),
		"TEND_WORKER_CONCURRENCY": "1"})
	tn.setup()
	tn.smtp.SetFault(smtptest.Fault{Kind: smtptest.NoFault, Delay: 40 * time.Millisecond})
	tn.addAccounts(n)()

	if !tn.smtp.WaitFor(5, 30*time.Second) {
		t.Fatalf("sending did not start: %d sent", tn.smtp.Count())
	}
	rs.Kill()
	before := tn.smtp.Count()
	time.Sleep(1500 * time.Millisecond) // the worker runs on without Redis a while
	rs.Start()
	tn.smtp.SetFault(smtptest.Fault{})
	if before >= n {
		t.Fatalf("Redis went down too late to test anything: %d of %d sent", before, n)
	}
	// Tasks Redis lost come back once the sweep's requeue delay (a minute)
	// has passed. (The drip's second step waits two days of the test's
	// clock: only the first is sent.)
	tn.eventually("every message settled", 3*time.Minute, func() bool {
		var c struct {
			Open  int `db:"open"`
			Total int `db:"total"`
		}
		tn.db.Get(&c, `SELECT count(*) FILTER (WHERE status IN ('scheduled', 'claimed')) AS open, count(*) AS total
			FROM message WHERE step_id = 'checkin'`)
		return c.Open == 0 && c.Total == n
	})
	time.Sleep(time.Second) // a few sweeps: nothing more may go out
	uncertain := sentExactlyOnce(t, tn.db, tn.smtp, n, connections)
	t.Logf("Redis killed after %d of %d sent; %d uncertain; %d received in all", before, n, uncertain, tn.smtp.Count())
}
