package segment

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
)

// What a full pass may skip.
//
// Every evaluation of an account against all live segments stamps the
// account (table segment_stamp, written in the same transaction as the
// membership differences it found): the change_version it read, a
// fingerprint of the live segments' generations and of the health model, the
// clock, until when the profile and health score it read stay true
// (valid_until: see account.Cached.ValidUntil), and when the whole days since
// signup and since the last login next tick over. Until then, with the same
// version and fingerprint, the account's profile and score are the same ones
// except for what reads the clock, which the predicates' TimeDeps name. So a
// full pass evaluates:
//
//   - every segment, for accounts whose stamp is missing or not current
//     (data changed, segments or the model changed, the profile or score
//     ran out of validity — a window lost a data point, say —, or the clock
//     went back);
//   - the segments reading the whole days since signup (last login), for
//     accounts whose count ticked over since the stamp, renewing the stamp;
//   - the segments reading the clock otherwise (now()), for every account;
//
// and nothing else: every other membership is what it was at the stamp's
// time, and the predicates would say the same now.
//
// Concurrent writers. Memberships are read before an evaluation and its
// differences written after, so two evaluations of one account at different
// clock times (or under different health models) may interleave their
// writes. A stamp therefore carries seq, bumped by every write: an
// evaluation that finds seq changed since it read the memberships writes a
// void stamp (fingerprint 0, matching nothing), and so does a build pass (one
// segment) for the accounts whose membership it changed. A void stamp makes
// the next full pass evaluate the account in full, as a pass without stamps
// would.
//
// What a skipping pass no longer does for skipped accounts: count their
// predicates' runtime errors again (a segment's error_count grows once per
// evaluation that failed, not once per pass), and call the health scorer
// (which would find their scores current: same data and model, still valid). A score
// written after the stamp under an older model (a build pass that started
// before a model was saved and changed no membership) stays until the
// account's next full evaluation; a pass without stamps would rescore it
// within the hour.

// fingerprint identifies what a full evaluation evaluated: the live segments
// at their generations and, with health scoring, the model version.
func (e *Engine) fingerprint(ctx context.Context, segs []*compiled) (int64, error) {
	h := fnv.New64a()
	var b [8]byte
	put := func(v int64) {
		binary.LittleEndian.PutUint64(b[:], uint64(v))
		h.Write(b[:])
	}
	put(int64(len(segs)))
	for _, s := range segs {
		put(s.id)
		put(s.generation)
	}
	if e.Health != nil {
		// Read before the scores are refreshed: a model saved meanwhile
		// makes this fingerprint stale, never the other way round.
		v, err := e.Health.ModelVersion(ctx)
		if err != nil {
			return 0, err
		}
		put(1)
		put(v)
	}
	fp := int64(h.Sum64())
	if fp == 0 {
		fp = 1 // 0 is the void stamp's
	}
	return fp, nil
}

// target is one account to evaluate, and which segments.
type target struct {
	id   int64
	full bool // every segment of the plan
	// Otherwise the account's stamp is current, and these are its time,
	// its validity and when its whole-day counts tick over; due says which
	// of them the evaluation found ticked over at its own clock.
	stampAt, validUntil, signupNext, loginNext time.Time
	due                                        TimeDeps
}

// settle decides, at the evaluation's clock, what a target with a current
// stamp needs: time passed since the candidates were chosen (a crossing, or
// the stamp's validity running out) is taken into account.
func (t *target) settle(p *plan, now time.Time) {
	if t.full {
		return
	}
	if now.Before(t.stampAt) || !now.Before(t.validUntil) {
		t.full = true
		return
	}
	t.due = TimeDeps{
		SignupDays: p.time.SignupDays && !now.Before(t.signupNext),
		LoginDays:  p.time.LoginDays && !now.Before(t.loginNext),
		Always:     p.time.Always,
	}
}

func (t target) wants(c *compiled) bool {
	if t.full {
		return true
	}
	d := c.pred.Time
	return (t.due.Always && d.Always) || (t.due.SignupDays && d.SignupDays) || (t.due.LoginDays && d.LoginDays)
}

// stamps reports whether evaluating t renews the account's stamp: a full
// evaluation, or one that brought the whole-day segments up to now. (The
// Always segments are evaluated in every pass whatever the stamp says.)
func (t target) stamps() bool { return t.full || t.due.SignupDays || t.due.LoginDays }

func fullTargets(ids []int64) []target {
	out := make([]target, len(ids))
	for i, id := range ids {
		out[i] = target{id: id, full: true}
	}
	return out
}

