package delivery_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/render"
	"github.com/tendhq/tend/internal/smtptest"
	"github.com/tendhq/tend/internal/testsvc"
	"github.com/tendhq/tend/internal/token"
)

// outbox is a sender and its outbox on a database of their own, with one
// active single-step email campaign, sending to an SMTP server on loopback.
type outbox struct {
	t      *testing.T
	db     *testsvc.DB
	clock  *clock.Manual
	smtp   *smtptest.Server
	mailer *delivery.Mailer
	outbox *delivery.Outbox
	sender *delivery.Sender
}

var t0 = time.Date(2026, 6, 15, 9, 0, 0, 0, time.UTC)

const checkin = `{{define "subject"}}Checking in, {{.Contact.FirstName}}{{end}}
{{define "body"}}<p>Hi {{.Contact.FirstName}}, how is {{.Account.Name}} getting on?</p>{{end}}`

// messageOutcome is a message's status and reason.
type messageOutcome struct {
	Status string `db:"status"`
	Reason string `db:"reason"`
}

// outcomes returns every message's status and reason, in id order.
func (o *outbox) outcomes() []messageOutcome {
	o.t.Helper()
	var rows []messageOutcome
	if err := o.db.Select(&rows, `SELECT status, reason FROM message ORDER BY id`); err != nil {
		o.t.Fatal(err)
	}
	return rows
}

