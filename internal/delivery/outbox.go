// Package delivery sends what campaigns scheduled: the outbox (one message
// row per intended send), claiming and leasing, the SMTP mailer, and the
// reconciler that keeps Redis a signal rather than the source of truth.
//
// A message moves scheduled → claimed → sending → sent | failed | skipped |
// uncertain. "claimed" means a worker holds it in a batch; "sending" is
// marked just before it is handed to SMTP, in rounds: one commit marks as
// many of a batch's messages as the SMTP connections the worker has
// reserved for them, one message per connection. A worker that dies leaves
// its claimed messages to be released back to scheduled (safe: they never
// reached SMTP) and at most one sending message per connection to be marked
// uncertain (it may or may not have been accepted), never resent
// automatically.
//
// "sending" is stored as status 'claimed' with handed_at set (when the
// hand-over began, the start of its lease), so that marking it changes no
// column an index reads: see migration 00023 and sendingSQL.
package delivery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Message statuses.
const (
	StatusScheduled = "scheduled"
	StatusClaimed   = "claimed"
	StatusSending   = "sending"
	StatusSent      = "sent"
	StatusFailed    = "failed"
	StatusSkipped   = "skipped"
	StatusUncertain = "uncertain"
)

// sendingSQL is true of a message m being handed to SMTP. handed_at is set
// only then: every statement putting a message back to scheduled clears it
// (migration 00024 guards against earlier versions' reapers). Versions
// before migration 00023 stored status 'sending'; the migration converted
// those rows, and Reap and ByStatus still take any such a version writes.
const sendingSQL = `(m.status = 'claimed' AND m.handed_at IS NOT NULL)`

// statusSQL is a message m's status as people see it.
const statusSQL = `CASE WHEN ` + sendingSQL + ` THEN 'sending' ELSE m.status END`

// statusIs returns the condition that a message m is in status as people
// see it (statusSQL), on the stored status given as stored ($2).
func statusIs(status string) (cond, stored string) {
	switch status {
	case StatusSending:
		return `(m.status = $2 AND m.handed_at IS NOT NULL OR m.status = 'sending')`, StatusClaimed
	case StatusClaimed:
		return `m.status = $2 AND m.handed_at IS NULL`, StatusClaimed
	}
	return `m.status = $2`, status
}

// Outbox reads and writes message rows.
type Outbox struct {
	db    *sqlx.DB
	clock clock.Clock
	// wall is real time, for leases: whether a worker is still alive is not
	// a question about business time (which the demo clock may jump).
	wall func() time.Time

	// prepared runs the statements a batch runs for its messages.
	prepared  *postgres.Prepared
	handOvers handOvers
}

// NewOutbox returns the outbox.
func NewOutbox(db *sqlx.DB, clk clock.Clock) *Outbox {
	return &Outbox{db: db, clock: clk, prepared: postgres.NewPrepared(db), wall: func() time.Time { return time.Now().UTC() }}
}

// NewToken returns a fresh claim token.
func NewToken() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// TakeDue marks up to limit due, scheduled messages as enqueued (now) and
// returns their ids: first those never enqueued, the longest due first,
// then those whose task may have been lost (Redis flushed), enqueued more
// than requeueAfter ago and still scheduled. Messages enqueued within
// requeueAfter are left alone: their task is presumably still queued.
func (o *Outbox) TakeDue(ctx context.Context, limit int, requeueAfter time.Duration) ([]int64, error) {
	now, wall := o.clock.Now(), o.wall()
	var ids []int64
	if err := o.db.SelectContext(ctx, &ids, takeNewSQL, now, wall, limit); err != nil {
		return nil, fmt.Errorf("delivery: take due: %w", err)
	}
	if len(ids) < limit {
		var lost []int64
		if err := o.db.SelectContext(ctx, &lost, takeLostSQL, now, wall, limit-len(ids), wall.Add(-requeueAfter)); err != nil {
			return nil, fmt.Errorf("delivery: take due: %w", err)
		}
		ids = append(ids, lost...)
	}
	return ids, nil
}

