package jobs_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/jobs"
	"github.com/tendhq/tend/internal/render"
	"github.com/tendhq/tend/internal/smtptest"
	"github.com/tendhq/tend/internal/testsvc"
	"github.com/tendhq/tend/internal/token"
)

// dripRig is the sending side of the pipeline on its own database, Redis
// database and loopback SMTP server, driven by hand: an active two-step
// drip ("one" at once, "two" two days later) with one account of two
// contacts enrolled, and the scheduler's delivery sweep and stalled-drip
// pass, run when the test says.
type dripRig struct {
	t        *testing.T
	db       *testsvc.DB
	clock    *clock.Manual
	smtp     *smtptest.Server
	outbox   *delivery.Outbox
	sender   *delivery.Sender
	enroller *campaign.Enroller
	sweep    *jobs.DeliverySweep
	stalled  *jobs.StalledDrips
}

const maxDelay = 72 * time.Hour

func newDripRig(t *testing.T) *dripRig {
	t.Helper()
	t.Parallel()
	ctx := context.Background()
	db := testsvc.NewDB(t)
	rd := testsvc.NewRedis(t)
	clk := clock.NewManual(t0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sink := smtptest.Start(t)
	mailer, err := delivery.NewMailer(sink.URL(), delivery.MailerOptions{Connections: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mailer.Close() })
	client := jobs.NewClient(asynq.RedisClientOpt{Addr: rd.Opt.Addr, DB: rd.Opt.DB}, log)
	t.Cleanup(func() { client.Close() })

	r := &dripRig{t: t, db: db, clock: clk, smtp: sink}
	r.exec(`INSERT INTO segment (name, predicate, created_at, updated_at) VALUES ('everyone', 'true', $1, $1)`, t0)
	page := `{{define "subject"}}Hello{{end}}{{define "body"}}<p>Hi {{.Contact.FirstName}}</p>{{end}}`
	if _, err := campaign.NewStore(db.DB, clk, render.Checker{}).Apply(ctx, campaign.Bundle{
		Campaigns: []campaign.Definition{{Name: "nurture", Kind: campaign.KindDrip, Segment: "everyone", Sender: "team@acme.example",
			Steps: []campaign.Step{
				{ID: "one", Wait: "0h", Channel: "email", Template: "one"},
				{ID: "two", Wait: "2d", Channel: "email", Template: "two"},
			}}},
		Templates: []campaign.TemplateInput{{Name: "one", Kind: "email", Source: page}, {Name: "two", Kind: "email", Source: page}},
	}, false); err != nil {
		t.Fatal(err)
	}
	r.exec(`UPDATE campaign SET status = 'active', activated_at = $1`, t0)

	r.enroller = campaign.NewEnroller(db.DB, clk, log, time.UTC)
	r.outbox = delivery.NewOutbox(db.DB, clk)
	renderer := &render.Renderer{Signer: token.NewSigner([]byte("drip-test-secret-0123456789")), PublicURL: "http://tend.test",
		PostalAddress: "Acme, 1 Main St"}
	r.sender = delivery.NewSender(db.DB, clk, log, r.outbox, r.enroller, renderer, mailer,
		delivery.SenderOptions{TeamSender: "Acme <success@acme.example>", MessageIDDomain: "tend.test"})
	r.sweep = &jobs.DeliverySweep{Outbox: r.outbox, Enroller: r.enroller, Client: client, Log: log,
		Lease: time.Minute, RequeueAfter: time.Minute, MaxDelay: maxDelay}
	r.stalled = &jobs.StalledDrips{Enroller: r.enroller, Clock: clk, Log: log, Every: time.Minute, Batch: 10, Budget: time.Minute}

	// The account enters the segment: enrolled, step one due now.
	r.exec(`INSERT INTO account (external_id, name, signup_at, created_at, updated_at) VALUES ('globex', 'Globex', $1, $1, $1)`, t0)
	r.exec(`INSERT INTO contact (external_id, account_id, email, name, created_at, updated_at)
		SELECT 'c' || i, (SELECT id FROM account), 'c' || i || '@globex.example', 'Person ' || i, $1, $1
		FROM generate_series(1, 2) i`, t0)
	r.exec(`INSERT INTO segment_event (segment_id, account_id, kind, reason, at)
		SELECT s.id, a.id, 'enter', 'data', $1 FROM segment s, account a`, t0)
	if _, err := r.enroller.ProcessSegmentEvents(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if got := r.state(); got != "active at 0: one/c1 scheduled, one/c2 scheduled" {
		t.Fatalf("after enrolling: %s", got)
	}
	return r
}

func (r *dripRig) exec(q string, args ...any) {
	r.t.Helper()
	if _, err := r.db.Exec(q, args...); err != nil {
		r.t.Fatal(err)
	}
}

// ids returns the ids of the messages of a step, by contact.
func (r *dripRig) ids(step string) []int64 {
	r.t.Helper()
	var ids []int64
	if err := r.db.Select(&ids, `SELECT m.id FROM message m JOIN contact c ON c.id = m.contact_id
		WHERE m.step_id = $1 ORDER BY c.external_id`, step); err != nil {
		r.t.Fatal(err)
	}
	return ids
}

// state says where the enrollment is and what became of each message.
func (r *dripRig) state() string {
	r.t.Helper()
	var en struct {
		Status string `db:"status"`
		Step   int    `db:"step"`
	}
	if err := r.db.Get(&en, `SELECT status, step FROM enrollment`); err != nil {
		r.t.Fatal(err)
	}
	var msgs []string
	if err := r.db.Select(&msgs, `SELECT m.step_id || '/' || c.external_id || ' ' ||
		       CASE WHEN m.status = 'claimed' AND m.handed_at IS NOT NULL THEN 'sending' ELSE m.status END
		FROM message m JOIN contact c ON c.id = m.contact_id ORDER BY m.id`); err != nil {
		r.t.Fatal(err)
	}
	return fmt.Sprintf("%s at %d: %s", en.Status, en.Step, strings.Join(msgs, ", "))
}

// due returns when the messages of a step are due.
func (r *dripRig) due(step string) []time.Time {
	r.t.Helper()
	var at []time.Time
	if err := r.db.Select(&at, `SELECT due_at FROM message WHERE step_id = $1 ORDER BY id`, step); err != nil {
		r.t.Fatal(err)
	}
	return at
}

// runSweeps runs what the scheduler runs every sweep: the delivery sweep,
// then the stalled-drip pass.
func (r *dripRig) runSweeps() {
	r.t.Helper()
	if err := r.sweep.Run(context.Background()); err != nil {
		r.t.Fatal(err)
	}
	if err := r.stalled.Run(context.Background()); err != nil {
		r.t.Fatal(err)
	}
}

// A worker dies after marking a message sending (the other message of the
// step went out with another batch, whose advance found the step
// unfinished). The reaper makes the message uncertain when its lease ends;
// the next sweep moves the drip on to step two, anchored on the step's last
// send, and only once however often it runs.
func TestADripGoesOnAfterAWorkerDiedMidSend(t *testing.T) {
	r := newDripRig(t)
	ctx := context.Background()
	one := r.ids("one")
	tok := delivery.NewToken()
	r.exec(`UPDATE message SET status = 'claimed', claim_token = $1, claimed_at = now() WHERE id = $2`, tok, one[0])
	if _, _, err := r.outbox.HandOver(ctx, tok, nil, one[:1]); err != nil {
		t.Fatal(err)
	}
	// ... and the worker is gone. Another batch sends the second message.
	r.clock.Advance(time.Minute)
	if _, err := r.sender.SendBatch(ctx, one[1:]); err != nil {
		t.Fatal(err)
	}
	if got := r.state(); got != "active at 0: one/c1 sending, one/c2 sent" {
		t.Fatalf("after the batch: %s", got)
	}
	// The dead worker's lease ends.
	r.exec(`UPDATE message SET claimed_at = claimed_at - interval '1 hour', handed_at = handed_at - interval '1 hour'
		WHERE status = 'claimed' AND handed_at IS NOT NULL`)
	r.runSweeps()
	if got := r.state(); got != "active at 1: one/c1 uncertain, one/c2 sent, two/c1 scheduled, two/c2 scheduled" {
		t.Fatalf("after the sweep: %s", got)
	}
	want := t0.Add(time.Minute + 48*time.Hour) // two days after c2's message was sent
	for _, at := range r.due("two") {
		if !at.Equal(want) {
			t.Errorf("step two due %s, want %s", at, want)
		}
	}
	// Again, once the pass may run again: nothing more.
	r.clock.Advance(r.stalled.Every)
	r.runSweeps()
	if got := r.state(); got != "active at 1: one/c1 uncertain, one/c2 sent, two/c1 scheduled, two/c2 scheduled" {
		t.Fatalf("after another sweep: %s", got)
	}
	if r.smtp.Count() != 1 {
		t.Fatalf("the server holds %d messages, want 1", r.smtp.Count())
	}
}

// The advance after a batch fails (the batch's messages are sent and
// settled); asynq retries the task, which finds nothing left to claim. The
// stalled-drip pass moves the drip on.
func TestADripGoesOnAfterItsAdvanceFailed(t *testing.T) {
	r := newDripRig(t)
	ctx := context.Background()
	// The first advance's write fails, as PostgreSQL would fail it on a
	// lost connection or a serialisation error; later ones work.
	r.exec(`CREATE SEQUENCE advances`)
	r.exec(`CREATE FUNCTION fail_first_advance() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF nextval('advances') = 1 THEN RAISE EXCEPTION 'the first advance fails'; END IF;
			RETURN NEW;
		END $$`)
	r.exec(`CREATE TRIGGER fail_first_advance BEFORE UPDATE OF step ON enrollment FOR EACH ROW EXECUTE FUNCTION fail_first_advance()`)
	one := r.ids("one")
	if _, err := r.sender.SendBatch(ctx, one); err == nil || !strings.Contains(err.Error(), "the first advance fails") {
		t.Fatalf("the batch's error: %v, want the advance's", err)
	}
	if _, err := r.sender.SendBatch(ctx, one); err != nil { // asynq's retry
		t.Fatal(err)
	}
	if got := r.state(); got != "active at 0: one/c1 sent, one/c2 sent" {
		t.Fatalf("after the retry: %s", got)
	}
	r.runSweeps()
	if got := r.state(); got != "active at 1: one/c1 sent, one/c2 sent, two/c1 scheduled, two/c2 scheduled" {
		t.Fatalf("after the sweep: %s", got)
	}
	// Step two goes out when due, and the drip completes as usual.
	r.clock.Advance(48 * time.Hour)
	if _, err := r.sender.SendBatch(ctx, r.ids("two")); err != nil {
		t.Fatal(err)
	}
	if got := r.state(); got != "completed at 1: one/c1 sent, one/c2 sent, two/c1 sent, two/c2 sent" {
		t.Fatalf("after step two: %s", got)
	}
	if r.smtp.Count() != 4 {
		t.Fatalf("the server holds %d messages, want 4", r.smtp.Count())
	}
}

// A hold outlasts the maximum delay: the step's messages are skipped (not
// sent), and the drip goes on, as after any step: step two is scheduled two
// days after step one was due, and waits for the hold like any message.
// Once the hold is released it goes out.
func TestADripGoesOnAfterAHoldOutlastedTheMaximumDelay(t *testing.T) {
	r := newDripRig(t)
	ctx := context.Background()
	if _, err := r.outbox.PlaceHold(ctx, "globex", "renewal talks", nil, "dana"); err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(maxDelay + time.Hour)
	r.runSweeps()
	if got := r.state(); got != "active at 1: one/c1 skipped, one/c2 skipped, two/c1 scheduled, two/c2 scheduled" {
		t.Fatalf("after the sweep: %s", got)
	}
	for _, at := range r.due("two") {
		if want := t0.Add(48 * time.Hour); !at.Equal(want) {
			t.Errorf("step two due %s, want %s", at, want)
		}
	}
	if _, err := r.outbox.ReleaseHolds(ctx, "globex"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.sender.SendBatch(ctx, r.ids("two")); err != nil {
		t.Fatal(err)
	}
	if got := r.state(); got != "completed at 1: one/c1 skipped, one/c2 skipped, two/c1 sent, two/c2 sent" {
		t.Fatalf("after step two: %s", got)
	}
}

// enrollFourMore enrolls four more accounts, one contact each: five active
// enrollments, all on step one.
func (r *dripRig) enrollFourMore(ctx context.Context) {
	r.t.Helper()
	r.exec(`INSERT INTO account (external_id, name, signup_at, created_at, updated_at)
		SELECT 'acc' || i, 'Account ' || i, $1, $1, $1 FROM generate_series(1, 4) i`, t0)
	r.exec(`INSERT INTO contact (external_id, account_id, email, name, created_at, updated_at)
		SELECT 'x' || a.external_id, a.id, a.external_id || '@example.com', 'X', $1, $1 FROM account a WHERE a.external_id LIKE 'acc%'`, t0)
	r.exec(`INSERT INTO segment_event (segment_id, account_id, kind, reason, at)
		SELECT s.id, a.id, 'enter', 'data', $1 FROM segment s, account a WHERE a.external_id LIKE 'acc%' ORDER BY a.id`, t0)
	if _, err := r.enroller.ProcessSegmentEvents(ctx, 10); err != nil {
		r.t.Fatal(err)
	}
}

// An enrollment that cannot move on (here PostgreSQL refuses its next
// message) holds up neither the others of its page nor the pass: they move
// on, the failure is reported, and the next sweep reads the next page.
func TestStalledDripsStepPastOneThatCannotMove(t *testing.T) {
	r := newDripRig(t)
	ctx := context.Background()
	r.enrollFourMore(ctx)
	r.exec(`UPDATE message SET status = 'failed', reason = 'test'`)
	// The second enrollment in the pass's order cannot be given its next
	// step.
	var stuck int64
	if err := r.db.Get(&stuck, `SELECT id FROM enrollment ORDER BY campaign_id, account_id OFFSET 1 LIMIT 1`); err != nil {
		t.Fatal(err)
	}
	r.exec(`CREATE FUNCTION refuse_stuck() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'refused for the test'; END $$`)
	r.exec(fmt.Sprintf(`CREATE TRIGGER refuse_stuck BEFORE INSERT ON message FOR EACH ROW
		WHEN (NEW.enrollment_id = %d) EXECUTE FUNCTION refuse_stuck()`, stuck))

	r.stalled.Batch, r.stalled.Budget = 2, 0 // one page of two a sweep
	err := r.stalled.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("enrollment %d", stuck)) {
		t.Fatalf("first sweep: err %v, want the stuck enrollment %d named", err, stuck)
	}
	for i := range 2 {
		if err := r.stalled.Run(ctx); err != nil {
			t.Fatalf("sweep %d: %v (the stuck page read again?)", i+2, err)
		}
	}
	var moved []int64
	if err := r.db.Select(&moved, `SELECT id FROM enrollment WHERE step = 1 ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	var still int
	if err := r.db.Get(&still, `SELECT step FROM enrollment WHERE id = $1`, stuck); err != nil {
		t.Fatal(err)
	}
	if len(moved) != 4 || still != 0 {
		t.Fatalf("after three sweeps %v on step two and the stuck one at step %d, want the 4 others on step two", pq.Array(moved), still)
	}
}

// A pass whose first page cannot be read is not through: the next sweep,
// within Every, reads it again.
func TestStalledDripsRetryAPageNotRead(t *testing.T) {
	r := newDripRig(t)
	r.enrollFourMore(context.Background())
	r.exec(`UPDATE message SET status = 'failed', reason = 'test'`)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.stalled.Run(cancelled); err == nil {
		t.Fatal("a sweep with a cancelled context: no error")
	}
	r.nextSweepMovesAll(t)
}

// A page whose advance fails for a reason that is no enrollment's own (here
// the server, as when shutting down) is not stepped past: the next sweep,
// within Every, moves it on.
func TestStalledDripsRetryAPageTheDatabaseFailed(t *testing.T) {
	r := newDripRig(t)
	ctx := context.Background()
	r.enrollFourMore(ctx)
	r.exec(`UPDATE message SET status = 'failed', reason = 'test'`)
	r.exec(`CREATE FUNCTION shut_down() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'shutting down for the test' USING ERRCODE = 'admin_shutdown'; END $$`)
	r.exec(`CREATE TRIGGER shut_down BEFORE INSERT ON message FOR EACH ROW EXECUTE FUNCTION shut_down()`)
	if err := r.stalled.Run(ctx); err == nil || strings.Contains(err.Error(), "enrollment ") {
		t.Fatalf("first sweep: err %v, want the server's failure, no enrollment named", err)
	}
	r.exec(`DROP TRIGGER shut_down ON message`)
	r.nextSweepMovesAll(t)
}

// nextSweepMovesAll runs a sweep and checks it moved all five enrollments
// of the rig (after enrollFourMore) on to step two.
func (r *dripRig) nextSweepMovesAll(t *testing.T) {
	t.Helper()
	if err := r.stalled.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := r.db.Get(&n, `SELECT count(*) FROM enrollment WHERE step = 1`); err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Fatalf("%d enrollments on step two after the next sweep, want all 5", n)
	}
}

// The pass reads the active enrollments a page at a time, over as many
// sweeps as its budget needs, and starts again only after Every: an
// enrollment stalled behind the cursor waits for the next pass.
func TestStalledDripsPagesAndRests(t *testing.T) {
	r := newDripRig(t)
	ctx := context.Background()
	r.enrollFourMore(ctx)
	// Every step one is settled behind the pass's back.
	r.exec(`UPDATE message SET status = 'failed', reason = 'test'`)
	stepped := func() int {
		t.Helper()
		var n int
		if err := r.db.Get(&n, `SELECT count(*) FROM enrollment WHERE step = 1`); err != nil {
			t.Fatal(err)
		}
		return n
	}
	r.stalled.Batch, r.stalled.Budget = 2, 0 // one page of two a sweep
	for i, want := range []int{2, 4, 5, 5} {
		if err := r.stalled.Run(ctx); err != nil {
			t.Fatal(err)
		}
		if got := stepped(); got != want {
			t.Fatalf("after sweep %d: %d enrollments on step two, want %d", i+1, got, want)
		}
	}
	// Through them all: the pass rests until Every has passed.
	r.exec(`UPDATE message SET status = 'failed', reason = 'test' WHERE step_id = 'two'`)
	if err := r.stalled.Run(ctx); err != nil {
		t.Fatal(err)
	}
	var active int
	r.db.Get(&active, `SELECT count(*) FROM enrollment WHERE status = 'active'`)
	if active != 5 {
		t.Fatalf("%d active enrollments within Every of the last pass, want 5", active)
	}
	r.clock.Advance(r.stalled.Every)
	for range 3 {
		if err := r.stalled.Run(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var completed []int64
	r.db.Select(&completed, `SELECT id FROM enrollment WHERE status = 'completed' ORDER BY id`)
	if len(completed) != 5 {
		t.Fatalf("completed %v after the next pass, want all 5", pq.Array(completed))
	}
}