func newOutbox(t *testing.T, connections int) *outbox {
	t.Helper()
	t.Parallel()
	ctx := context.Background()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(t0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sink := smtptest.Start(t)
	mailer := newMailer(t, sink.URL(), delivery.MailerOptions{Connections: connections})
	if _, err := db.Exec(`INSERT INTO segment (name, predicate, created_at, updated_at) VALUES ('everyone', 'true', $1, $1)`, t0); err != nil {
		t.Fatal(err)
	}
	store := campaign.NewStore(db.DB, clk, render.Checker{})
	if _, err := store.Apply(ctx, campaign.Bundle{
		Campaigns: []campaign.Definition{{Name: "checkin", Kind: "drip", Segment: "everyone", Sender: "csm",
			Steps: []campaign.Step{{ID: "checkin", Wait: "0h", Channel: "email", Template: "checkin"}}}},
		Templates: []campaign.TemplateInput{{Name: "checkin", Kind: "email", Source: checkin}},
	}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE campaign SET status = 'active', activated_at = $1`, t0); err != nil {
		t.Fatal(err)
	}
	ob := delivery.NewOutbox(db.DB, clk)
	renderer := &render.Renderer{Signer: token.NewSigner([]byte("sender-test-secret-0123456789")), PublicURL: "http://tend.test",
		PostalAddress: "Acme, 1 Main St"}
	sender := delivery.NewSender(db.DB, clk, log, ob, campaign.NewEnroller(db.DB, clk, log, time.UTC), renderer, mailer,
		delivery.SenderOptions{TeamSender: "Acme <success@acme.example>", MessageIDDomain: "tend.test"})
	return &outbox{t: t, db: db, clock: clk, smtp: sink, mailer: mailer, outbox: ob, sender: sender}
}

// due writes n due messages, each to its own contact of one account with a
// CSM, and returns their ids in order.
func (o *outbox) due(n int) []int64 {
	o.t.Helper()
	o.exec(`INSERT INTO csm (email, name, created_at, updated_at) VALUES ('dana@acme.example', 'Dana Reyes', $1, $1)`, t0)
	o.exec(`INSERT INTO account (external_id, name, signup_at, csm_id, created_at, updated_at)
		VALUES ('globex', 'Globex', $1, (SELECT id FROM csm), $1, $1)`, t0)
	o.exec(`INSERT INTO contact (external_id, account_id, email, name, created_at, updated_at)
		SELECT 'c' || i, (SELECT id FROM account), 'c' || i || '@globex.example', 'Person ' || i, $1, $1
		FROM generate_series(1, $2) i`, t0, n)
	o.exec(`INSERT INTO enrollment (campaign_id, version, account_id, entry_number, contacts, status, step, anchor_at, entered_at)
		SELECT id, current_version, (SELECT id FROM account), 1, ARRAY(SELECT id FROM contact ORDER BY id), 'active', 0, $1, $1 FROM campaign`, t0)
	o.exec(`INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, created_at, updated_at)
		SELECT en.id, en.campaign_id, en.version, 'checkin', c, 'email', 'scheduled', $1, $1, $1
		FROM enrollment en, unnest(en.contacts) c`, t0)
	var ids []int64
	if err := o.db.Select(&ids, `SELECT id FROM message ORDER BY id`); err != nil {
		o.t.Fatal(err)
	}
	return ids
}

func (o *outbox) exec(q string, args ...any) {
	o.t.Helper()
	if _, err := o.db.Exec(q, args...); err != nil {
		o.t.Fatal(err)
	}
}

// statuses returns each message's status by its contact's address.
// allSentBut fails the test unless every message is sent, except those
// whose contact's address except names, in the status it gives.
func (o *outbox) allSentBut(except map[string]string) {
	o.t.Helper()
	for email, st := range o.statuses() {
		want := "sent"
		if w, ok := except[email]; ok {
			want = w
		}
		if st != want {
			o.t.Errorf("%s: %s, want %s", email, st, want)
		}
	}
}

func (o *outbox) statuses() map[string]string {
	o.t.Helper()
	var rows []struct {
		Email  string `db:"email"`
		Status string `db:"status"`
	}
	if err := o.db.Select(&rows, `SELECT ct.email, m.status FROM message m JOIN contact ct ON ct.id = m.contact_id`); err != nil {
		o.t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range rows {
		out[r.Email] = r.Status
	}
	return out
}

// A batch goes out in rounds, one message per connection at once. When one
// connection is lost after the end of DATA, only the message it carried is
// uncertain: the others of its round, and of the other rounds, are sent.
func TestARoundWithOneConnectionLostMidData(t *testing.T) {
	o := newOutbox(t, 3)
	ids := o.due(8)
	o.smtp.SetFault(smtptest.Fault{Kind: smtptest.DropAfterData, Match: "c5@"})
	var version0 int64
	o.db.Get(&version0, `SELECT change_version FROM account`)
	sent, err := o.sender.SendBatch(t.Context(), ids)
	if err != nil {
		t.Fatal(err)
	}
	if sent.Delivered != 8 {
		t.Fatalf("handed over %d, want 8", sent.Delivered)
	}
	// The account was emailed: changed once for the batch, and waiting for
	// the segment engine.
	var acc struct {
		ID      int64 `db:"id"`
		Version int64 `db:"change_version"`
		Pending bool  `db:"pending"`
	}
	o.db.Get(&acc, `SELECT id, change_version, EXISTS (SELECT 1 FROM account_pending WHERE account_id = id) AS pending FROM account`)
	if !slices.Equal(sent.Changed, []int64{acc.ID}) || acc.Version != version0+1 || !acc.Pending {
		t.Errorf("changed %v, account %+v (version %d before): want it changed once and pending", sent.Changed, acc, version0)
	}
	o.allSentBut(map[string]string{"c5@globex.example": "uncertain"})
	copies := map[string]int{}
	for _, m := range o.smtp.Messages() {
		copies[m.To[0]]++
	}
	for i := 1; i <= 8; i++ {
		if got := copies[fmt.Sprintf("c%d@globex.example", i)]; got != 1 {
			t.Errorf("c%d: the server holds %d copies, want 1", i, got)
		}
	}
	if got := o.smtp.Connections(); got > 4 {
		t.Errorf("%d connections for 3 at once and one lost", got)
	}
	// The enrollment's step is done: every message is settled.
	var status string
	o.db.Get(&status, `SELECT status FROM enrollment`)
	if status != "completed" {
		t.Errorf("enrollment %s, want completed", status)
	}
}

// A message refused before the end of DATA goes back to scheduled for a
// retry; the rest of its round is sent.
func TestARoundWithOneMessageRefusedBeforeData(t *testing.T) {
	o := newOutbox(t, 4)
	ids := o.due(4)
	o.smtp.SetFault(smtptest.Fault{Kind: smtptest.TempFailRcpt, Match: "c2@"})
	if _, err := o.sender.SendBatch(t.Context(), ids); err != nil {
		t.Fatal(err)
	}
	o.allSentBut(map[string]string{"c2@globex.example": "scheduled"})
	if o.smtp.Count() != 3 {
		t.Fatalf("the server holds %d messages, want 3", o.smtp.Count())
	}
}

// While batches hand messages over, no more of them are marked sending
// than the process has connections: a crash can leave no more uncertain.
func TestSendingNeverExceedsConnections(t *testing.T) {
	const connections = 2
	o := newOutbox(t, connections)
	ids := o.due(12)
	g := startGate(t)
	mailer := newMailer(t, g.url, delivery.MailerOptions{Connections: connections})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	renderer := &render.Renderer{Signer: token.NewSigner([]byte("sender-test-secret-0123456789")), PublicURL: "http://tend.test"}
	sender := delivery.NewSender(o.db.DB, o.clock, log, o.outbox, campaign.NewEnroller(o.db.DB, o.clock, log, time.UTC), renderer, mailer,
		delivery.SenderOptions{TeamSender: "Acme <success@acme.example>", MessageIDDomain: "tend.test"})

	// Every statement that changes messages notes the most it has seen
	// marked sending.
	o.exec(`CREATE TABLE most_sending (n bigint NOT NULL)`)
	o.exec(`INSERT INTO most_sending VALUES (0)`)
	o.exec(`CREATE FUNCTION note_sending() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			UPDATE most_sending SET n = greatest(n, (SELECT count(*) FROM message WHERE status = 'claimed' AND handed_at IS NOT NULL));
			RETURN NULL;
		END $$`)
	o.exec(`CREATE TRIGGER note_sending AFTER UPDATE ON message FOR EACH STATEMENT EXECUTE FUNCTION note_sending()`)

	// Two batches at once, in rounds of two and a last round of one.
	done := make(chan error, 2)
	for _, batch := range [][]int64{ids[:5], ids[5:]} {
		go func() {
			_, err := sender.SendBatch(t.Context(), batch)
			done <- err
		}()
	}
	// Each message is held at the end of DATA until let through; while it
	// is (and the other connection's, when it comes), count the messages
	// marked sending.
	most := 0
	for let, held := 0, 0; let < 12; {
		select {
		case <-g.arrived:
			held++
		case <-time.After(20 * time.Second):
			t.Fatalf("%d messages went through, then none came", let)
		}
		// The other connection's message, if it comes soon.
		select {
		case <-g.arrived:
			held++
		case <-time.After(20 * time.Millisecond):
		}
		var sending int
		o.db.Get(&sending, `SELECT count(*) FROM message WHERE status = 'claimed' AND handed_at IS NOT NULL`)
		most = max(most, sending)
		for ; held > 0; held-- {
			g.pass <- struct{}{}
			let++
		}
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	var noted int
	o.db.Get(&noted, `SELECT n FROM most_sending`)
	if most == 0 || most > connections || noted > connections {
		t.Fatalf("at most %d messages were seen marked sending at once (%d by the statements), want 1 to %d", most, noted, connections)
	}
	o.allSentBut(nil)
	if g.passed.Load() != 12 {
		t.Fatalf("%d messages went through, want 12", g.passed.Load())
	}
}

// gate is an SMTP server on loopback that holds each message at the end of
// DATA, after announcing it on arrived, until it is let through by pass.
type gate struct {
	url     string
	arrived chan struct{}
	pass    chan struct{}
	passed  atomic.Int32
}

func startGate(t *testing.T) *gate {
	t.Helper()
	g := &gate{arrived: make(chan struct{}), pass: make(chan struct{})}
	srv := smtp.NewServer(g)
	srv.Domain = "gate.local"
	srv.ErrorLog = stdlog.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.url = "smtp://" + ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return g
}

func (g *gate) NewSession(*smtp.Conn) (smtp.Session, error) { return gateSession{g}, nil }

type gateSession struct{ g *gate }

func (gateSession) Mail(string, *smtp.MailOptions) error { return nil }
func (gateSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (gateSession) Reset()                               {}
func (gateSession) Logout() error                        { return nil }

func (s gateSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	s.g.arrived <- struct{}{}
	<-s.g.pass
	s.g.passed.Add(1)
	return nil
}

// Hand-overs of concurrent batches are committed together; each gets back
// only its own messages, and only those its token still holds.
func TestConcurrentHandOvers(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(40)
	tokens := make([]string, 4)
	for i := range tokens {
		tokens[i] = delivery.NewToken()
		o.exec(`UPDATE message SET status = 'claimed', claim_token = $1 WHERE id = ANY($2)`, tokens[i], pq.Array(ids[i*10:i*10+10]))
	}
	// One message of the last batch was released and claimed by another
	// worker meanwhile.
	o.exec(`UPDATE message SET claim_token = 'another' WHERE id = $1`, ids[39])
	var wg sync.WaitGroup
	for i, tok := range tokens {
		wg.Go(func() {
			mine := ids[i*10 : i*10+10]
			for r := 0; r < 10; r += 2 {
				var done []delivery.Outcome
				if r > 0 {
					done = []delivery.Outcome{{ID: mine[r-2], Status: "sent"}, {ID: mine[r-1], Status: "sent"}}
				}
				marked, _, err := o.outbox.HandOver(t.Context(), tok, done, mine[r:r+2])
				if err != nil {
					t.Error(err)
					return
				}
				for _, id := range mine[r : r+2] {
					if want := id != ids[39]; marked[id] != want {
						t.Errorf("batch %d: message %d marked %v, want %v", i, id, marked[id], want)
					}
				}
				if len(marked) > 2 {
					t.Errorf("batch %d got back messages not its own: %v", i, marked)
				}
			}
			if _, err := o.outbox.Settle(t.Context(), tok, []delivery.Outcome{{ID: mine[8], Status: "sent"}, {ID: mine[9], Status: "sent"}}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	var rows []struct {
		ID       int64 `db:"id"`
		Status   string
		Attempts int
	}
	if err := o.db.Select(&rows, `SELECT id, status, attempts FROM message ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		want, attempts := "sent", 1
		if r.ID == ids[39] {
			want, attempts = "claimed", 0
		}
		if r.Status != want || r.Attempts != attempts {
			t.Errorf("message %d: %s after %d attempts, want %s after %d", r.ID, r.Status, r.Attempts, want, attempts)
		}
	}
}