// sendableNow is true of a message m (of campaign c) that may be sent at $1:
// scheduled and due, its campaign active (a paused campaign's messages wait;
// test sends do not), no hold on its account, sending not paused.
const sendableNow = `m.status = 'scheduled' AND m.due_at <= $1
	AND (m.test OR c.status = 'active')
	AND NOT ` + heldOrPaused

// takeDueSQL marks as enqueued ($2) the due ($1) scheduled messages that
// cond picks, up to $3. Each cond is the predicate of an index (see
// migration 00013), so that a sweep reads the messages it takes, not every
// message due and already enqueued.
func takeDueSQL(cond string) string {
	return `
		UPDATE message SET enqueued_at = $2
		WHERE id IN (
			SELECT m.id FROM message m JOIN campaign c ON c.id = m.campaign_id
			WHERE ` + sendableNow + ` AND ` + cond + `
			ORDER BY m.due_at, m.id LIMIT $3
			FOR UPDATE OF m SKIP LOCKED)
		RETURNING id`
}

var (
	takeNewSQL  = takeDueSQL(`m.enqueued_at IS NULL`)
	takeLostSQL = takeDueSQL(`m.enqueued_at < $4`)
)

// claimSQL claims the given messages that are still scheduled and due under
// a claim token ($2) and loads, in the same statement, everything deciding
// about and rendering them needs but their campaign versions (which the
// sender keeps) and account profiles (read through the profile cache). One
// round trip a batch. Others (sent meanwhile, claimed by another worker,
// rescheduled later) are left alone.
const claimSQL = `
	WITH got AS (
		UPDATE message m SET status = 'claimed', claim_token = $2, claimed_at = $3, handed_at = NULL, updated_at = $1
		WHERE m.id = ANY($4) AND m.status = 'scheduled' AND m.due_at <= $1
		  AND NOT ` + heldOrPaused + ` -- a hold placed since the task was queued still holds
		RETURNING m.id, m.enrollment_id, m.campaign_id, m.version, m.step_id, m.channel, m.test, m.to_address,
		          m.attempts, m.due_at, m.contact_id
	)
	SELECT m.id, m.enrollment_id, en.status AS enrollment_status, m.campaign_id, cp.name AS campaign, cp.topic,
	       m.version, m.step_id, m.channel, m.test, m.to_address, m.attempts, m.due_at,
	       ct.id AS contact_id, ct.external_id AS contact_external_id, ct.email AS contact_email,
	       ct.name AS contact_name, ct.role AS contact_role, ct.timezone AS contact_timezone,
	       ct.locale AS contact_locale, ct.traits AS contact_traits,
	       (SELECT sp.reason FROM suppression sp WHERE sp.email = coalesce(nullif(m.to_address, ''), ct.email)) AS suppressed,
	       (SELECT u.topic FROM contact_unsubscribe u WHERE u.contact_id = ct.id AND u.topic IN (cp.topic, '*') LIMIT 1) AS unsubscribed,
	       ` + accountColumns + `
	FROM got m
	JOIN campaign cp ON cp.id = m.campaign_id
	LEFT JOIN enrollment en ON en.id = m.enrollment_id
	LEFT JOIN contact ct ON ct.id = m.contact_id
	LEFT JOIN account a ON a.id = coalesce(en.account_id, ct.account_id)
	LEFT JOIN csm ON csm.id = a.csm_id
	ORDER BY m.id`

// claim runs claimSQL.
func (o *Outbox) claim(ctx context.Context, ids []int64, token string) ([]claimed, error) {
	var got []claimed
	if err := o.prepared.Select(ctx, &got, claimSQL, o.clock.Now(), token, o.wall(), pq.Array(ids)); err != nil {
		return nil, fmt.Errorf("delivery: claim: %w", err)
	}
	return got, nil
}

// Outcome is the result of one claimed message, to be recorded.
type Outcome struct {
	ID     int64  `json:"id"`
	Status string `json:"status"` // sent, failed, skipped or uncertain
	Reason string `json:"reason"`
}

