// Package engagement records what people do with Tend's messages: opens and
// clicks through the signed tracking links in every email. Activity that is
// probably a machine — a mail privacy proxy prefetching images, a link
// scanner following every link the moment a message arrives — is recorded
// but flagged, and does not count as human engagement.
package engagement

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/token"
)

// ScannerWindow: a click this soon after the message was sent is taken for
// a link scanner (security gateways follow links on delivery).
const ScannerWindow = 10 * time.Second

// PrefetchWindow: an open this soon after sending with a bare user agent is
// taken for a privacy proxy's prefetch rather than a person.
const PrefetchWindow = 60 * time.Second

// Tracker records opens and clicks from signed tokens.
type Tracker struct {
	db     *sqlx.DB
	clock  clock.Clock
	signer *token.Signer

	lanes [writeLanes]lane
}

// NewTracker returns a tracker.
func NewTracker(db *sqlx.DB, clk clock.Clock, signer *token.Signer) *Tracker {
	return &Tracker{db: db, clock: clk, signer: signer}
}

// What a hit's metadata keeps of its headers, in bytes.
const (
	maxUserAgentLen = 300
	maxIPLen        = 64
)

// Hit is one request to a tracking link.
type Hit struct {
	Token     string
	UserAgent string
	IP        string
}

func invalidLink() *errs.Error {
	return errs.E(errs.NotFound, "invalid_link", "this link is not valid")
}

// verdict is what a hit's user agent says: a machine for certain, or a
// machine if the hit comes within window of the message being sent.
type verdict struct {
	machine bool
	window  time.Duration
}

// machineAfter applies a verdict to a hit that came since after sending (a
// negative since: the send time is unknown). record's SQL applies the same
// rule, with the send time it reads.
func (v verdict) machineAfter(since time.Duration) bool {
	return v.machine || since >= 0 && since < v.window
}

// openVerdict tells a privacy proxy's prefetch from a person: Apple Mail
// Privacy Protection fetches images through its proxy soon after delivery
// with a bare "Mozilla/5.0"; Yahoo and others name their proxies.
func openVerdict(ua string) verdict {
	ua = strings.ToLower(strings.TrimSpace(ua))
	for _, p := range []string{"yahoomailproxy", "mail-privacy"} {
		if strings.Contains(ua, p) {
			return verdict{machine: true}
		}
	}
	if ua == "mozilla/5.0" {
		return verdict{window: PrefetchWindow}
	}
	return verdict{}
}

// clickVerdict tells a link scanner from a person: scanners name themselves
// or follow links within seconds of delivery.
func clickVerdict(ua string) verdict {
	ua = strings.ToLower(ua)
	for _, p := range []string{"bot", "scanner", "safelinks", "barracuda", "mimecast", "proofpoint", "curl/", "python-requests"} {
		if strings.Contains(ua, p) {
			return verdict{machine: true}
		}
	}
	return verdict{window: ScannerWindow}
}

// Open records an open from the pixel. A forged or altered token records
// nothing and is not found.
func (t *Tracker) Open(ctx context.Context, h Hit) error {
	tok, err := t.signer.ParseAs(token.KindOpen, h.Token)
	if err != nil {
		return invalidLink()
	}
	return t.record(ctx, tok.MessageID, "open", h, openVerdict(h.UserAgent))
}

// Click records a click and returns the URL signed into the link: the only
// place it may redirect to.
func (t *Tracker) Click(ctx context.Context, h Hit) (string, error) {
	tok, err := t.signer.ParseAs(token.KindClick, h.Token)
	if err != nil {
		return "", invalidLink()
	}
	if err := t.record(ctx, tok.MessageID, "click", h, clickVerdict(h.UserAgent)); err != nil {
		return "", err
	}
	return tok.URL, nil
}

// writeLanes is how many batches of hits may be written at once. Fewer
// lanes make bigger batches, and a batch costs little more than a single hit:
// BenchmarkTracking ran 16–17k hits/s with one lane, 14–17k with two, 10–13k
// with four. Two, so that one batch waiting on a lock (an account row held by
// ingest) does not hold up every hit.
const writeLanes = 2

// lane is one line of hits waiting to be written in batches.
type lane struct {
	mu      sync.Mutex
	pending []*hitRow // hits waiting for the next batch
	writing bool      // a batch is being written

	// The lane's own connection and recordSQL prepared on it (see
	// laneStatement), used only by the hit writing the lane's batch, one at
	// a time; nil until the first batch and after an error.
	conn  *sql.Conn
	stmt  *sql.Stmt
	since time.Time // when conn was taken
}