// An SMTP server's reply quoted in a reason may be anything; it is stored
// as valid text, and the outcome with it.
func TestOutcomeReasonsAreStoredAsText(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(2)
	tok := delivery.NewToken()
	o.exec(`UPDATE message SET status = 'claimed', claim_token = $1`, tok)
	bad := "550 \xff\xfe no\x00 such user"
	if _, _, err := o.outbox.HandOver(t.Context(), tok, []delivery.Outcome{{ID: ids[0], Status: "failed", Reason: bad}}, ids[1:]); err != nil {
		t.Fatal(err)
	}
	if _, err := o.outbox.Settle(t.Context(), tok, []delivery.Outcome{{ID: ids[1], Status: "uncertain", Reason: bad}}); err != nil {
		t.Fatal(err)
	}
	rows := o.outcomes()
	for i, want := range []string{"failed", "uncertain"} {
		if rows[i].Status != want || rows[i].Reason != "550 \uFFFD no such user" {
			t.Errorf("message %d: %s %q, want %s with the reason made text", ids[i], rows[i].Status, rows[i].Reason, want)
		}
	}
}

// The sweep takes due messages never enqueued, oldest first, then those
// enqueued long enough ago that their task may have been lost; not those
// whose task is presumably still queued.
func TestTakeDue(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(5)
	o.exec(`UPDATE message SET due_at = due_at + (id - $1) * interval '1 second' - interval '1 hour'`, ids[0])
	take := func(limit int, requeueAfter time.Duration) []int64 {
		t.Helper()
		got, err := o.outbox.TakeDue(t.Context(), limit, requeueAfter)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		return got
	}
	if got := take(3, time.Hour); fmt.Sprint(got) != fmt.Sprint(ids[:3]) {
		t.Fatalf("first take: %v, want %v", got, ids[:3])
	}
	if got := take(3, time.Hour); fmt.Sprint(got) != fmt.Sprint(ids[3:]) {
		t.Fatalf("second take: %v, want %v", got, ids[3:])
	}
	if got := take(3, time.Hour); len(got) != 0 {
		t.Fatalf("every task is presumably queued, yet %v were taken again", got)
	}
	// A message released meanwhile is taken before those whose task is lost.
	o.exec(`UPDATE message SET enqueued_at = NULL WHERE id = $1`, ids[4])
	if got := take(2, -time.Second); len(got) != 2 || !slices.Contains(got, ids[4]) {
		t.Fatalf("take with lost tasks: %v, want %d and one more", got, ids[4])
	}
	if got := take(10, -time.Second); len(got) != 5 {
		t.Fatalf("every task lost: took %v, want all 5", got)
	}
}