// recordOutcomes is the common table expression that records outcomes of
// one or more batches: $1 to $4 are the messages' ids, claim tokens,
// statuses and reasons; $5 is the clock's now.
//
// The arrays of this and handOverSQL are read through scalar subqueries
// (unnest((SELECT $1...))), which hides their length from the planner. A
// hand-over carries a few messages (one a connection), and runs hundreds of
// times a second: seeing the length, PostgreSQL judged each execution's own
// plan cheaper than the prepared statement's generic one (which assumes 10
// rows) and planned every execution afresh, ~0.3 ms each, a quarter of the
// database's CPU time in the send benchmark. Without it, both plans cost the
// same and the generic plan, the same index lookups, is kept.
const recordOutcomes = `
	WITH done AS (
		UPDATE message m SET status = x.status, reason = x.reason, updated_at = $5,
			sent_at = CASE WHEN x.status = 'sent' THEN $5 ELSE m.sent_at END,
			last_error = CASE WHEN x.status IN ('failed', 'uncertain') THEN x.reason ELSE m.last_error END
		FROM unnest((SELECT $1::bigint[]), (SELECT $2::text[]), (SELECT $3::text[]), (SELECT $4::text[])) AS x(id, token, status, reason)
		WHERE m.id = x.id AND m.claim_token = x.token AND m.status = 'claimed'
		RETURNING m.id
	)`

// unrecordedColumn selects, after recordOutcomes, the ids of the outcomes
// it did not record: their messages were no longer claimed or sending under
// the batch's token (the reaper had taken them).
const unrecordedColumn = `
	ARRAY(SELECT x.id FROM unnest((SELECT $1::bigint[])) AS x(id)
	      WHERE NOT EXISTS (SELECT 1 FROM done WHERE done.id = x.id)) AS unrecorded`

// handOverSQL records earlier outcomes and marks the next messages ($7, with
// their claim tokens $8) as being handed to SMTP now ($6 is real time, for
// the lease), in one statement and one commit. It returns the ids it marked
// and those of the outcomes it did not record. The mark writes no column an
// index reads, so that PostgreSQL can make it in place (see migration
// 00023): in the send benchmark that took 5–13 µs of the database's CPU off
// each message, and 2–5% off the time of this commit, which every round
// waits for.
const handOverSQL = recordOutcomes + `, marked AS (
		UPDATE message m SET handed_at = $6, attempts = m.attempts + 1, updated_at = $5
		FROM unnest((SELECT $7::bigint[]), (SELECT $8::text[])) AS x(id, token)
		WHERE m.id = x.id AND m.claim_token = x.token AND m.status = 'claimed' AND m.handed_at IS NULL
		RETURNING m.id
	)
	SELECT ARRAY(SELECT id FROM marked) AS marked, ` + unrecordedColumn

// settleAsyncSQL records outcomes with an asynchronous commit:
// set_config(..., true) lasts until the end of the statement's own
// transaction, and its commit reads synchronous_commit as it is then. It
// returns the ids of the outcomes it did not record.
const settleAsyncSQL = recordOutcomes + `
	SELECT set_config('synchronous_commit', 'off', true) AS sc, ` + unrecordedColumn

// recorded is what handOverSQL and settleAsyncSQL return.
type recorded struct {
	Marked     pq.Int64Array `db:"marked"`
	Unrecorded pq.Int64Array `db:"unrecorded"`
	SC         string        `db:"sc"`
}

// unrecorded returns the outcomes of done whose ids are in ids.
func unrecorded(done []Outcome, ids []int64) []Outcome {
	if len(ids) == 0 {
		return nil
	}
	var out []Outcome
	for _, d := range done {
		if slices.Contains(ids, d.ID) {
			out = append(out, d)
		}
	}
	return out
}

// HandOver records earlier outcomes of the batch and marks the messages next
// as being handed to SMTP now, durably. From here on a crash makes them
// uncertain. It returns those it marked: one whose claim was lost (its lease
// expired and it was released) is not; and the outcomes it could not record
// because the reaper had taken their messages.
//
// The hand-overs of a process's batches are committed together: a call
// made while one commit runs waits for the next, which carries every call
// made meanwhile (see handOvers).
func (o *Outbox) HandOver(ctx context.Context, token string, done []Outcome, next []int64) (marked map[int64]bool, lost []Outcome, err error) {
	req := &handOverReq{token: token, done: done, next: next, ready: make(chan struct{})}
	o.handOvers.mu.Lock()
	o.handOvers.pending = append(o.handOvers.pending, req)
	if !o.handOvers.running {
		o.handOvers.running = true
		go o.commitHandOvers()
	}
	o.handOvers.mu.Unlock()
	// Not cancelled with ctx: the commit may happen all the same, and the
	// caller must know what it marked.
	<-req.ready
	if req.err != nil {
		return nil, nil, fmt.Errorf("delivery: hand over: %w", req.err)
	}
	return req.marked, req.unrecorded, nil
}