// candidates returns the accounts of ids lo <= id < hi that a full pass at
// now must evaluate under p, in id order. The test is done in SQL, on
// comparisons only, so that a skipped account costs its share of one merge
// join of two index scans and nothing in Go.
func (e *Engine) candidates(ctx context.Context, p *plan, lo, hi int64, now time.Time) ([]target, error) {
	// The range on s as well as on a lets the planner merge two index
	// range scans.
	rows, err := e.db.QueryContext(ctx, `
		SELECT id, all_segments, evaluated_at, valid_until, signup_next, login_next FROM (
			SELECT a.id,
			       s.account_id IS NULL OR a.change_version > a.evaluated_version
			       OR s.version <> a.change_version OR s.segments <> $3
			       OR s.valid_until <= $4 OR s.evaluated_at > $4 AS all_segments,
			       s.evaluated_at, s.valid_until, s.signup_next, s.login_next
			FROM account a
			LEFT JOIN segment_stamp s ON s.account_id = a.id AND s.account_id >= $1 AND s.account_id < $2
			WHERE a.id >= $1 AND a.id < $2
		) c
		WHERE all_segments OR ($5 AND $4 >= signup_next) OR ($6 AND $4 >= login_next) OR $7
		ORDER BY id`, lo, hi, p.fp, now, p.time.SignupDays, p.time.LoginDays, p.time.Always)
	if err != nil {
		return nil, fmt.Errorf("segment: candidates: %w", err)
	}
	defer rows.Close()
	var out []target
	for rows.Next() {
		var t target
		var at, until, signup, login sql.NullTime
		if err := rows.Scan(&t.id, &t.full, &at, &until, &signup, &login); err != nil {
			return nil, fmt.Errorf("segment: candidates: %w", err)
		}
		t.stampAt, t.validUntil, t.signupNext, t.loginNext = at.Time, until.Time, signup.Time, login.Time
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("segment: candidates: %w", err)
	}
	return out, nil
}

// nextDay is when the whole days from from (counted as days_since_signup
// and days_since() count them: 0 before from) next change after t.
func nextDay(from, t time.Time) time.Time {
	const day = 24 * time.Hour
	var k time.Duration
	if d := t.Sub(from); d >= 0 {
		k = d / day
	}
	return from.Add((k + 1) * day)
}

// stampRow is a stamp to write for one account.
type stampRow struct {
	id, version int64
	seen        int64 // the stamp's seq when the memberships were read (0: none)
	// When the profile and score read may next differ, and when the whole
	// days since signup and since the last login next change.
	validUntil, signupNext, loginNext time.Time
}

// stampWrite is what an evaluation writes to the stamps.
type stampWrite struct {
	fp   int64
	rows []stampRow // evaluations against every segment that needed it
	// Accounts a build pass changed memberships of: their stamps are
	// voided.
	touched []int64
}

func (w stampWrite) empty() bool { return len(w.rows) == 0 && len(w.touched) == 0 }

// pgTime formats a time for a timestamptz[] parameter, to the microsecond.
func pgTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.999999Z") }

// writeStamps applies w in the evaluation's transaction, after its
// membership differences.
func writeStamps(ctx context.Context, tx *sqlx.Tx, now time.Time, w stampWrite) error {
	if len(w.rows) > 0 {
		n := len(w.rows)
		ids, versions, seen := make([]int64, n), make([]int64, n), make([]int64, n)
		valid, signups, logins := make([]string, n), make([]string, n), make([]string, n)
		for i, r := range w.rows {
			ids[i], versions[i], seen[i] = r.id, r.version, r.seen
			valid[i], signups[i], logins[i] = pgTime(r.validUntil), pgTime(r.signupNext), pgTime(r.loginNext)
		}
		// seq carries the seq seen plus one: a stamp still at the seq seen
		// was written by no one else since the memberships were read;
		// otherwise the writes may have interleaved and the stamp is void.
		// Rows in id order, like every writer of them; accounts deleted
		// meanwhile are left out.
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO segment_stamp AS s (account_id, version, segments, evaluated_at, valid_until, signup_next, login_next, seq)
			SELECT x.id, x.version, $4, $5, x.valid_until, x.signup_next, x.login_next, x.seen + 1
			FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[])
			     AS x(id, version, seen, valid_until, signup_next, login_next)
			JOIN account a ON a.id = x.id
			ORDER BY x.id
			ON CONFLICT (account_id) DO UPDATE SET
				version = EXCLUDED.version,
				segments = CASE WHEN s.seq = EXCLUDED.seq - 1 THEN EXCLUDED.segments ELSE 0 END,
				evaluated_at = EXCLUDED.evaluated_at,
				valid_until = EXCLUDED.valid_until,
				signup_next = EXCLUDED.signup_next,
				login_next = EXCLUDED.login_next,
				seq = s.seq + 1`,
			pq.Array(ids), pq.Array(versions), pq.Array(seen), w.fp, now, pq.Array(valid), pq.Array(signups), pq.Array(logins)); err != nil {
			return fmt.Errorf("segment: stamp: %w", err)
		}
	}
	if len(w.touched) > 0 {
		if _, err := tx.ExecContext(ctx, `
			WITH lk AS (
				SELECT account_id FROM segment_stamp
				WHERE account_id IN (SELECT unnest($1::bigint[])) ORDER BY account_id FOR UPDATE
			)
			UPDATE segment_stamp s SET segments = 0, seq = s.seq + 1
			FROM lk WHERE s.account_id = lk.account_id`, pq.Array(w.touched)); err != nil {
			return fmt.Errorf("segment: stamp: %w", err)
		}
	}
	return nil
}