// The outbox's gauges: how late the oldest sendable message is (messages
// held back by a hold do not count), and what is in flight or uncertain.
func TestOutboxGauges(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(3)
	gauges := func() delivery.Gauges {
		t.Helper()
		g, err := o.outbox.Gauges(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	if g := gauges(); g != (delivery.Gauges{}) {
		t.Errorf("due just now: %+v, want nothing late", g)
	}
	o.clock.Advance(10 * time.Minute)
	if g := gauges(); g.OldestDue != 10*time.Minute {
		t.Errorf("10 minutes later: oldest due %s, want 10m", g.OldestDue)
	}
	o.exec(`INSERT INTO account_hold (account_id, reason, created_by, created_at) SELECT id, 'renewal talks', 'dana', $1 FROM account`, t0)
	if g := gauges(); g.OldestDue != 0 {
		t.Errorf("on hold: oldest due %s, want 0 (held back on purpose)", g.OldestDue)
	}
	o.exec(`UPDATE account_hold SET released_at = $1`, t0)
	o.exec(`UPDATE message SET status = 'claimed', claim_token = 'x', claimed_at = now(), handed_at = now() WHERE id = $1`, ids[0])
	o.exec(`UPDATE message SET status = 'uncertain' WHERE id = $1`, ids[1])
	if g := gauges(); g != (delivery.Gauges{OldestDue: 10 * time.Minute, InFlight: 1, Uncertain: 1}) {
		t.Errorf("one sending, one uncertain, one due: %+v", g)
	}
}

// A goal that fails at run time (here a trait of the wrong type) decides
// nothing: the message is skipped with the error, as one whose unless
// fails is, and the enrollment is not converted.
func TestAGoalThatFailsSendsNothing(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(2)
	o.exec(`UPDATE account SET traits = '{"tier": "gold"}'`)
	o.exec(`UPDATE campaign_version SET definition = jsonb_set(definition, '{goal}', '"traits.tier > 3"')`)
	if _, err := o.sender.SendBatch(t.Context(), ids); err != nil {
		t.Fatal(err)
	}
	rows := o.outcomes()
	for i, r := range rows {
		if r.Status != "skipped" || !strings.HasPrefix(r.Reason, "goal could not be evaluated: ") {
			t.Errorf("message %d: %s (%q), want skipped because the goal could not be evaluated", ids[i], r.Status, r.Reason)
		}
	}
	if o.smtp.Count() != 0 {
		t.Errorf("the server holds %d messages, want none", o.smtp.Count())
	}
	var status string
	o.db.Get(&status, `SELECT status FROM enrollment`)
	if status == "converted" {
		t.Errorf("enrollment %s, want not converted", status)
	}
}

// withLog returns a sender like o's whose log is kept in a buffer.
func (o *outbox) withLog() (*delivery.Sender, *syncBuffer) {
	o.t.Helper()
	buf := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(buf, nil))
	renderer := &render.Renderer{Signer: token.NewSigner([]byte("sender-test-secret-0123456789")), PublicURL: "http://tend.test",
		PostalAddress: "Acme, 1 Main St"}
	return delivery.NewSender(o.db.DB, o.clock, log, o.outbox, campaign.NewEnroller(o.db.DB, o.clock, log, time.UTC), renderer, o.mailer,
		delivery.SenderOptions{TeamSender: "Acme <success@acme.example>", MessageIDDomain: "tend.test"}), buf
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// messages returns each message's status and reason, in id order.
func (o *outbox) messages() []string {
	o.t.Helper()
	var out []string
	if err := o.db.Select(&out, `SELECT status || ': ' || reason FROM message ORDER BY id`); err != nil {
		o.t.Fatal(err)
	}
	return out
}

// The server's answer is recorded even when what it calls for cannot be
// done: a hard bounce whose address cannot be suppressed is failed, and a
// temporary refusal whose retry cannot be written is failed with the
// server's answer. Neither is left sending, for the reaper to call
// uncertain and perhaps delivered.
func TestARefusalIsRecordedWhenItsSideEffectFails(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fault   smtptest.FaultKind
		trigger string // makes the side effect fail
		want    string
	}{
		{"hard bounce, suppression fails", smtptest.RejectRcpt,
			`CREATE TRIGGER refuse BEFORE INSERT ON suppression FOR EACH ROW EXECUTE FUNCTION refuse()`,
			"failed: hard bounce: "},
		{"temporary refusal, retry fails", smtptest.TempFailRcpt,
			`CREATE TRIGGER refuse BEFORE UPDATE ON message FOR EACH ROW WHEN (NEW.status = 'scheduled') EXECUTE FUNCTION refuse()`,
			"failed: temporary failure, not retried (the retry could not be scheduled): "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOutbox(t, 1)
			ids := o.due(2)
			o.exec(`CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$`)
			o.exec(tc.trigger)
			o.smtp.SetFault(smtptest.Fault{Kind: tc.fault, Match: "c1@"})
			sender, log := o.withLog()
			if _, err := sender.SendBatch(t.Context(), ids); err != nil {
				t.Fatal(err)
			}
			got := o.messages()
			if !strings.HasPrefix(got[0], tc.want) || !strings.Contains(got[0], "RCPT") || got[1] != "sent: " {
				t.Errorf("messages: %q, want the first %s with the server's answer and the second sent", got, tc.want)
			}
			if !strings.Contains(log.String(), "refused by the test") {
				t.Errorf("the side effect's failure is not logged:\n%s", log)
			}
		})
	}
}