// handOvers is the queue of HandOver calls waiting for a commit. Each round
// of each batch needs a durable commit before its messages go to SMTP; the
// rounds of concurrent batches share one, so that a process makes at most
// one at a time, however many batches and rounds it runs.
type handOvers struct {
	mu      sync.Mutex
	pending []*handOverReq
	running bool // commitHandOvers is running
}

// handOverTimeout bounds a hand-over's commit, which no caller's context
// does, and the writes a round's outcomes call for (see Sender.refused). A
// commit that times out is an error for its callers, who withdraw the
// messages whether or not it committed: none of them was sent. A commit of a
// few rows that takes this long finds PostgreSQL in trouble.
const handOverTimeout = 10 * time.Second

// MinSendLease is the shortest lease (TEND_SEND_LEASE) under which the
// reaper cannot take a message marked sending from a live worker, whose
// Mailer's Timeout is smtpTimeout. The lease's clock starts when the
// hand-over's commit does; then come that commit (handOverTimeout), the
// handover to SMTP (MaxHandOver), the writes the outcome calls for
// (handOverTimeout), and the commit recording it: the next hand-over's,
// which may wait for another batch's first (twice handOverTimeout), or the
// batch's Settle, which should be as quick. Should the database be slower,
// the outcome is not recorded, and the worker logs it.
func MinSendLease(smtpTimeout time.Duration) time.Duration {
	return MaxHandOver(smtpTimeout) + 4*handOverTimeout
}

// handOverReq is one HandOver call.
type handOverReq struct {
	token      string
	done       []Outcome
	next       []int64
	marked     map[int64]bool
	unrecorded []Outcome
	err        error
	ready      chan struct{} // closed when marked or err is set
}

// commitHandOvers commits the waiting hand-overs, all in one statement,
// until none is waiting.
func (o *Outbox) commitHandOvers() {
	for {
		o.handOvers.mu.Lock()
		reqs := o.handOvers.pending
		o.handOvers.pending = nil
		if len(reqs) == 0 {
			o.handOvers.running = false
			o.handOvers.mu.Unlock()
			return
		}
		o.handOvers.mu.Unlock()

		var done []Outcome
		var tokens []string
		var next pq.Int64Array
		var nextTokens pq.StringArray
		for _, r := range reqs {
			done = append(done, r.done...)
			for range r.done {
				tokens = append(tokens, r.token)
			}
			for _, id := range r.next {
				next, nextTokens = append(next, id), append(nextTokens, r.token)
			}
		}
		ids, statuses, reasons := outcomeArrays(done)
		var rec recorded
		ctx, cancel := context.WithTimeout(context.Background(), handOverTimeout)
		err := o.prepared.Get(ctx, &rec, handOverSQL,
			ids, pq.StringArray(tokens), statuses, reasons, o.clock.Now(), o.wall(), next, nextTokens)
		cancel()
		got := make(map[int64]bool, len(rec.Marked))
		for _, id := range rec.Marked {
			got[id] = true
		}
		for _, r := range reqs {
			r.err = err
			if err == nil {
				r.marked = make(map[int64]bool, len(r.next))
				for _, id := range r.next {
					if got[id] {
						r.marked[id] = true
					}
				}
				r.unrecorded = unrecorded(r.done, rec.Unrecorded)
			}
			close(r.ready)
		}
	}
}

