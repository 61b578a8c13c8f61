package app_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/app"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/config"
	"github.com/tendhq/tend/internal/smtptest"
	"github.com/tendhq/tend/internal/testsvc"
)

// tend is a whole Tend process (API, worker, scheduler) on private
// PostgreSQL and Redis databases, sending to an SMTP server on loopback,
// under a manual clock.
type tend struct {
	t     *testing.T
	app   *app.App
	db    *testsvc.DB
	smtp  *smtptest.Server
	clock *clock.Manual
	url   string
	key   string
}

var t0 = time.Date(2026, 6, 15, 9, 0, 0, 0, time.UTC)

// start starts a Tend; env adds to (or overrides) its configuration.
func start(t *testing.T, env ...map[string]string) *tend {
	t.Helper()
	t.Parallel()
	db := testsvc.NewDB(t)
	rd := testsvc.NewRedis(t)
	sink := smtptest.Start(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	environ := map[string]string{
		"TEND_DATABASE_URL":     db.URL,
		"TEND_REDIS_URL":        rd.URL,
		"TEND_SMTP_URL":         sink.URL(),
		"TEND_HTTP_ADDR":        addr,
		"TEND_PUBLIC_URL":       "http://" + addr,
		"TEND_SWEEP_INTERVAL":   "200ms",
		"TEND_POSTAL_ADDRESS":   "Acme Analytics, 10 Market St, Springfield",
		"TEND_TEAM_SENDER":      "Acme Success <success@acme-analytics.example>",
		"TEND_SMTP_CONNECTIONS": "2",
	}
	for _, e := range env {
		maps.Copy(environ, e)
	}
	cfg, err := config.Load(environ)
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewManual(t0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.New(context.Background(), cfg, log, app.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, app.ModeAll) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		a.Close()
	})
	_, key, err := a.Keys.Create(context.Background(), "test", apikey.Admin)
	if err != nil {
		t.Fatal(err)
	}
	tn := &tend{t: t, app: a, db: db, smtp: sink, clock: clk, url: "http://" + addr, key: key}
	tn.eventually("the API answers", 30*time.Second, func() bool {
		res, err := http.Get(tn.url + "/healthz")
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == 200
	})
	return tn
}

// call sends JSON with the admin key and fails the test unless the status is want.
func (tn *tend) call(want int, method, path string, body any) map[string]any {
	tn.t.Helper()
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	req, _ := http.NewRequest(method, tn.url+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+tn.key)
	return tn.send(want, req)
}

// send sends a JSON request and fails the test unless the status is want.
func (tn *tend) send(want int, req *http.Request) map[string]any {
	tn.t.Helper()
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		tn.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		tn.t.Fatalf("%s %s: %d, want %d: %s", req.Method, req.URL.Path, res.StatusCode, want, raw)
	}
	out := map[string]any{}
	json.Unmarshal(raw, &out)
	return out
}

