// Package engagement records what people do with Tend's messages: opens and
// clicks through the signed tracking links in every email. Activity that is
// probably a machine — a mail privacy proxy prefetching images, a link
// scanner following every link the moment a message arrives — is recorded
// but flagged, and does not count as human engagement.
package engagement

import (
	"context"
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

// writeLanes is how many batches of hits may be written at once.
const writeLanes = 4

// lane is one line of hits waiting to be written in batches.
type lane struct {
	mu      sync.Mutex
	pending []*hitRow // hits waiting for the next batch
	writing bool      // a batch is being written
}

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
// that change a profile or a health score — marked changed, locked in id
// order like every writer of account rows. Test sends record nothing. It
// answers the positions of the hits whose message exists.
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
		                               AND e.kind = m.kind AND e.human AND e.at > $7 - interval '30 days'))
		ORDER BY a.id
		FOR NO KEY UPDATE
	), bump AS (
		UPDATE account a SET change_version = a.change_version + 1 FROM locked WHERE a.id = locked.id
		RETURNING 1
	)
	SELECT i FROM m`

// record writes a hit and waits for it to be committed. Hits arriving while a
// batch is being written wait, and the first of them then writes them all as
// the next batch: under load a few statements carry many hits, and each hit
// is still durable before it is answered.
func (t *Tracker) record(ctx context.Context, messageID int64, kind string, h Hit, v verdict) error {
	me := &hitRow{messageID: messageID, kind: kind, v: v, ua: truncate(h.UserAgent, 300), ip: h.IP, done: make(chan hitResult, 1)}
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
		t.write(ctx, batch)
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

// write writes a batch and answers every hit in it.
func (t *Tracker) write(ctx context.Context, batch []*hitRow) {
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
	// A deadlock with another writer of these accounts: try again.
	err := postgres.RetryDeadlock(func() error {
		return t.exec(ctx, found, pq.Array(ids), pq.Array(kinds), pq.Array(machine), pq.Array(windows), pq.Array(uas), pq.Array(ips), t.clock.Now())
	})
	for i, h := range batch {
		if err != nil {
			h.done <- hitResult{err: fmt.Errorf("engagement: record: %w", err)}
			continue
		}
		h.done <- hitResult{found: found[i]}
	}
}

// exec runs recordSQL and marks the positions it answers. It is not a
// prepared statement on purpose: after a few executions PostgreSQL may
// switch a prepared statement to a generic plan, which for these arrays
// guessed badly and ran a batch several times slower, in about half of the
// benchmark's runs. Planned with its arguments each time, it costs one more
// round trip per batch.
func (t *Tracker) exec(ctx context.Context, found []bool, args ...any) error {
	rows, err := t.db.QueryContext(ctx, recordSQL, args...)
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
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