// Settle records outcomes. The commit does not wait for the WAL flush
// (synchronous_commit off): should a crash of PostgreSQL lose it, a sent
// message is still "sending" and the reaper marks it uncertain, and a
// skipped one is still "claimed" and is decided again. Nothing is ever
// resent; the write that must be durable is HandOver's, and it is. It
// returns the outcomes it could not record because the reaper had taken
// their messages.
func (o *Outbox) Settle(ctx context.Context, token string, done []Outcome) ([]Outcome, error) {
	if len(done) == 0 {
		return nil, nil
	}
	ids, statuses, reasons := outcomeArrays(done)
	tokens := make(pq.StringArray, len(done))
	for i := range tokens {
		tokens[i] = token
	}
	var rec recorded
	if err := o.prepared.Get(ctx, &rec, settleAsyncSQL, ids, tokens, statuses, reasons, o.clock.Now()); err != nil {
		return nil, fmt.Errorf("delivery: settle: %w", err)
	}
	return unrecorded(done, rec.Unrecorded), nil
}

// outcomeArrays returns the columns of outcomes as arrays. A reason, which
// may quote an SMTP server's reply, is made text PostgreSQL accepts: one it
// refused would fail the commit, shared with the hand-overs of other batches.
func outcomeArrays(done []Outcome) (ids pq.Int64Array, statuses, reasons pq.StringArray) {
	ids = make(pq.Int64Array, len(done))
	statuses = make(pq.StringArray, len(done))
	reasons = make(pq.StringArray, len(done))
	for i, d := range done {
		ids[i], statuses[i], reasons[i] = d.ID, d.Status, postgres.CleanText(d.Reason)
	}
	return ids, statuses, reasons
}

// Deferral is a claimed or sending message put back to scheduled, due
// later: capped (Defer), or refused for now by the SMTP server (Retry).
type Deferral struct {
	ID     int64
	At     time.Time
	Reason string // why it waits: a frequency cap, say, or the server's answer
}

// deferralArrays returns the columns of ds as arrays; reasons, which may
// quote an SMTP server's reply, made text PostgreSQL accepts.
func deferralArrays(ds []Deferral) (ids pq.Int64Array, ats any, reasons pq.StringArray) {
	ids = make(pq.Int64Array, len(ds))
	times := make([]time.Time, len(ds))
	reasons = make(pq.StringArray, len(ds))
	for i, d := range ds {
		ids[i], times[i], reasons[i] = d.ID, d.At, postgres.CleanText(d.Reason)
	}
	return ids, pq.Array(times), reasons
}

// Defer puts claimed messages back to scheduled, each due at a later time
// with the reason it waits, in one statement.
func (o *Outbox) Defer(ctx context.Context, token string, ds []Deferral) error {
	if len(ds) == 0 {
		return nil
	}
	ids, ats, reasons := deferralArrays(ds)
	_, err := o.db.ExecContext(ctx, `
		UPDATE message m SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL,
			due_at = x.at, reason = x.reason, updated_at = $5
		FROM unnest($1::bigint[], $3::timestamptz[], $4::text[]) AS x(id, at, reason)
		WHERE m.id = x.id AND m.claim_token = $2 AND m.status = 'claimed' AND m.handed_at IS NULL`, ids, token, ats, reasons, o.clock.Now())
	if err != nil {
		return fmt.Errorf("delivery: defer: %w", err)
	}
	return nil
}

// Retry puts messages the server did not accept for now back to scheduled,
// each due again at its time, with the server's answer as its Reason, in
// one statement.
func (o *Outbox) Retry(ctx context.Context, token string, ds []Deferral) error {
	if len(ds) == 0 {
		return nil
	}
	ids, ats, causes := deferralArrays(ds)
	_, err := o.db.ExecContext(ctx, `
		UPDATE message m SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL,
			due_at = x.at, last_error = x.cause, reason = 'retrying: ' || x.cause, updated_at = $5, handed_at = NULL
		FROM unnest($1::bigint[], $3::timestamptz[], $4::text[]) AS x(id, at, cause)
		WHERE m.id = x.id AND m.claim_token = $2 AND m.status = 'claimed'`, ids, token, ats, causes, o.clock.Now())
	if err != nil {
		return fmt.Errorf("delivery: retry: %w", err)
	}
	return nil
}