// metrics scrapes /metrics: each sample's value by its name and labels as
// written ("tend_messages_total{outcome=\"sent\"}").
func (tn *tend) metrics() map[string]float64 {
	tn.t.Helper()
	res, err := http.Get(tn.url + "/metrics")
	if err != nil {
		tn.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			tn.t.Fatalf("/metrics: %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func (tn *tend) eventually(what string, within time.Duration, cond func() bool) {
	tn.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	tn.t.Fatalf("%s: not within %s", what, within)
}

// messages returns the contact's messages as "step:status" plus reasons.
func (tn *tend) messages(contact string) []map[string]any {
	tn.t.Helper()
	out := tn.call(200, "GET", "/v1/contacts/"+contact+"/messages", nil)
	var list []map[string]any
	for _, m := range out["messages"].([]any) {
		list = append(list, m.(map[string]any))
	}
	return list
}

func (tn *tend) reason(contact, step string) string {
	for _, m := range tn.messages(contact) {
		if m["step"] == step {
			r, _ := m["reason"].(string)
			return r
		}
	}
	return ""
}

func (tn *tend) status(contact, step string) string {
	for _, m := range tn.messages(contact) {
		if m["step"] == step {
			return m["status"].(string)
		}
	}
	return ""
}

const checkin = `{{define "subject"}}Checking in on {{.Account.Name}}, {{.Contact.FirstName}}{{end}}
{{define "body"}}<p>Hi {{.Contact.FirstName}},</p>
<p>I noticed the team has been quieter in Acme Analytics lately. Is anything getting in the way?
Here is <a href="https://docs.acme-analytics.example/reports">a five-minute guide to reports</a>.</p>{{end}}`

const followup = `{{define "subject"}}Following up, {{.Contact.FirstName}}{{end}}
{{define "body"}}<p>Hi {{.Contact.FirstName}}, just making sure my last note reached you.</p>{{end}}`

const final = `{{define "subject"}}One last thing{{end}}
{{define "body"}}<p>Hi {{.Contact.FirstName}}, I am here whenever you need me.</p>{{end}}`

func (tn *tend) setup() {
	tn.t.Helper()
	tn.call(200, "POST", "/v1/csms", map[string]any{"email": "dana@acme-analytics.example", "name": "Dana Reyes",
		"title": "Customer Success Manager", "phone": "+1 555 0100", "reply_to": "dana.reyes@acme-analytics.example"})
	tn.call(200, "POST", "/v1/accounts", map[string]any{"id": "globex", "name": "Globex", "plan": "pro",
		"csm_email": "dana@acme-analytics.example", "timezone": "America/New_York", "traits": map[string]any{"risk": "low"}})
	tn.call(200, "POST", "/v1/contacts", map[string]any{"contacts": []any{
		map[string]any{"id": "hank", "account_id": "globex", "email": "hank@globex.example", "name": "Hank Scorpio", "role": "admin"},
		map[string]any{"id": "viewer", "account_id": "globex", "email": "viewer@globex.example", "name": "Vic Viewer", "role": "viewer"},
	}})
	tn.call(201, "POST", "/v1/segments", map[string]any{"name": "at-risk", "predicate": `traits.risk == "high"`})
	for name, src := range map[string]string{"at-risk/checkin": checkin, "at-risk/followup": followup, "at-risk/final": final} {
		tn.call(200, "PUT", "/v1/templates/"+name, map[string]any{"kind": "email", "source": src})
	}
	tn.call(201, "POST", "/v1/campaigns", map[string]any{
		"name": "at-risk-checkin", "kind": "drip", "segment": "at-risk", "topic": "success",
		"audience": `contact.role in ["admin", "champion"]`, "sender": "csm", "exit": "leaves_segment",
		"goal": `logins_7d >= 3`,
		"steps": []any{
			map[string]any{"id": "checkin", "wait": "0h", "channel": "email", "template": "at-risk/checkin"},
			map[string]any{"id": "followup", "wait": "2d", "channel": "email", "template": "at-risk/followup", "unless": `opened("checkin")`},
			map[string]any{"id": "final", "wait": "5d", "channel": "email", "template": "at-risk/final"},
		},
	})
	tn.call(200, "POST", "/v1/campaigns/at-risk-checkin/activate", nil)
	tn.eventually("segment built", 30*time.Second, func() bool {
		return tn.call(200, "GET", "/v1/segments/at-risk", nil)["status"] == "ready"
	})
}

func (tn *tend) risk(level string) {
	tn.call(200, "POST", "/v1/accounts", map[string]any{"id": "globex", "traits": map[string]any{"risk": level}})
}

func TestAWholeDrip(t *testing.T) {
	tn := start(t)
	tn.setup()
	tn.call(201, "POST", "/v1/segments", map[string]any{"name": "mailed", "predicate": `emails_30d >= 1`})
	tn.eventually("segment built", 30*time.Second, func() bool {
		return tn.call(200, "GET", "/v1/segments/mailed", nil)["status"] == "ready"
	})
	tn.risk("high")

	// Step one arrives, signed by the CSM, to the audience only.
	if !tn.smtp.WaitFor(1, 30*time.Second) {
		t.Fatalf("no email; messages: %v", tn.messages("hank"))
	}
	m := tn.smtp.Messages()[0]
	h := m.Header
	if got := h.Get("From"); got != `"Dana Reyes" <dana@acme-analytics.example>` {
		t.Errorf("From = %q", got)
	}
	if got := h.Get("Reply-To"); !strings.Contains(got, "dana.reyes@acme-analytics.example") {
		t.Errorf("Reply-To = %q", got)
	}
	if got := h.Get("To"); !strings.Contains(got, "hank@globex.example") || len(m.To) != 1 || m.To[0] != "hank@globex.example" {
		t.Errorf("To = %q (envelope %v)", got, m.To)
	}
	if m.From != "dana@acme-analytics.example" {
		t.Errorf("envelope from %q", m.From)
	}
	if !strings.HasPrefix(h.Get("List-Unsubscribe"), "<"+tn.url+"/u/") || h.Get("List-Unsubscribe-Post") != "List-Unsubscribe=One-Click" {
		t.Errorf("unsubscribe headers: %q / %q", h.Get("List-Unsubscribe"), h.Get("List-Unsubscribe-Post"))
	}
	if !strings.HasPrefix(h.Get("Message-Id"), "<tend.") {
		t.Errorf("Message-ID = %q", h.Get("Message-Id"))
	}
	// Dated by the injected clock, which has not moved since the send.
	if d, err := h.Date(); err != nil || !d.Equal(tn.clock.Now().Truncate(time.Second)) {
		t.Errorf("Date = %q (%v), want %v", h.Get("Date"), err, tn.clock.Now())
	}
	if ua := h.Get("User-Agent") + h.Get("X-Mailer"); ua != "" {
		t.Errorf("the email names its mailer: %q", ua)
	}
	body := string(m.Data)
	for _, want := range []string{"Dana Reyes", "Customer Success Manager", "Acme Analytics, 10 Market St, Springfield", "/t/c/", "/t/o/"} {
		if !strings.Contains(body, want) {
			t.Errorf("the email lacks %q", want)
		}
	}
	if strings.Contains(body, "Checking in on Globex, Hank") == false && !strings.Contains(h.Get("Subject"), "Globex") {
		t.Errorf("subject = %q", h.Get("Subject"))
	}
	if tn.status("viewer", "checkin") != "" {
		t.Error("a contact outside the audience got a message")
	}
	// The email counts in the account's profile at once: it joins the
	// segment of accounts emailed, with no other change to its data.
	tn.eventually("the account is in the segment of accounts emailed", 30*time.Second, func() bool {
		acc := tn.call(200, "GET", "/v1/accounts/globex", nil)
		segs, _ := acc["segments"].([]any)
		return slices.Contains(segs, any("mailed")) && acc["profile"].(map[string]any)["emails_30d"] == 1.0
	})

	// Hank opens step one (a human open: the tracking endpoints come with the
	// engagement work; here the open is recorded directly).
	if _, err := tn.db.Exec(`
		INSERT INTO engagement_event (message_id, kind, at) SELECT id, 'open', $1 FROM message WHERE step_id = 'checkin'`, tn.clock.Now()); err != nil {
		t.Fatal(err)
	}
	// Two days later the follow-up is due, and skipped: unless opened("checkin").
	tn.clock.Advance(2*24*time.Hour + time.Hour)
	tn.eventually("followup skipped by unless", 30*time.Second, func() bool { return tn.status("hank", "followup") == "skipped" })
	if r := tn.reason("hank", "followup"); !strings.HasPrefix(r, "unless held") {
		t.Fatalf("followup skipped because %q, want unless held", r)
	}
	// The final step is scheduled 5 days after the follow-up's due time.
	tn.eventually("final scheduled", 30*time.Second, func() bool { return tn.status("hank", "final") == "scheduled" })

	// The account leaves the segment: the drip exits, the final step is skipped.
	tn.risk("low")
	tn.eventually("drip exits", 30*time.Second, func() bool { return tn.status("hank", "final") == "skipped" })
	if r := tn.reason("hank", "final"); !strings.HasPrefix(r, "exited") {
		t.Fatalf("final skipped because %q, want exited", r)
	}
	tn.clock.Advance(6 * 24 * time.Hour)
	time.Sleep(600 * time.Millisecond) // three sweeps: nothing more may be sent
	if n := tn.smtp.Count(); n != 1 {
		t.Fatalf("%d emails sent, want only step one", n)
	}
	stats := tn.call(200, "GET", "/v1/campaigns/at-risk-checkin/stats", nil)
	totals := stats["totals"].(map[string]any)
	if totals["sent"] != 1.0 || totals["skipped"] != 2.0 {
		t.Fatalf("stats = %v", stats)
	}
	if e := stats["enrollments"].(map[string]any); e["exited"] != 1.0 {
		t.Fatalf("enrollments = %v", e)
	}
	for _, m := range tn.messages("hank") {
		if m["status"] == "skipped" && m["reason"] == "" {
			t.Errorf("a skipped message has no reason: %v", m)
		}
	}
}

func TestGoalConversionAndTestSends(t *testing.T) {
	tn := start(t)
	tn.setup()
	// A test send: marked, delivered to the given address, not counted.
	out := tn.call(202, "POST", "/v1/campaigns/at-risk-checkin/test", map[string]any{"step": "checkin", "contact_id": "hank", "to": "qa@acme-analytics.example"})
	if out["message_id"] == nil {
		t.Fatalf("test send: %v", out)
	}
	if !tn.smtp.WaitFor(1, 30*time.Second) {
		t.Fatal("the test send did not arrive")
	}
	tm := tn.smtp.Messages()[0]
	if !strings.HasPrefix(tm.Header.Get("Subject"), "[TEST]") || tm.Header.Get("X-Tend-Test") != "true" || tm.To[0] != "qa@acme-analytics.example" {
		t.Fatalf("test send headers: %v to %v", tm.Header, tm.To)
	}
	// Preview renders without sending.
	pv := tn.call(200, "POST", "/v1/campaigns/at-risk-checkin/preview", map[string]any{"step": "followup", "contact_id": "hank"})
	if !strings.Contains(pv["subject"].(string), "Hank") || !strings.Contains(pv["from"].(string), "Dana Reyes") {
		t.Fatalf("preview = %v", pv)
	}
	tn.call(404, "POST", "/v1/campaigns/at-risk-checkin/preview", map[string]any{"step": "followup", "contact_id": "nobody"})
	tn.call(422, "POST", "/v1/campaigns/at-risk-checkin/preview", map[string]any{"step": "nope", "contact_id": "hank"})
	tn.call(422, "POST", "/v1/campaigns/at-risk-checkin/test", map[string]any{"step": "checkin", "contact_id": "hank", "to": "not-an-address"})

	tn.risk("high")
	if !tn.smtp.WaitFor(2, 30*time.Second) {
		t.Fatal("step one did not arrive")
	}
	// Logins resume before the follow-up is due: the goal holds when it is due.
	events := []any{}
	for i := 0; i < 3; i++ {
		events = append(events, map[string]any{"account_id": "globex", "name": "login", "timestamp": tn.clock.Now().Add(time.Duration(i) * time.Minute)})
	}
	tn.call(202, "POST", "/v1/events", map[string]any{"events": events})
	tn.clock.Advance(2*24*time.Hour + time.Hour)
	tn.eventually("converted", 30*time.Second, func() bool { return tn.status("hank", "followup") == "skipped" })
	if r := tn.reason("hank", "followup"); !strings.HasPrefix(r, "converted") {
		t.Fatalf("followup skipped because %q, want converted", r)
	}
	stats := tn.call(200, "GET", "/v1/campaigns/at-risk-checkin/stats", nil)
	if e := stats["enrollments"].(map[string]any); e["converted"] != 1.0 {
		t.Fatalf("enrollments = %v", e)
	}
	if totals := stats["totals"].(map[string]any); totals["sent"] != 1.0 {
		t.Fatalf("the test send must not count: %v", totals)
	}
	if n := tn.smtp.Count(); n != 2 {
		t.Fatalf("%d emails, want the test and step one", n)
	}
}

func TestANewVersionNeverResends(t *testing.T) {
	tn := start(t)
	tn.setup()
	tn.risk("high")
	if !tn.smtp.WaitFor(1, 30*time.Second) {
		t.Fatal("step one did not arrive")
	}
	// Edit the running drip: its step templates change; a new version.
	tn.call(200, "PUT", "/v1/templates/at-risk/followup", map[string]any{"kind": "email",
		"source": `{{define "subject"}}New follow-up text{{end}}{{define "body"}}<p>v2</p>{{end}}`})
	c := tn.call(200, "GET", "/v1/campaigns/at-risk-checkin", nil)
	def := c["definition"]
	out := tn.call(200, "POST", "/v1/campaigns", def)
	if out["campaign"].(map[string]any)["version"] != 2.0 {
		t.Fatalf("want version 2: %v", out)
	}
	tn.clock.Advance(2*24*time.Hour + time.Hour)
	if !tn.smtp.WaitFor(2, 30*time.Second) {
		t.Fatalf("the follow-up did not arrive: %v", tn.messages("hank"))
	}
	msgs := tn.smtp.Messages()
	if got := msgs[1].Header.Get("Subject"); !strings.Contains(got, "Following up") {
		t.Fatalf("the running enrollment must finish on version 1's template, got subject %q", got)
	}
	time.Sleep(600 * time.Millisecond)
	n := 0
	for _, m := range msgs {
		if strings.Contains(m.Header.Get("Subject"), "Checking in") {
			n++
		}
	}
	if n != 1 || tn.smtp.Count() != 2 {
		t.Fatalf("step one sent %d times, %d emails in all", n, tn.smtp.Count())
	}
}

// TestSMTPFaults drives every SMTP failure through the pipeline: a 4xx is
// retried and then sent, a 5xx at RCPT fails and suppresses the address, a
// connection dropped before DATA is retried, one dropped after DATA is
// uncertain and not resent; nothing is lost and nothing is sent twice.
func TestSMTPFaults(t *testing.T) {
	tn := start(t)
	tn.setup()
	cases := []struct {
		who    string
		fault  smtptest.Fault
		status string // the first attempt's outcome
		final  string // after the clock passes the retry backoff
		stored int    // how many copies the server holds in the end
	}{
		{"temp", smtptest.Fault{Kind: smtptest.TempFailRcpt, Times: 1}, "scheduled", "sent", 1},
		{"tempdata", smtptest.Fault{Kind: smtptest.TempFailData, Times: 1}, "scheduled", "sent", 1},
		{"bounce", smtptest.Fault{Kind: smtptest.RejectRcpt}, "failed", "failed", 0},
		{"dropbefore", smtptest.Fault{Kind: smtptest.DropAtRcpt, Times: 1}, "scheduled", "sent", 1},
		{"dropafter", smtptest.Fault{Kind: smtptest.DropAfterData, Times: 1}, "uncertain", "uncertain", 1},
	}
	for _, c := range cases {
		acc := "acc-" + c.who
		tn.call(200, "POST", "/v1/accounts", map[string]any{"id": acc, "csm_email": "dana@acme-analytics.example", "traits": map[string]any{"risk": "low"}})
		tn.call(200, "POST", "/v1/contacts", map[string]any{"id": c.who, "account_id": acc, "email": c.who + "@globex.example", "role": "admin"})
		f := c.fault
		f.Match = c.who + "@"
		tn.smtp.SetFault(f)
		tn.call(200, "POST", "/v1/accounts", map[string]any{"id": acc, "traits": map[string]any{"risk": "high"}})
		tn.eventually(c.who+": first attempt recorded", 30*time.Second, func() bool {
			st := tn.status(c.who, "checkin")
			return st == c.status && (st != "scheduled" || strings.HasPrefix(tn.reason(c.who, "checkin"), "retrying"))
		})
		tn.smtp.SetFault(smtptest.Fault{})
	}
	// Past the retry backoff, retried messages go out once.
	tn.clock.Advance(10 * time.Minute)
	for _, c := range cases {
		tn.eventually(c.who+": final outcome", 30*time.Second, func() bool { return tn.status(c.who, "checkin") == c.final })
		if r := tn.reason(c.who, "checkin"); c.final != "sent" && r == "" {
			t.Errorf("%s: %s without a reason", c.who, c.final)
		}
	}
	time.Sleep(600 * time.Millisecond) // three sweeps: nothing more may go out
	copies := map[string]int{}
	for _, m := range tn.smtp.Messages() {
		copies[m.To[0]]++
	}
	for _, c := range cases {
		if got := copies[c.who+"@globex.example"]; got != c.stored {
			t.Errorf("%s: the server holds %d copies, want %d", c.who, got, c.stored)
		}
	}
	var suppressed int
	tn.db.Get(&suppressed, `SELECT count(*) FROM suppression WHERE email = 'bounce@globex.example'`)
	if suppressed != 1 {
		t.Fatal("a hard bounce must suppress the address")
	}
	// The operator sees the uncertain message and may settle it.
	out := tn.call(200, "GET", "/v1/messages?status=uncertain", nil)
	list := out["messages"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["email"] != "dropafter@globex.example" {
		t.Fatalf("uncertain = %v", out)
	}
	// So do the metrics: what this worker settled, and what waits for the
	// operator.
	m := tn.metrics()
	for name, want := range map[string]float64{
		`tend_messages_total{outcome="sent"}`: 3, `tend_messages_total{outcome="retry"}`: 3,
		`tend_messages_total{outcome="failed"}`: 1, `tend_messages_total{outcome="uncertain"}`: 1,
		"tend_outbox_uncertain_messages": 1, "tend_outbox_in_flight_messages": 0, "tend_outbox_oldest_due_seconds": 0,
		"tend_pipeline_up": 1,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("%s = %v (reported: %t), want %v", name, got, ok, want)
		}
	}
	id := list[0].(map[string]any)["id"].(float64)
	tn.call(422, "POST", fmt.Sprintf("/v1/messages/%d/resolve", int64(id)), map[string]any{"action": "shrug"})
	tn.call(200, "POST", fmt.Sprintf("/v1/messages/%d/resolve", int64(id)), map[string]any{"action": "drop"})
	if got := tn.metrics()["tend_outbox_uncertain_messages"]; got != 0 {
		t.Errorf("after the drop, tend_outbox_uncertain_messages = %v", got)
	}
	tn.call(409, "POST", fmt.Sprintf("/v1/messages/%d/resolve", int64(id)), map[string]any{"action": "resend"})
	if st := tn.status("dropafter", "checkin"); st != "failed" {
		t.Fatalf("dropped uncertain message is %s", st)
	}
}

// TestHoldsAndTheSendSwitch: a CSM's hold stops automated mail to an
// account until released; the global switch pauses everything; neither
// loses a message.
func TestHoldsAndTheSendSwitch(t *testing.T) {
	tn := start(t)
	tn.setup()
	out := tn.call(201, "POST", "/v1/accounts/globex/hold", map[string]any{"reason": "renewal call on Friday, handling by hand"})
	if out["reason"] == nil {
		t.Fatalf("hold = %v", out)
	}
	tn.call(422, "POST", "/v1/accounts/globex/hold", map[string]any{"reason": ""})
	tn.call(422, "POST", "/v1/accounts/globex/hold", map[string]any{"reason": "x", "until": tn.clock.Now().Add(-time.Hour)})
	tn.call(404, "POST", "/v1/accounts/nobody/hold", map[string]any{"reason": "x"})
	if acc := tn.call(200, "GET", "/v1/accounts/globex", nil); acc["hold"] == nil {
		t.Fatalf("the account shows its hold: %v", acc)
	}
	tn.risk("high")
	tn.eventually("step one scheduled and held", 30*time.Second, func() bool {
		return tn.status("hank", "checkin") == "scheduled" && tn.reason("hank", "checkin") == "waiting: the account is on hold"
	})
	time.Sleep(600 * time.Millisecond) // three sweeps
	if tn.smtp.Count() != 0 {
		t.Fatal("a held account was mailed")
	}
	// The global switch, then the release: still nothing until sending resumes.
	tn.call(200, "PUT", "/v1/sending", map[string]any{"paused": true, "reason": "incident"})
	tn.call(400, "PUT", "/v1/sending", map[string]any{})
	if r := tn.call(200, "DELETE", "/v1/accounts/globex/hold", nil); r["released"] != 1.0 {
		t.Fatalf("release = %v", r)
	}
	tn.eventually("waiting on the switch", 5*time.Second, func() bool { return tn.reason("hank", "checkin") == "waiting: sending is paused" })
	time.Sleep(600 * time.Millisecond)
	if tn.smtp.Count() != 0 {
		t.Fatal("mail went out while sending was paused")
	}
	tn.call(200, "PUT", "/v1/sending", map[string]any{"paused": false})
	if !tn.smtp.WaitFor(1, 30*time.Second) {
		t.Fatal("nothing was lost: the message goes out once sending resumes")
	}
	tn.eventually("recorded sent", 5*time.Second, func() bool { return tn.status("hank", "checkin") == "sent" })

	// A hold that outlasts the maximum delay (72h) skips what it held back.
	tn.call(200, "POST", "/v1/accounts", map[string]any{"id": "initech", "csm_email": "dana@acme-analytics.example", "traits": map[string]any{"risk": "low"}})
	tn.call(200, "POST", "/v1/contacts", map[string]any{"id": "bill", "account_id": "initech", "email": "bill@initech.example", "role": "admin"})
	tn.call(201, "POST", "/v1/accounts/initech/hold", map[string]any{"reason": "escalation"})
	tn.call(200, "POST", "/v1/accounts", map[string]any{"id": "initech", "traits": map[string]any{"risk": "high"}})
	tn.eventually("held", 30*time.Second, func() bool { return tn.status("bill", "checkin") == "scheduled" })
	tn.clock.Advance(73 * time.Hour)
	tn.eventually("skipped past the maximum delay", 30*time.Second, func() bool { return tn.status("bill", "checkin") == "skipped" })
	if r := tn.reason("bill", "checkin"); !strings.HasPrefix(r, "held") {
		t.Fatalf("reason = %q", r)
	}
}

// newsDrip adds a second drip on the at-risk segment, topic "product".
func (tn *tend) newsDrip() {
	tn.t.Helper()
	tn.call(200, "PUT", "/v1/templates/news/one", map[string]any{"kind": "email", "source": final})
	tn.call(201, "POST", "/v1/campaigns", map[string]any{"name": "news", "kind": "drip", "segment": "at-risk", "topic": "product",
		"steps": []any{map[string]any{"id": "one", "wait": "0h", "channel": "email", "template": "news/one"}}})
	tn.call(200, "POST", "/v1/campaigns/news/activate", nil)
}

// TestFrequencyCaps: caps hold across campaigns and across an account's
// contacts; a capped message moves to the next allowed slot, not away.
func TestFrequencyCaps(t *testing.T) {
	tn := start(t, map[string]string{"TEND_CAP_PER_CONTACT": "2", "TEND_CAP_PER_ACCOUNT": "3", "TEND_MAX_DELAY": "240h"})
	tn.setup()
	tn.call(200, "POST", "/v1/contacts", map[string]any{"id": "ivy", "account_id": "globex", "email": "ivy@globex.example", "name": "Ivy", "role": "admin"})
	tn.newsDrip()
	tn.risk("high")
	// Four messages are due at once (two campaigns × two contacts); the
	// account cap (3) lets three out and moves the fourth.
	tn.eventually("three sent, one capped", 30*time.Second, func() bool {
		sent, capped := 0, 0
		for _, c := range []string{"hank", "ivy"} {
			for _, m := range tn.messages(c) {
				if m["status"] == "sent" {
					sent++
				}
				if r, _ := m["reason"].(string); m["status"] == "scheduled" && strings.HasPrefix(r, "capped: account cap") {
					capped++
				}
			}
		}
		return sent == 3 && capped == 1
	})
	if n := tn.smtp.Count(); n != 3 {
		t.Fatalf("%d emails within the cap window, want 3", n)
	}
	// A week later the capped message goes out.
	tn.clock.Advance(7*24*time.Hour + time.Hour)
	tn.eventually("the capped message is sent in its next slot", 30*time.Second, func() bool {
		for _, c := range []string{"hank", "ivy"} {
			for _, m := range tn.messages(c) {
				if (m["step"] == "one" || m["step"] == "checkin") && m["status"] != "sent" {
					return false
				}
			}
		}
		return true
	})
}

const tipNudge = `title: "Try scheduled reports, {{.Contact.FirstName}}"
body: "Teams like {{.Account.Name}} save an hour a week with them."
cta_label: "Show me"
cta_url: "/reports/new"
`

// TestNudges: in-app steps land in the contact's inbox, leave it when
// clicked or dismissed, expire, and count as engagement.
func TestNudges(t *testing.T) {
	tn := start(t)
	tn.setup()
	tn.call(200, "PUT", "/v1/templates/nudges/tip", map[string]any{"kind": "nudge", "source": tipNudge})
	tn.call(422, "PUT", "/v1/templates/nudges/bad", map[string]any{"kind": "nudge", "source": "title: x\ncolour: red\n"})
	tn.call(201, "POST", "/v1/campaigns", map[string]any{"name": "tips", "kind": "drip", "segment": "at-risk",
		"steps": []any{
			map[string]any{"id": "tip", "wait": "0h", "channel": "in_app", "template": "nudges/tip"},
			map[string]any{"id": "tip2", "wait": "1h", "channel": "in_app", "template": "nudges/tip", "expires": "1d"},
		}})
	tn.call(200, "POST", "/v1/campaigns/tips/activate", nil)
	tn.risk("high")
	inbox := func() []any {
		return tn.call(200, "GET", "/v1/nudges?contact_id=hank", nil)["nudges"].([]any)
	}
	tn.eventually("a nudge in the inbox", 30*time.Second, func() bool { return len(inbox()) == 1 })
	n := inbox()[0].(map[string]any)
	if n["title"] != "Try scheduled reports, Hank" || n["cta_url"] != "/reports/new" || n["campaign"] != "tips" {
		t.Fatalf("nudge = %v", n)
	}
	id := int64(n["id"].(float64))
	tn.call(200, "POST", fmt.Sprintf("/v1/nudges/%d/events", id), map[string]any{"kind": "view"})
	tn.call(200, "POST", fmt.Sprintf("/v1/nudges/%d/events", id), map[string]any{"kind": "view"}) // counted once
	if len(inbox()) != 1 {
		t.Fatal("a viewed nudge stays until clicked, dismissed or expired")
	}
	tn.call(200, "POST", fmt.Sprintf("/v1/nudges/%d/events", id), map[string]any{"kind": "click"})
	if len(inbox()) != 0 {
		t.Fatal("a clicked nudge leaves the inbox")
	}
	tn.call(409, "POST", fmt.Sprintf("/v1/nudges/%d/events", id), map[string]any{"kind": "dismiss"})
	tn.call(422, "POST", fmt.Sprintf("/v1/nudges/%d/events", id), map[string]any{"kind": "poke"})
	tn.call(404, "POST", "/v1/nudges/999999/events", map[string]any{"kind": "view"})
	tn.call(404, "GET", "/v1/nudges?contact_id=nobody", nil)
	tn.call(422, "GET", "/v1/nudges", nil)
	// The second nudge (an hour later) expires after a day.
	tn.clock.Advance(time.Hour + time.Minute)
	tn.eventually("the second nudge", 30*time.Second, func() bool { return len(inbox()) == 1 })
	tn.clock.Advance(25 * time.Hour)
	if len(inbox()) != 0 {
		t.Fatal("an expired nudge leaves the inbox")
	}
	var kinds []string
	tn.db.Select(&kinds, `SELECT kind FROM engagement_event ORDER BY id`)
	if strings.Join(kinds, ",") != "nudge_view,nudge_click" {
		t.Fatalf("engagement = %v", kinds)
	}
	for _, m := range tn.smtp.Messages() {
		if strings.Contains(string(m.Data), "scheduled reports") {
			t.Fatal("in-app steps send no email")
		}
	}
	// A nudge exists exactly when its message is sent.
	var sent, mismatched int
	tn.db.Get(&sent, `SELECT count(*) FROM message WHERE channel = 'in_app' AND status = 'sent'`)
	tn.db.Get(&mismatched, `
		SELECT count(*) FROM message m LEFT JOIN nudge n ON n.message_id = m.id
		WHERE m.channel = 'in_app' AND (m.status = 'sent') <> (n.id IS NOT NULL)`)
	if sent != 4 || mismatched != 0 { // two steps to Hank and to Vic
		t.Fatalf("%d in-app messages sent (want 4), %d without their nudge or with a nudge unsent", sent, mismatched)
	}
}

// TestBroadcastVariants: at send_at each account gets the first variant
// whose segment it is in (never two), each contact once, in their own send
// window; a dry run says who would be reached and changes nothing.
func TestBroadcastVariants(t *testing.T) {
	tn := start(t)
	tn.call(200, "POST", "/v1/accounts", map[string]any{"accounts": []any{
		map[string]any{"id": "both", "plan": "pro", "seats": 10, "timezone": "Europe/Paris"},
		map[string]any{"id": "smb-only", "plan": "free", "seats": 5, "timezone": "America/New_York"},
		map[string]any{"id": "neither", "plan": "free", "seats": 500},
	}})
	tn.call(200, "POST", "/v1/contacts", map[string]any{"contacts": []any{
		map[string]any{"id": "p1", "account_id": "both", "email": "p1@both.example", "name": "Pia"},
		map[string]any{"id": "p2", "account_id": "both", "email": "p2@both.example", "name": "Paul"},
		map[string]any{"id": "n1", "account_id": "smb-only", "email": "n1@smb.example", "name": "Nora"},
		map[string]any{"id": "x1", "account_id": "neither", "email": "x1@neither.example", "name": "Xavi"},
	}})
	// Segments created after the accounts: their builds see every account.
	tn.call(201, "POST", "/v1/segments", map[string]any{"name": "paying", "predicate": `plan == "pro"`})
	tn.call(201, "POST", "/v1/segments", map[string]any{"name": "small", "predicate": `seats < 50`})
	for s, members := range map[string]float64{"paying": 1, "small": 2} {
		tn.eventually("segment "+s+" built", 30*time.Second, func() bool {
			seg := tn.call(200, "GET", "/v1/segments/"+s, nil)
			return seg["status"] == "ready" && seg["members"] == members
		})
	}
	tn.call(200, "PUT", "/v1/templates/releases/pro", map[string]any{"kind": "email", "source": `{{define "subject"}}New for pro teams{{end}}{{define "body"}}<p>SSO is here.</p>{{end}}`})
	tn.call(200, "PUT", "/v1/templates/releases/smb", map[string]any{"kind": "email", "source": `{{define "subject"}}New for small teams{{end}}{{define "body"}}<p>Simpler workflows.</p>{{end}}`})
	sendAt := t0.Add(time.Hour) // Monday 10:00 UTC: 12:00 in Paris, 06:00 in New York
	tn.call(201, "POST", "/v1/campaigns", map[string]any{"name": "release", "kind": "broadcast", "send_at": sendAt,
		"window":   map[string]any{"days": []string{"mon", "tue", "wed", "thu", "fri"}, "from": "09:00", "to": "17:00"},
		"variants": []any{map[string]any{"segment": "paying", "template": "releases/pro"}, map[string]any{"segment": "small", "template": "releases/smb"}}})

	dry := tn.call(200, "POST", "/v1/campaigns/release/activate?dry_run=true", nil)
	if dry["accounts"] != 2.0 || dry["contacts"] != 3.0 {
		t.Fatalf("dry run = %v", dry)
	}
	variants := dry["variants"].([]any)
	if variants[0].(map[string]any)["contacts"] != 2.0 || variants[1].(map[string]any)["contacts"] != 1.0 {
		t.Fatalf("per variant = %v", variants)
	}
	if c := tn.call(200, "GET", "/v1/campaigns/release", nil); c["status"] != "draft" {
		t.Fatalf("a dry run changed the campaign: %v", c)
	}
	var rows int
	tn.db.Get(&rows, `SELECT (SELECT count(*) FROM enrollment) + (SELECT count(*) FROM message)`)
	if rows != 0 {
		t.Fatalf("a dry run wrote %d rows", rows)
	}

	tn.call(200, "POST", "/v1/campaigns/release/activate", nil)
	time.Sleep(500 * time.Millisecond)
	if tn.smtp.Count() != 0 {
		t.Fatal("nothing goes before send_at")
	}
	tn.clock.Set(sendAt)
	if !tn.smtp.WaitFor(2, 30*time.Second) {
		t.Fatalf("the Paris contacts did not get the pro variant: %v", tn.messages("p1"))
	}
	for _, m := range tn.smtp.Messages() {
		if m.Header.Get("Subject") != "New for pro teams" {
			t.Fatalf("an account in both segments gets the first variant only, got %q", m.Header.Get("Subject"))
		}
	}
	n1 := tn.messages("n1")
	if len(n1) != 1 || n1[0]["status"] != "scheduled" || n1[0]["due_at"] != "2026-06-15T13:00:00Z" {
		t.Fatalf("New York gets it at 09:00 local: %v", n1)
	}
	tn.clock.Set(time.Date(2026, 6, 15, 13, 0, 0, 0, time.UTC))
	if !tn.smtp.WaitFor(3, 30*time.Second) {
		t.Fatal("the New York contact did not get the small-team variant")
	}
	time.Sleep(500 * time.Millisecond)
	if tn.smtp.Count() != 3 || len(tn.messages("x1")) != 0 {
		t.Fatalf("%d emails; an account in no segment got %v", tn.smtp.Count(), tn.messages("x1"))
	}
	stats := tn.call(200, "GET", "/v1/campaigns/release/stats", nil)
	steps := stats["steps"].([]any)
	if len(steps) != 2 || steps[0].(map[string]any)["step"] != "variant-paying" {
		t.Fatalf("stats per variant = %v", steps)
	}
}

// TestABrokenBroadcastHoldsUpNothing: a broadcast whose stored definition
// cannot be read (a row written before validation refused it) is reported
// by name, and the other broadcasts still fan out and go.
func TestABrokenBroadcastHoldsUpNothing(t *testing.T) {
	tn := start(t)
	tn.call(200, "POST", "/v1/accounts", map[string]any{"id": "acme", "plan": "pro", "seats": 10})
	tn.call(200, "POST", "/v1/contacts", map[string]any{"contacts": []any{
		map[string]any{"id": "p1", "account_id": "acme", "email": "p1@acme.example", "name": "Pia"},
	}})
	tn.call(201, "POST", "/v1/segments", map[string]any{"name": "paying", "predicate": `plan == "pro"`})
	tn.eventually("segment built", 30*time.Second, func() bool {
		seg := tn.call(200, "GET", "/v1/segments/paying", nil)
		return seg["status"] == "ready" && seg["members"] == 1.0
	})
	tn.call(200, "PUT", "/v1/templates/releases/pro", map[string]any{"kind": "email", "source": `{{define "subject"}}New for pro teams{{end}}{{define "body"}}<p>SSO is here.</p>{{end}}`})
	sendAt := t0.Add(time.Hour)
	for _, name := range []string{"broken", "release"} {
		tn.call(201, "POST", "/v1/campaigns", map[string]any{"name": name, "kind": "broadcast", "send_at": sendAt,
			"variants": []any{map[string]any{"segment": "paying", "template": "releases/pro"}}})
		tn.call(200, "POST", "/v1/campaigns/"+name+"/activate", nil)
	}
	// "broken" was created first: it comes first in every sweep.
	if _, err := tn.db.Exec(`
		UPDATE campaign_version v SET definition = jsonb_set(v.definition, '{send_at}', '"next tuesday"')
		FROM campaign c WHERE c.id = v.campaign_id AND c.name = 'broken'`); err != nil {
		t.Fatal(err)
	}
	_, err := tn.app.Enroller.RunDueBroadcasts(context.Background())
	if err == nil || !strings.Contains(err.Error(), "broadcast broken") || strings.Contains(err.Error(), "release") {
		t.Fatalf("due broadcasts before send_at: error %v, want one naming the broken broadcast only", err)
	}
	tn.clock.Set(sendAt)
	if !tn.smtp.WaitFor(1, 30*time.Second) {
		t.Fatalf("the broadcast after the broken one did not go: %v", tn.messages("p1"))
	}
	time.Sleep(500 * time.Millisecond)
	if n := tn.smtp.Count(); n != 1 {
		t.Fatalf("%d emails, want the one of release", n)
	}
}

// TestCapsPastMaxDelayAndTopics: a message the cap cannot fit within the
// maximum delay is skipped with a reason; unsubscribing from one topic stops
// that topic only.
func TestCapsPastMaxDelayAndTopics(t *testing.T) {
	tn := start(t, map[string]string{"TEND_CAP_PER_CONTACT": "1", "TEND_CAP_PER_ACCOUNT": "0", "TEND_MAX_DELAY": "1h"})
	tn.setup() // at-risk-checkin, topic "success"
	tn.newsDrip()
	tn.risk("high")
	tn.eventually("one sent, one skipped by the cap", 30*time.Second, func() bool {
		sent, skipped := 0, 0
		for _, m := range tn.messages("hank") {
			if m["status"] == "sent" {
				sent++
			}
			if r, _ := m["reason"].(string); m["status"] == "skipped" && strings.HasPrefix(r, "capped:") {
				skipped++
			}
		}
		return sent == 1 && skipped == 1
	})
	// Topics: hank unsubscribes from "success": that topic's follow-up is
	// skipped for it (the product topic's unsubscribe state is untouched).
	var contactID int64
	tn.db.Get(&contactID, `SELECT id FROM contact WHERE external_id = 'hank'`)
	tn.db.Exec(`INSERT INTO contact_unsubscribe (contact_id, topic, at) VALUES ($1, 'success', now())`, contactID)
	tn.clock.Advance(8 * 24 * time.Hour) // past the cap window: the follow-ups are due
	tn.eventually("the success follow-up is skipped for the unsubscribe", 30*time.Second, func() bool {
		r := tn.reason("hank", "followup")
		return tn.status("hank", "followup") == "skipped" && strings.Contains(r, "unsubscribed from topic success")
	})
	var product int
	tn.db.Get(&product, `SELECT count(*) FROM contact_unsubscribe WHERE contact_id = $1 AND topic IN ('product', '*')`, contactID)
	if product != 0 {
		t.Fatal("unsubscribing from one topic touched another")
	}
}

func TestPreviewAndTestOfAnInAppStep(t *testing.T) {
	tn := start(t)
	tn.setup()
	tn.call(200, "PUT", "/v1/templates/nudges/tip", map[string]any{"kind": "nudge", "source": tipNudge})
	tn.call(201, "POST", "/v1/campaigns", map[string]any{"name": "tips", "kind": "drip", "segment": "at-risk",
		"steps": []any{map[string]any{"id": "tip", "wait": "0h", "channel": "in_app", "template": "nudges/tip"}}})
	pv := tn.call(200, "POST", "/v1/campaigns/tips/preview", map[string]any{"step": "tip", "contact_id": "hank"})
	n, _ := pv["nudge"].(map[string]any)
	if n == nil || n["title"] != "Try scheduled reports, Hank" {
		t.Fatalf("preview = %v", pv)
	}
	tn.call(422, "POST", "/v1/campaigns/tips/test", map[string]any{"step": "tip", "contact_id": "hank", "to": "qa@acme-analytics.example"})
}

// signed posts a webhook body with its X-Tend-Signature.
func (tn *tend) signed(want int, path string, body any, secret string) map[string]any {
	tn.t.Helper()
	b, _ := json.Marshal(body)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(b)
	req, _ := http.NewRequest("POST", tn.url+path, bytes.NewReader(b))
	req.Header.Set("X-Tend-Signature", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	return tn.send(want, req)
}

// TestRepliesAndBounces: a reply is matched to its message, recorded once and
// forwarded to the CSM's mailbox; hard bounces suppress; bad signatures are
// refused and change nothing.
func TestRepliesAndBounces(t *testing.T) {
	tn := start(t)
	tn.setup()
	tn.risk("high")
	if !tn.smtp.WaitFor(1, 30*time.Second) {
		t.Fatal("step one did not arrive")
	}
	msgID := tn.smtp.Messages()[0].Header.Get("Message-Id")
	const secret = "tend-development-webhook-secret"
	reply := map[string]any{"to": []string{"dana@acme-analytics.example"}, "from": "Hank Scorpio <hank@globex.example>",
		"subject": "Re: Checking in", "text": "Thanks Dana, can we talk Thursday?", "message_id": "<r1@globex.example>", "in_reply_to": msgID}
	tn.signed(401, "/v1/webhooks/reply", reply, "wrong-secret-0123456789")
	out := tn.signed(200, "/v1/webhooks/reply", reply, secret)
	if out["forwarded_to"] != "dana.reyes@acme-analytics.example" {
		t.Fatalf("reply = %v", out)
	}
	if !tn.smtp.WaitFor(2, 30*time.Second) {
		t.Fatal("the reply was not forwarded to the CSM")
	}
	fw := tn.smtp.Messages()[1]
	if fw.To[0] != "dana.reyes@acme-analytics.example" || !strings.Contains(fw.Header.Get("Reply-To"), "hank@globex.example") ||
		!strings.Contains(string(fw.Data), "can we talk Thursday") {
		t.Fatalf("forwarded: to %v, reply-to %q", fw.To, fw.Header.Get("Reply-To"))
	}
	if out := tn.signed(200, "/v1/webhooks/reply", reply, secret); out["duplicate"] != true {
		t.Fatalf("a repeated webhook is a duplicate: %v", out)
	}
	time.Sleep(300 * time.Millisecond)
	if tn.smtp.Count() != 2 {
		t.Fatal("a duplicate reply was forwarded again")
	}
	unmatched := map[string]any{"to": []string{"someone@acme-analytics.example"}, "from": "x@y.example", "subject": "hi", "text": "?"}
	tn.signed(404, "/v1/webhooks/reply", unmatched, secret)
	prof := tn.call(200, "GET", "/v1/accounts/globex", nil)["profile"].(map[string]any)
	if prof["replies_30d"] != 1.0 {
		t.Fatalf("replies_30d = %v", prof["replies_30d"])
	}

	tn.signed(422, "/v1/webhooks/bounce", map[string]any{"type": "bouncy", "email": "hank@globex.example"}, secret)
	tn.signed(200, "/v1/webhooks/bounce", map[string]any{"bounces": []any{
		map[string]any{"type": "soft", "email": "hank@globex.example", "message_id": msgID, "reason": "mailbox full"},
		map[string]any{"type": "hard", "email": "viewer@globex.example", "reason": "no such user"},
		map[string]any{"type": "complaint", "email": "hank@globex.example", "message_id": msgID, "id": "fbl-1"},
		map[string]any{"type": "complaint", "email": "hank@globex.example", "message_id": msgID, "id": "fbl-1"}, // delivered twice
		map[string]any{"type": "hard", "email": "ghost@globex.example", "message_id": "<tend.999999999@tend.test>"},
	}}, secret)
	var suppressed []string
	tn.db.Select(&suppressed, `SELECT email FROM suppression ORDER BY email`)
	if strings.Join(suppressed, ",") != "ghost@globex.example,hank@globex.example,viewer@globex.example" {
		t.Fatalf("suppressed = %v (hard bounces and complaints suppress, a soft bounce does not)", suppressed)
	}
	// Recorded against the message they name when it is ours, once per
	// provider event id.
	var recorded []string
	tn.db.Select(&recorded, `SELECT kind || ':' || (metadata->>'type') FROM engagement_event WHERE kind IN ('bounce', 'complaint') ORDER BY id`)
	if strings.Join(recorded, ",") != "bounce:soft,complaint:complaint" {
		t.Fatalf("bounce engagement = %v, want the soft bounce and one complaint", recorded)
	}
}

// A worker alone has no API: with TEND_METRICS_ADDR it serves /metrics and
// /healthz there, and stops serving them when it stops.
func TestWorkerMetricsListener(t *testing.T) {
	t.Parallel()
	db, rd, sink := testsvc.NewDB(t), testsvc.NewRedis(t), smtptest.Start(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg, err := config.Load(map[string]string{"TEND_DATABASE_URL": db.URL, "TEND_REDIS_URL": rd.URL, "TEND_SMTP_URL": sink.URL(),
		"TEND_METRICS_ADDR": addr})
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), app.WithClock(clock.NewManual(t0)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, app.ModeWorker) }()
	tn := &tend{t: t, url: "http://" + addr}
	tn.eventually("the worker serves /healthz", 30*time.Second, func() bool {
		res, err := http.Get(tn.url + "/healthz")
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == 200
	})
	m := tn.metrics()
	if m["tend_pipeline_up"] != 1 || m["go_goroutines"] == 0 {
		t.Errorf("worker metrics: tend_pipeline_up %v, go_goroutines %v", m["tend_pipeline_up"], m["go_goroutines"])
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if _, err := http.Get(tn.url + "/healthz"); err == nil {
		t.Error("the metrics listener still answers after the worker stopped")
	}
}

// TestQueueMonitor: the asynq monitor is for admins, and a browser can sign
// in (HTTP Basic, an admin API key as the password).
func TestQueueMonitor(t *testing.T) {
	tn := start(t)
	get := func(user, pass string) *http.Response {
		req, _ := http.NewRequest("GET", tn.url+"/admin/queues", nil)
		if pass != "" {
			req.SetBasicAuth(user, pass)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	if res := get("", ""); res.StatusCode != 401 || !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Basic") {
		t.Fatalf("no key: %d %q", res.StatusCode, res.Header.Get("WWW-Authenticate"))
	}
	if res := get("me", "tend_wrong"); res.StatusCode != 401 {
		t.Fatalf("bad key: %d", res.StatusCode)
	}
	_, marketing, err := tn.app.Keys.Create(context.Background(), "mkt", apikey.Marketing)
	if err != nil {
		t.Fatal(err)
	}
	if res := get("me", marketing); res.StatusCode != 403 {
		t.Fatalf("marketing key: %d", res.StatusCode)
	}
	if res := get("me", tn.key); res.StatusCode != 200 || !strings.Contains(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("admin key: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
}