// reset drops the lane's connection; the next batch takes a new one. The
// connection is closed, not returned to the pool, where its setting (see
// laneStatement) would reach other statements.
func (l *lane) reset() {
	if l.stmt != nil {
		l.stmt.Close()
	}
	if l.conn != nil {
		// database/sql discards a connection when Raw's function says it
		// is bad.
		l.conn.Raw(func(any) error { return driver.ErrBadConn })
		l.conn.Close()
	}
	l.conn, l.stmt = nil, nil
}

// laneConnLifetime is how long a lane keeps its connection: a new one plans
// recordSQL afresh, with the tables' sizes of now.
const laneConnLifetime = 10 * time.Minute

// hitRow is one hit waiting to be written.
type hitRow struct {
	messageID int64
	kind      string
	v         verdict
	ua, ip    string
	done      chan hitResult
}

// hitResult answers a hit: whether its message exists, or why the write
// failed; lead hands the waiting hit the job of writing the next batch.
type hitResult struct {
	found bool
	err   error
	lead  bool
}

// recordSQL records a batch of hits in one statement: each hit's event,
// flagged human or not by its verdict (machine by user agent, or within its
// window after sending) and the message's send time; and the accounts of
// first human events of their kind on a message in 30 days — the only ones
// that change a profile or a health score — marked changed (and pending, see
// account.MarkPending), locked in id order like every writer of account rows. Test sends record nothing. It
// answers the positions of the hits whose message exists.
//
// OFFSET 0 keeps the NOT EXISTS a lookup per hit through
// engagement_event_message: without it PostgreSQL may turn it into an anti
// join, which a generic plan (see laneStatement) can run as a scan of the
// whole table.
const recordSQL = `
	WITH x AS (
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::boolean[], $4::bigint[], $5::text[], $6::text[])
		       WITH ORDINALITY AS x(message_id, kind, ua_machine, window_us, ua, ip, i)
	), m AS (
		SELECT x.*, msg.test, ct.account_id,
		       NOT (x.ua_machine OR (msg.sent_at IS NOT NULL AND $7 >= msg.sent_at
		            AND $7 - msg.sent_at < x.window_us * interval '1 microsecond')) AS human
		FROM x JOIN message msg ON msg.id = x.message_id LEFT JOIN contact ct ON ct.id = msg.contact_id
	), ins AS (
		INSERT INTO engagement_event (message_id, kind, human, at, metadata)
		SELECT message_id, kind, human, $7, jsonb_build_object('user_agent', ua, 'ip', ip) FROM m WHERE NOT test ORDER BY i
		RETURNING 1
	), locked AS MATERIALIZED (
		SELECT a.id FROM account a
		WHERE a.id IN (SELECT m.account_id FROM m WHERE m.human AND NOT m.test
		               AND NOT EXISTS (SELECT 1 FROM engagement_event e WHERE e.message_id = m.message_id
		                               AND e.kind = m.kind AND e.human AND e.at > $7 - interval '30 days'
		                               OFFSET 0))
		ORDER BY a.id
		FOR NO KEY UPDATE
	), bump AS (
		UPDATE account a SET change_version = a.change_version + 1 FROM locked WHERE a.id = locked.id
		RETURNING 1
	), pending AS (
		INSERT INTO account_pending (account_id) SELECT id FROM locked ORDER BY id
		ON CONFLICT DO NOTHING
	)
	SELECT i FROM m`

// record writes a hit and waits for it to be committed. Hits arriving while a
// batch is being written wait, and the first of them then writes them all as
// the next batch: under load a few statements carry many hits, and each hit
// is still durable before it is answered.
func (t *Tracker) record(ctx context.Context, messageID int64, kind string, h Hit, v verdict) error {
	// The headers are anyone's: kept as text PostgreSQL stores, cut on a
	// character, so that no hit fails, nor the batch written with it.
	me := &hitRow{messageID: messageID, kind: kind, v: v, ua: postgres.TruncateText(h.UserAgent, maxUserAgentLen),
		ip: postgres.TruncateText(h.IP, maxIPLen), done: make(chan hitResult, 1)}
	l := &t.lanes[uint64(messageID)%writeLanes]
	l.mu.Lock()
	l.pending = append(l.pending, me)
	lead := !l.writing
	l.writing = true
	l.mu.Unlock()
	for {
		if !lead {
			// Not given up on cancellation: a waiting hit may be handed the
			// next batch, and its write is bounded by writeTimeout.
			r := <-me.done
			if !r.lead {
				if r.err != nil {
					return r.err
				}
				if !r.found {
					return invalidLink()
				}
				return nil
			}
		}
		l.mu.Lock()
		batch := l.pending
		l.pending = nil
		l.mu.Unlock()
		t.write(ctx, l, batch)
		l.mu.Lock()
		if len(l.pending) > 0 {
			l.pending[0].done <- hitResult{lead: true}
		} else {
			l.writing = false
		}
		l.mu.Unlock()
		lead = false
	}
}