// A round's refusals cost one statement of each kind, however many
// messages the server refused: the retries of those refused for now are
// written together, and so are the suppressions of hard-bounced addresses.
func TestARoundsRefusalsAreWrittenTogether(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault smtptest.FaultKind
		table string // where the side effect is written
		want  string // each message's status and reason, after the prefix
	}{
		{"temporary refusals", smtptest.TempFailRcpt, "message", "scheduled: retrying: "},
		{"hard bounces", smtptest.RejectRcpt, "suppression", "failed: hard bounce: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOutbox(t, 4)
			ids := o.due(4) // one round: a connection each
			// Counts the statements that write the side effect: those whose
			// rows carry a retry's or a bounce's reason.
			o.exec(`CREATE TABLE statements (n integer NOT NULL)`)
			o.exec(`INSERT INTO statements VALUES (0)`)
			o.exec(`CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN
					IF EXISTS (SELECT 1 FROM written WHERE reason LIKE 'retrying: %' OR reason LIKE 'hard bounce: %') THEN
						UPDATE statements SET n = n + 1;
					END IF;
					RETURN NULL;
				END $$`)
			event := "INSERT"
			if tc.table == "message" {
				event = "UPDATE"
			}
			o.exec(`CREATE TRIGGER count_statement AFTER ` + event + ` ON ` + tc.table +
				` REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION count_statement()`)
			o.smtp.SetFault(smtptest.Fault{Kind: tc.fault})
			if _, err := o.sender.SendBatch(t.Context(), ids); err != nil {
				t.Fatal(err)
			}
			for i, got := range o.messages() {
				if !strings.HasPrefix(got, tc.want) || !strings.Contains(got, "RCPT") {
					t.Errorf("message %d: %q, want %s with the server's answer", i+1, got, tc.want)
				}
			}
			var n, suppressed int
			if err := o.db.Get(&n, `SELECT n FROM statements`); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Errorf("%d statements wrote the side effects of 4 refusals, want 1", n)
			}
			if err := o.db.Get(&suppressed, `SELECT count(*) FROM suppression`); err != nil {
				t.Fatal(err)
			}
			if want := map[string]int{"message": 0, "suppression": 4}[tc.table]; suppressed != want {
				t.Errorf("%d addresses suppressed, want %d", suppressed, want)
			}
		})
	}
}