// Release puts claimed messages that were never handed to SMTP back to
// scheduled (a worker shutting down, say).
func (o *Outbox) Release(ctx context.Context, ids []int64, token string) error {
	_, err := o.db.ExecContext(ctx, `
		UPDATE message SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL, updated_at = $3
		WHERE id = ANY($1) AND claim_token = $2 AND status = 'claimed' AND handed_at IS NULL`, pq.Array(ids), token, o.clock.Now())
	if err != nil {
		return fmt.Errorf("delivery: release: %w", err)
	}
	return nil
}

// withdraw is Release for messages a HandOver that failed may or may not
// have marked sending: the caller knows none of them reached the transport,
// so they go back to scheduled rather than to the reaper (who would make
// them uncertain).
func (o *Outbox) withdraw(ctx context.Context, ids []int64, token string) error {
	_, err := o.db.ExecContext(ctx, `
		UPDATE message SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL, updated_at = $3,
			attempts = CASE WHEN handed_at IS NOT NULL THEN attempts - 1 ELSE attempts END, handed_at = NULL
		WHERE id = ANY($1) AND claim_token = $2 AND status = 'claimed'`, pq.Array(ids), token, o.clock.Now())
	if err != nil {
		return fmt.Errorf("delivery: withdraw: %w", err)
	}
	return nil
}

// Reap handles messages whose worker stopped answering: claimed ones whose
// lease expired go back to scheduled (they never reached SMTP); sending ones
// become uncertain (they may have been accepted) and are not resent. The
// reaper cannot tell why no outcome came (the worker died, or could not
// write it), so the reason says only what it knows.
func (o *Outbox) Reap(ctx context.Context, lease time.Duration) (released, uncertain int64, err error) {
	cutoff := o.wall().Add(-lease)
	now := o.clock.Now()
	res, err := o.db.ExecContext(ctx, `
		UPDATE message SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL, updated_at = $2
		WHERE status = 'claimed' AND handed_at IS NULL AND claimed_at < $1`, cutoff, now)
	if err != nil {
		return 0, 0, fmt.Errorf("delivery: reap: %w", err)
	}
	released, _ = res.RowsAffected()
	// A message is claimed before it is handed over: claimed_at < $1 lets
	// message_leased find those whose hand-over's lease ended. Status
	// 'sending' is a hand-over by a version before migration 00023, which
	// restarted claimed_at.
	res, err = o.db.ExecContext(ctx, `
		UPDATE message SET status = 'uncertain', updated_at = $2,
			reason = 'no outcome was recorded within the lease after the message was marked as being handed to SMTP (its worker stopped, or could not write); it may have been delivered',
			last_error = 'lease expired while sending'
		WHERE status IN ('claimed', 'sending') AND claimed_at < $1 AND (handed_at < $1 OR status = 'sending')`, cutoff, now)
	if err != nil {
		return 0, 0, fmt.Errorf("delivery: reap: %w", err)
	}
	uncertain, _ = res.RowsAffected()
	return released, uncertain, nil
}

// MessageView is a message as operators and CSMs see it.
type MessageView struct {
	ID        int64      `db:"id" json:"id"`
	Campaign  string     `db:"campaign" json:"campaign"`
	Version   int        `db:"version" json:"version"`
	Step      string     `db:"step_id" json:"step"`
	Contact   *string    `db:"contact" json:"contact_id,omitempty"`
	Email     string     `db:"email" json:"email,omitempty"`
	Channel   string     `db:"channel" json:"channel"`
	Status    string     `db:"status" json:"status"`
	Reason    string     `db:"reason" json:"reason,omitempty"`
	DueAt     time.Time  `db:"due_at" json:"due_at"`
	SentAt    *time.Time `db:"sent_at" json:"sent_at,omitempty"`
	Attempts  int        `db:"attempts" json:"attempts"`
	LastError string     `db:"last_error" json:"last_error,omitempty"`
	Test      bool       `db:"test" json:"test,omitempty"`
}