// writeTimeout bounds one batch's statement.
const writeTimeout = 10 * time.Second

// write writes a batch on lane l and answers every hit in it.
func (t *Tracker) write(ctx context.Context, l *lane, batch []*hitRow) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	n := len(batch)
	ids, windows := make([]int64, n), make([]int64, n)
	kinds, uas, ips := make([]string, n), make([]string, n), make([]string, n)
	machine := make([]bool, n)
	for i, h := range batch {
		ids[i], kinds[i], machine[i], windows[i], uas[i], ips[i] = h.messageID, h.kind, h.v.machine, h.v.window.Microseconds(), h.ua, h.ip
	}
	found := make([]bool, n)
	args := []any{pq.Array(ids), pq.Array(kinds), pq.Array(machine), pq.Array(windows), pq.Array(uas), pq.Array(ips), t.clock.Now()}
	// A deadlock with another writer of these accounts: try again.
	err := postgres.RetryDeadlock(func() error {
		err := t.exec(ctx, l, found, args...)
		if connectionLost(err) {
			// The lane's connection had died (a restart of the server, an
			// operator's pg_terminate_backend) and the batch did not run:
			// once more, on a new one.
			err = t.exec(ctx, l, found, args...)
		}
		return err
	})
	for i, h := range batch {
		if err != nil {
			h.done <- hitResult{err: fmt.Errorf("engagement: record: %w", err)}
			continue
		}
		h.done <- hitResult{found: found[i]}
	}
}

// exec runs recordSQL on lane l and marks the positions it answers.
func (t *Tracker) exec(ctx context.Context, l *lane, found []bool, args ...any) error {
	stmt, err := t.laneStatement(ctx, l)
	if err != nil {
		return err
	}
	clear(found) // a retry after a deadlock answers again
	err = func() error {
		rows, err := stmt.QueryContext(ctx, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var i int
			if err := rows.Scan(&i); err != nil {
				return err
			}
			found[i-1] = true
		}
		return rows.Err()
	}()
	if err != nil {
		// The connection may be broken or in an unknown state; a
		// new one costs a connect and a prepare once.
		l.reset()
	}
	return err
}

// laneStatement returns lane l's prepared recordSQL, taking a connection of
// the lane's own from the pool the first time.
//
// Prepared, a batch skips parsing and planning, which cost as much as
// running it. The connection runs with sequential scans off: after a few
// executions PostgreSQL switches a prepared statement to a generic plan, and
// one made while engagement_event was still small looked up earlier
// engagement by scanning the table, kept doing so as it grew, and ran
// batches many times slower (half of the benchmark's runs, in an earlier
// version). Every table this statement reads is reached by a key, so with
// sequential scans priced out the generic plan is the right one at any size.
// The setting lives on the lane's connection alone, which is why the lane
// holds one rather than returning it to the pool after each batch, and
// closes it when done.
func (t *Tracker) laneStatement(ctx context.Context, l *lane) (*sql.Stmt, error) {
	if l.stmt != nil && time.Since(l.since) < laneConnLifetime {
		return l.stmt, nil
	}
	l.reset()
	conn, err := t.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	l.conn, l.since = conn, time.Now()
	if _, err := conn.ExecContext(ctx, `SET enable_seqscan = off`); err != nil {
		l.reset()
		return nil, err
	}
	stmt, err := conn.PrepareContext(ctx, recordSQL)
	if err != nil {
		l.reset()
		return nil, err
	}
	l.stmt = stmt
	return stmt, nil
}

// Close closes the lanes' connections. Call it once nothing records any more
// (the HTTP server has stopped).
func (t *Tracker) Close() error {
	var errs []error
	for i := range t.lanes {
		l := &t.lanes[i]
		l.mu.Lock()
		if l.writing {
			errs = append(errs, fmt.Errorf("engagement: close: lane %d is still writing", i))
		} else {
			l.reset()
		}
		l.mu.Unlock()
	}
	return errors.Join(errs...)
}

// connectionLost tells whether err says a connection was dead (database/sql
// had already found it broken, or the driver did) or ended by the server,
// its transaction (if any) rolled back: a statement that failed so did not
// run, and can be run again on another connection.
func connectionLost(err error) bool {
	var pqErr *pq.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) || errors.As(err, &pqErr) && pqErr.Code.Class() == "57" && pqErr.Code != "57014"
}