// A hand-over that fails, then a withdrawal that fails too: nothing is
// sent, and the log says so, rather than that the reaper reclaims messages
// it may call uncertain.
func TestAFailedHandOverThatCannotBeWithdrawnIsLoggedTruthfully(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(2)
	o.exec(`CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$`)
	o.exec(`CREATE TRIGGER refuse BEFORE UPDATE ON message FOR EACH ROW WHEN (NEW.handed_at IS NOT NULL OR NEW.status = 'scheduled') EXECUTE FUNCTION refuse()`)
	sender, log := o.withLog()
	if _, err := sender.SendBatch(t.Context(), ids); err == nil {
		t.Fatal("the batch succeeded, want the hand-over's error")
	}
	if o.smtp.Count() != 0 {
		t.Fatalf("the server holds %d messages, want none", o.smtp.Count())
	}
	want := fmt.Sprintf("none was handed to SMTP: when their lease ends the reaper releases those still claimed, "+
		"and makes uncertain any the hand-over did mark sending, which are safe to resend (POST /v1/messages/{id}/resolve {\\\"action\\\": \\\"resend\\\"})\" messages=\"%v\"", ids)
	if !strings.Contains(log.String(), want) {
		t.Fatalf("log:\n%s\nwant it to say: %s", log, want)
	}
}