// viewColumns selects a message for people; $1 must be the clock's now. A
// scheduled message says why it is waiting.
const viewColumns = `m.id, c.name AS campaign, m.version, m.step_id, ct.external_id AS contact,
	coalesce(nullif(m.to_address, ''), ct.email, '') AS email, m.channel, ` + statusSQL + ` AS status,
	CASE WHEN m.status = 'scheduled' AND m.reason = '' THEN
		CASE
		WHEN coalesce((SELECT paused FROM send_switch WHERE id = 1), false) THEN 'waiting: sending is paused'
		WHEN EXISTS (SELECT 1 FROM account_hold h WHERE h.account_id = ct.account_id AND h.released_at IS NULL
		             AND (h.until IS NULL OR h.until > $1)) THEN 'waiting: the account is on hold'
		WHEN c.status <> 'active' AND NOT m.test THEN 'waiting: the campaign is ' || c.status
		WHEN m.due_at > $1 THEN 'waiting: due at ' || to_char(m.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC (the step''s wait and send window)'
		ELSE 'due: being sent' END
	ELSE m.reason END AS reason,
	m.due_at, m.sent_at, m.attempts, m.last_error, m.test`

// ByStatus lists messages in a status, oldest first, after the given id.
func (o *Outbox) ByStatus(ctx context.Context, status string, after int64, limit int) ([]MessageView, error) {
	out := []MessageView{}
	cond, stored := statusIs(status)
	err := o.db.SelectContext(ctx, &out, `
		SELECT `+viewColumns+`
		FROM message m JOIN campaign c ON c.id = m.campaign_id LEFT JOIN contact ct ON ct.id = m.contact_id
		WHERE `+cond+` AND m.id > $3 ORDER BY m.id LIMIT $4`, o.clock.Now(), stored, after, limit)
	if err != nil {
		return nil, fmt.Errorf("delivery: by status: %w", err)
	}
	return out, nil
}

// OfContact lists every message to a contact, newest first: the answer to
// "why didn't X get Y?".
func (o *Outbox) OfContact(ctx context.Context, contactExternalID string, limit int) ([]MessageView, error) {
	out := []MessageView{}
	err := o.db.SelectContext(ctx, &out, `
		SELECT `+viewColumns+`
		FROM message m JOIN campaign c ON c.id = m.campaign_id JOIN contact ct ON ct.id = m.contact_id
		WHERE ct.external_id = $2 ORDER BY m.id DESC LIMIT $3`, o.clock.Now(), contactExternalID, limit)
	if err != nil {
		return nil, fmt.Errorf("delivery: messages of contact: %w", err)
	}
	return out, nil
}

// Resolve settles an uncertain message by hand: "resend" schedules it again
// now (the operator checked it was not delivered), "drop" marks it failed.
func (o *Outbox) Resolve(ctx context.Context, id int64, action string) (MessageView, error) {
	var q string
	switch action {
	case "resend":
		q = `UPDATE message SET status = 'scheduled', due_at = $2, claim_token = NULL, claimed_at = NULL,
			enqueued_at = NULL, handed_at = NULL, reason = 'resent by an operator', updated_at = $2
			WHERE id = $1 AND status = 'uncertain' RETURNING id`
	case "drop":
		q = `UPDATE message SET status = 'failed', reason = 'dropped by an operator after an uncertain send', updated_at = $2
			WHERE id = $1 AND status = 'uncertain' RETURNING id`
	default:
		return MessageView{}, errs.E(errs.Invalid, "invalid_action", "action is resend or drop (got %q)", action).With("field", "action")
	}
	var got int64
	if err := o.db.GetContext(ctx, &got, q, id, o.clock.Now()); err != nil {
		return MessageView{}, postgres.NotFound(err, "delivery: resolve",
			errs.E(errs.Conflict, "not_uncertain", "message %d does not exist or is not uncertain", id))
	}
	var v MessageView
	err := o.db.GetContext(ctx, &v, `
		SELECT `+viewColumns+`
		FROM message m JOIN campaign c ON c.id = m.campaign_id LEFT JOIN contact ct ON ct.id = m.contact_id
		WHERE m.id = $2`, o.clock.Now(), id)
	if err != nil {
		return MessageView{}, fmt.Errorf("delivery: resolve: %w", err)
	}
	return v, nil
}

// StepStats counts one step's messages by status.
type StepStats struct {
	Step      string `db:"step_id" json:"step"`
	Scheduled int    `db:"scheduled" json:"scheduled"`
	Sent      int    `db:"sent" json:"sent"`
	Failed    int    `db:"failed" json:"failed"`
	Skipped   int    `db:"skipped" json:"skipped"`
	Uncertain int    `db:"uncertain" json:"uncertain"`
	Converted int    `db:"converted" json:"converted"`
	Opened    int    `db:"opened" json:"opened"`
	Clicked   int    `db:"clicked" json:"clicked"`
}

// Stats counts a campaign's messages per step (test sends excluded), and
// its enrollments by outcome.
func (o *Outbox) Stats(ctx context.Context, campaignID int64) ([]StepStats, map[string]int, error) {
	steps := []StepStats{}
	err := o.db.SelectContext(ctx, &steps, `
		SELECT m.step_id,
			count(*) FILTER (WHERE m.status IN ('scheduled', 'claimed', 'sending')) AS scheduled,
			count(*) FILTER (WHERE m.status = 'sent') AS sent,
			count(*) FILTER (WHERE m.status = 'failed') AS failed,
			count(*) FILTER (WHERE m.status = 'skipped') AS skipped,
			count(*) FILTER (WHERE m.status = 'uncertain') AS uncertain,
			count(*) FILTER (WHERE m.status = 'skipped' AND m.reason LIKE 'converted%') AS converted,
			count(*) FILTER (WHERE EXISTS (SELECT 1 FROM engagement_event e WHERE e.message_id = m.id AND e.kind = 'open' AND e.human)) AS opened,
			count(*) FILTER (WHERE EXISTS (SELECT 1 FROM engagement_event e WHERE e.message_id = m.id AND e.kind = 'click' AND e.human)) AS clicked
		FROM message m WHERE m.campaign_id = $1 AND NOT m.test
		GROUP BY m.step_id ORDER BY min(m.id)`, campaignID)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: stats: %w", err)
	}
	var rows []struct {
		Status string `db:"status"`
		N      int    `db:"n"`
	}
	if err := o.db.SelectContext(ctx, &rows, `SELECT status, count(*) AS n FROM enrollment WHERE campaign_id = $1 GROUP BY status`, campaignID); err != nil {
		return nil, nil, fmt.Errorf("delivery: stats: %w", err)
	}
	enr := map[string]int{"active": 0, "completed": 0, "exited": 0, "converted": 0}
	for _, r := range rows {
		enr[r.Status] = r.N
	}
	return steps, enr, nil
}

// Gauges is the state of the outbox as an operator watches it.
type Gauges struct {
	// OldestDue is how long the oldest message that may be sent now (due,
	// its campaign active, no hold, sending not paused) has waited past its
	// due time; zero when none waits. It grows when sending falls behind.
	OldestDue time.Duration
	// InFlight counts messages claimed or being handed to SMTP.
	InFlight int64
	// Uncertain counts messages an operator must resend or drop.
	Uncertain int64
}

// Gauges reads the outbox's gauges: three index reads (message_due from its
// oldest entry, and the small message_leased and message_uncertain).
func (o *Outbox) Gauges(ctx context.Context) (Gauges, error) {
	var row struct {
		Due       *time.Time `db:"oldest_due"`
		InFlight  int64      `db:"in_flight"`
		Uncertain int64      `db:"uncertain"`
	}
	now := o.clock.Now()
	err := o.db.GetContext(ctx, &row, `
		SELECT (SELECT m.due_at FROM message m JOIN campaign c ON c.id = m.campaign_id
		        WHERE `+sendableNow+`
		        ORDER BY m.due_at LIMIT 1) AS oldest_due,
		       (SELECT count(*) FROM message WHERE status IN ('claimed', 'sending') AND claimed_at IS NOT NULL) AS in_flight,
		       (SELECT count(*) FROM message WHERE status = 'uncertain') AS uncertain`, now)
	if err != nil {
		return Gauges{}, fmt.Errorf("delivery: gauges: %w", err)
	}
	g := Gauges{InFlight: row.InFlight, Uncertain: row.Uncertain}
	if row.Due != nil {
		g.OldestDue = now.Sub(*row.Due)
	}
	return g, nil
}