// An outcome whose message the reaper took meanwhile (its lease ended) is
// not recorded over what the reaper wrote; HandOver and Settle return it,
// so that the worker can say what became of the message.
func TestOutcomesOfReapedMessagesAreReturned(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(3)
	tok := delivery.NewToken()
	o.exec(`UPDATE message SET status = 'claimed', claim_token = $1, claimed_at = now()`, tok)
	if _, _, err := o.outbox.HandOver(t.Context(), tok, nil, ids); err != nil {
		t.Fatal(err)
	}
	// The first two outlive their lease while being handed over.
	o.exec(`UPDATE message SET claimed_at = claimed_at - interval '1 hour', handed_at = handed_at - interval '1 hour'
		WHERE id = ANY($1)`, pq.Array(ids[:2]))
	if _, uncertain, err := o.outbox.Reap(t.Context(), time.Minute); err != nil || uncertain != 2 {
		t.Fatalf("reaped %d uncertain (%v), want 2", uncertain, err)
	}
	_, lost, err := o.outbox.HandOver(t.Context(), tok, []delivery.Outcome{{ID: ids[0], Status: "sent"}, {ID: ids[2], Status: "sent"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []delivery.Outcome{{ID: ids[0], Status: "sent"}}; !slices.Equal(lost, want) {
		t.Errorf("hand-over: not recorded %v, want %v", lost, want)
	}
	lost, err = o.outbox.Settle(t.Context(), tok, []delivery.Outcome{{ID: ids[1], Status: "failed", Reason: "550 no such user"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []delivery.Outcome{{ID: ids[1], Status: "failed", Reason: "550 no such user"}}; !slices.Equal(lost, want) {
		t.Errorf("settle: not recorded %v, want %v", lost, want)
	}
	if got := fmt.Sprint(o.messages()); !strings.HasPrefix(got, "[uncertain: no outcome was recorded within the lease") || !strings.HasSuffix(got, " sent: ]") {
		t.Errorf("messages: %s, want the reaped ones uncertain and the last sent", got)
	}
}

// A send that outlasts its lease (here the server holds the message at the
// end of DATA while the reaper runs) finds its message uncertain: the
// worker logs what became of it.
func TestASendThatOutlastedItsLeaseIsLogged(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(1)
	g := startGate(t)
	o.mailer = newMailer(t, g.url, delivery.MailerOptions{Connections: 1})
	sender, log := o.withLog()
	done := make(chan error, 1)
	go func() {
		_, err := sender.SendBatch(t.Context(), ids)
		done <- err
	}()
	select {
	case <-g.arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("the message did not reach the server")
	}
	o.exec(`UPDATE message SET claimed_at = claimed_at - interval '1 hour', handed_at = handed_at - interval '1 hour'`)
	if _, uncertain, err := o.outbox.Reap(t.Context(), time.Minute); err != nil || uncertain != 1 {
		t.Fatalf("reaped %d uncertain (%v), want 1", uncertain, err)
	}
	g.pass <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := o.messages(); len(got) != 1 || !strings.HasPrefix(got[0], "uncertain: ") {
		t.Fatalf("messages %q, want it left uncertain", got)
	}
	want := fmt.Sprintf("level=WARN msg=\"delivery: an outcome could not be recorded: the lease on its message had ended and the reaper had taken it "+
		"(released it, or made it uncertain if it was being handed to SMTP)\" message=%d outcome=sent", ids[0])
	if !strings.Contains(log.String(), want) {
		t.Fatalf("log:\n%s\nwant: %s", log, want)
	}
}

// A message being handed over is stored claimed, with when its hand-over
// began, and people see it as sending: listed under sending, not claimed;
// never released as if it had not reached SMTP; made uncertain once its
// lease, counted from the hand-over, ends.
func TestAMessageBeingHandedOverIsSending(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(3)
	ctx := t.Context()
	tok := delivery.NewToken()
	o.exec(`UPDATE message SET status = 'claimed', claim_token = $1, claimed_at = now() - interval '10 minutes'`, tok)
	marked, _, err := o.outbox.HandOver(ctx, tok, nil, ids[:1])
	if err != nil || !marked[ids[0]] {
		t.Fatalf("hand-over marked %v (%v), want %d", marked, err, ids[0])
	}
	listed := func(status string) []string {
		t.Helper()
		views, err := o.outbox.ByStatus(ctx, status, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range views {
			out = append(out, fmt.Sprintf("%d %s", v.ID, v.Status))
		}
		return out
	}
	if got, want := listed("sending"), []string{fmt.Sprintf("%d sending", ids[0])}; !slices.Equal(got, want) {
		t.Errorf("sending: %v, want %v", got, want)
	}
	if got, want := listed("claimed"), []string{fmt.Sprintf("%d claimed", ids[1]), fmt.Sprintf("%d claimed", ids[2])}; !slices.Equal(got, want) {
		t.Errorf("claimed: %v, want %v", got, want)
	}
	// A release (of messages never handed over) leaves it alone.
	if err := o.outbox.Release(ctx, ids[:2], tok); err != nil {
		t.Fatal(err)
	}
	// Claimed ten minutes ago, handed over just now: under a five-minute
	// lease the reaper releases the last one, and leaves the one sending.
	released, uncertain, err := o.outbox.Reap(ctx, 5*time.Minute)
	if err != nil || released != 1 || uncertain != 0 {
		t.Fatalf("reaped %d released, %d uncertain (%v), want 1 and 0", released, uncertain, err)
	}
	var stored []string
	if err := o.db.Select(&stored, `SELECT status || ' ' || (handed_at IS NOT NULL) FROM message ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	if want := []string{"claimed true", "scheduled false", "scheduled false"}; !slices.Equal(stored, want) {
		t.Errorf("stored (status, handed over): %v, want %v", stored, want)
	}
	o.exec(`UPDATE message SET handed_at = handed_at - interval '10 minutes' WHERE id = $1`, ids[0])
	if _, uncertain, err := o.outbox.Reap(ctx, 5*time.Minute); err != nil || uncertain != 1 {
		t.Fatalf("reaped %d uncertain (%v), want 1", uncertain, err)
	}
	// A hand-over as a version before migration 00023 wrote it (status
	// sending, claimed_at restarted), its lease ended: uncertain too.
	o.exec(`UPDATE message SET status = 'sending', claim_token = 'old', claimed_at = now() - interval '10 minutes' WHERE id = $1`, ids[1])
	if released, uncertain, err := o.outbox.Reap(ctx, 5*time.Minute); err != nil || released != 0 || uncertain != 1 {
		t.Fatalf("reaped %d released, %d uncertain (%v), want the old hand-over uncertain", released, uncertain, err)
	}
	if got, want := listed("uncertain"), []string{fmt.Sprintf("%d uncertain", ids[0]), fmt.Sprintf("%d uncertain", ids[1])}; !slices.Equal(got, want) {
		t.Errorf("uncertain: %v, want %v", got, want)
	}
}

// The hand-over's mark, in the commit every round waits for, writes
// handed_at, attempts and updated_at: no index of message may read them,
// or PostgreSQL can no longer make the mark in place (migration 00023).
func TestNoIndexReadsWhatAHandOverWrites(t *testing.T) {
	db := testsvc.NewDB(t)
	var defs []string
	if err := db.Select(&defs, `SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'message'::regclass`); err != nil {
		t.Fatal(err)
	}
	if len(defs) < 5 {
		t.Fatalf("message has %d indexes, want its usual ones: %v", len(defs), defs)
	}
	for _, d := range defs {
		for _, col := range []string{"handed_at", "attempts", "updated_at"} {
			if strings.Contains(d, col) {
				t.Errorf("index reads %s: %s", col, d)
			}
		}
	}
}

// A version before migration 00023 does not know handed_at: its reaper
// would release a message this version handed over, to be sent again.
// The guard of migration 00024 makes it uncertain instead.
func TestAnEarlierReaperCannotReleaseAHandOver(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(2)
	tok := delivery.NewToken()
	o.exec(`UPDATE message SET status = 'claimed', claim_token = $1, claimed_at = now() - interval '1 hour'`, tok)
	if _, _, err := o.outbox.HandOver(t.Context(), tok, nil, ids[:1]); err != nil {
		t.Fatal(err)
	}
	// The earlier reaper's release, as it was written.
	o.exec(`UPDATE message SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL, updated_at = now()
		WHERE status = 'claimed' AND claimed_at < now() - interval '5 minutes'`)
	var got []string
	if err := o.db.Select(&got, `SELECT status || ' ' || (claim_token IS NOT NULL) FROM message ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	if want := []string{"uncertain true", "scheduled false"}; !slices.Equal(got, want) {
		t.Errorf("after an earlier version's reaper (status, claimed): %v, want the one handed over uncertain, the other released", got)
	}
}
