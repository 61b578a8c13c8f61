package segment

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/postgres"
)

// Engine keeps segment membership right. It evaluates batches of accounts
// against the live segments and writes only the differences (entries and
// exits, with a reason) plus one segment_event row per difference.
//
// Every write is conditional on the account's change_version still being the
// one the evaluation read, and on the segment's generation: an evaluation that
// raced with newer data or a newer predicate writes nothing for that account
// or segment, and the newer evaluation (which the change triggers) wins. The
// open-membership unique index makes concurrent evaluations of the same
// account idempotent.
type Engine struct {
	db    *sqlx.DB
	clock clock.Clock
	log   *slog.Logger

	// BatchSize is how many accounts are evaluated per round trip.
	BatchSize int
	// ShardSize is how many account ids one full-pass shard covers.
	ShardSize int64
	// Health, when set, brings the accounts' health scores up to date
	// before they are matched, so a health change moves an account between
	// segments in the same evaluation.
	Health Scorer

	mu    sync.Mutex
	cache map[int64]*compiled

	// beforeWrite, when set (by tests), runs between an evaluation's reads
	// and its writes.
	beforeWrite func()
}

// NewEngine returns an engine.
func NewEngine(db *sqlx.DB, clk clock.Clock, log *slog.Logger) *Engine {
	return &Engine{db: db, clock: clk, log: log, BatchSize: 1000, ShardSize: 20000, cache: map[int64]*compiled{}}
}

// Scorer updates the health fields of a batch of profiles (and stores the
// scores), lowering each profile's ValidUntil to its score's. It needs the
// profiles' features decoded.
type Scorer interface {
	Refresh(ctx context.Context, now time.Time, profiles map[int64]account.Cached) error
	// ModelVersion is the version of the scoring model in effect. A score
	// may change only with the account's change_version, this version, or
	// once its ValidUntil has passed.
	ModelVersion(ctx context.Context) (int64, error)
}

type compiled struct {
	id, generation int64
	name           string
	building       bool
	buildReason    string
	pred           *Predicate
}

// live returns the live segments, compiled (cached per generation). With only
// set, just the segments named in it at those generations.
func (e *Engine) live(ctx context.Context, only map[int64]int64) ([]*compiled, error) {
	var rows []Segment
	err := e.db.SelectContext(ctx, &rows, `
		SELECT id, name, predicate, generation, built_generation, build_reason
		FROM segment WHERE deleted_at IS NULL ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("segment: load: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*compiled, 0, len(rows))
	for _, r := range rows {
		if only != nil {
			if g, ok := only[r.ID]; !ok || g != r.Generation {
				continue
			}
		}
		c, ok := e.cache[r.ID]
		if !ok || c.generation != r.Generation {
			pred, err := Compile(r.Predicate, e.clock)
			if err != nil {
				// Stored predicates were checked when saved; one that no
				// longer compiles is reported and skipped, not fatal.
				e.log.Error("segment: stored predicate does not compile", "segment", r.Name, "err", err)
				continue
			}
			c = &compiled{id: r.ID, generation: r.Generation, name: r.Name, pred: pred}
			e.cache[r.ID] = c
		}
		cc := *c
		cc.building = r.BuiltGeneration < r.Generation
		cc.buildReason = r.BuildReason
		out = append(out, &cc)
	}
	return out, nil
}

// Stats counts what an evaluation did.
type Stats struct {
	Accounts int
	Entered  int
	Exited   int
	Errors   int
}

func (s *Stats) add(o Stats) {
	s.Accounts += o.Accounts
	s.Entered += o.Entered
	s.Exited += o.Exited
	s.Errors += o.Errors
}

type diff struct {
	SegmentID  int64  `json:"segment_id"`
	Generation int64  `json:"generation"`
	AccountID  int64  `json:"account_id"`
	Version    int64  `json:"version"`
	Reason     string `json:"reason"`
}

type segError struct {
	SegmentID int64  `json:"segment_id"`
	N         int    `json:"n"`
	Message   string `json:"message"`
}

type versionRow struct {
	ID        int64 `db:"id"`
	Version   int64 `db:"change_version"`
	Evaluated int64 `db:"evaluated_version"`
}

// plan is what an evaluation evaluates: the live segments (or, for a build
// pass, the ones it names), compiled.
type plan struct {
	segs []*compiled
	// all says the plan holds every live segment: its evaluations mark
	// accounts evaluated and stamp them, under fingerprint fp.
	all bool
	fp  int64
	// time is what some segment's result depends on (Always: every account
	// is evaluated against those segments in every pass).
	time TimeDeps
}

func (e *Engine) plan(ctx context.Context, only map[int64]int64) (*plan, error) {
	segs, err := e.live(ctx, only)
	if err != nil {
		return nil, err
	}
	p := &plan{segs: segs, all: only == nil}
	for _, s := range segs {
		d := s.pred.Time
		p.time.SignupDays = p.time.SignupDays || d.SignupDays
		p.time.LoginDays = p.time.LoginDays || d.LoginDays
		p.time.Always = p.time.Always || d.Always
	}
	if p.all {
		if p.fp, err = e.fingerprint(ctx, segs); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// evaluateIDs evaluates accounts against every segment of the plan built
// from only (all live segments when nil).
func (e *Engine) evaluateIDs(ctx context.Context, accountIDs []int64, only map[int64]int64) (Stats, error) {
	p, err := e.plan(ctx, only)
	if err != nil {
		return Stats{}, err
	}
	return e.evaluate(ctx, p, fullTargets(accountIDs))
}

// evaluate evaluates accounts against the plan's segments (each target says
// which) and writes the differences. With a plan of all live segments the
// accounts are also marked evaluated at the version read, and stamped.
func (e *Engine) evaluate(ctx context.Context, p *plan, targets []target) (Stats, error) {
	if len(targets) == 0 {
		return Stats{}, nil
	}
	// Microseconds, as PostgreSQL stores it: the stamps' time is exactly the
	// time evaluated at (whole-day counts from microsecond times are the
	// same at now and at now truncated).
	now := e.clock.Now().Truncate(time.Microsecond)
	sort.Slice(targets, func(i, j int) bool { return targets[i].id < targets[j].id })
	ids := make([]int64, len(targets))
	anyFull := false
	for i := range targets {
		targets[i].settle(p, now)
		ids[i] = targets[i].id
		anyFull = anyFull || targets[i].full
	}
	var maps account.Maps
	for _, s := range p.segs {
		if anyFull || s.pred.Time.Any() {
			maps.Features = maps.Features || s.pred.Maps.Features
			maps.Events = maps.Events || s.pred.Maps.Events
			maps.Traits = maps.Traits || s.pred.Maps.Traits
		}
	}
	if e.Health != nil {
		// Refresh below scores health from the features, and sets every
		// profile's health fields itself.
		maps.Features, maps.NoHealth = true, true
	}
	profiles, err := account.CachedProfiles(ctx, e.db, ids, now, maps)
	if err != nil {
		return Stats{}, err
	}
	if e.Health != nil {
		if err := e.Health.Refresh(ctx, now, profiles); err != nil {
			return Stats{}, err
		}
	}
	current := map[[2]int64]bool{}
	var seqs map[int64]int64
	if p.all {
		seqs = make(map[int64]int64, len(targets))
	}
	if len(p.segs) > 0 || seqs != nil {
		if err := e.openMemberships(ctx, ids, current, seqs); err != nil {
			return Stats{}, err
		}
	}

	var st Stats
	var entries, exits []diff
	var mark []versionRow
	sw := stampWrite{fp: p.fp}
	errCount := map[int64]*segError{}
	var m Matcher
	for _, t := range targets {
		c, ok := profiles[t.id]
		if !ok {
			continue // deleted meanwhile
		}
		st.Accounts++
		v := versionRow{ID: t.id, Version: c.Version, Evaluated: c.Evaluated}
		before := len(entries) + len(exits)
		for _, s := range p.segs {
			if !t.wants(s) {
				continue
			}
			match, err := m.Match(s.pred, c.Profile)
			if err != nil {
				se := errCount[s.id]
				if se == nil {
					se = &segError{SegmentID: s.id}
					errCount[s.id] = se
				}
				se.N++
				se.Message = shorten(fmt.Sprintf("account %d: %v", v.ID, err))
				st.Errors++
			}
			in := current[[2]int64{s.id, v.ID}]
			if match == in {
				continue
			}
			reason := ReasonTime
			switch {
			case s.building:
				reason = s.buildReason
			case v.Version > v.Evaluated:
				reason = ReasonData
			}
			d := diff{SegmentID: s.id, Generation: s.generation, AccountID: v.ID, Version: v.Version, Reason: reason}
			if match {
				entries = append(entries, d)
			} else {
				exits = append(exits, d)
			}
		}
		switch {
		case p.all:
			// Only accounts changed since their last evaluation need
			// marking: for the others the write's own condition
			// (evaluated_version < version read) cannot hold, since
			// evaluated_version only grows.
			if v.Version > v.Evaluated {
				mark = append(mark, v)
			}
			if t.stamps() {
				sw.rows = append(sw.rows, stampRow{id: v.ID, version: v.Version, seen: seqs[v.ID], validUntil: c.ValidUntil,
					signupNext: nextDay(c.Profile.SignupAt, now), loginNext: nextDay(c.Profile.LastLoginAt, now)})
			}
		case len(entries)+len(exits) > before:
			sw.touched = append(sw.touched, v.ID)
		}
	}
	if e.beforeWrite != nil {
		e.beforeWrite()
	}
	entered, exited, err := e.writeStamped(ctx, now, entries, exits, errCount, mark, sw)
	if err != nil {
		return Stats{}, err
	}
	st.Entered, st.Exited = entered, exited
	return st, nil
}

// openMemberships adds the accounts' open memberships to current, as
// (segment, account) pairs, and, when seqs is not nil, their stamps' seq to
// seqs, in one statement (so one snapshot). Scanned by hand: a full pass
// reads millions.
func (e *Engine) openMemberships(ctx context.Context, accountIDs []int64, current map[[2]int64]bool, seqs map[int64]int64) error {
	// Segment ids start at 1: a 0 marks a stamp's row.
	rows, err := e.db.QueryContext(ctx, `
		SELECT segment_id, account_id, 0 AS seq FROM segment_membership
		WHERE account_id = ANY($1) AND exited_at IS NULL
		UNION ALL
		SELECT 0, account_id, seq FROM segment_stamp
		WHERE $2 AND account_id IN (SELECT unnest($1::bigint[]))`, pq.Array(accountIDs), seqs != nil)
	if err != nil {
		return fmt.Errorf("segment: evaluate: memberships: %w", err)
	}
	defer rows.Close()
	var k [2]int64
	var seq int64
	for rows.Next() {
		if err := rows.Scan(&k[0], &k[1], &seq); err != nil {
			return fmt.Errorf("segment: evaluate: memberships: %w", err)
		}
		if k[0] == 0 {
			seqs[k[1]] = seq
			continue
		}
		current[k] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("segment: evaluate: memberships: %w", err)
	}
	return nil
}

// write applies differences in one transaction, retrying on deadlock.
func (e *Engine) write(ctx context.Context, now time.Time, entries, exits []diff, errCount map[int64]*segError, mark []versionRow) (int, int, error) {
	return e.writeStamped(ctx, now, entries, exits, errCount, mark, stampWrite{})
}

// writeStamped is write, and the stamps that vouch for the differences in
// the same transaction.
func (e *Engine) writeStamped(ctx context.Context, now time.Time, entries, exits []diff, errCount map[int64]*segError, mark []versionRow, sw stampWrite) (int, int, error) {
	if len(entries)+len(exits)+len(errCount)+len(mark) == 0 && sw.empty() {
		return 0, 0, nil
	}
	order := func(d []diff) {
		sort.Slice(d, func(i, j int) bool {
			if d[i].SegmentID != d[j].SegmentID {
				return d[i].SegmentID < d[j].SegmentID
			}
			return d[i].AccountID < d[j].AccountID
		})
	}
	order(entries)
	order(exits)
	var entered, exited int
	err := postgres.InTxRetry(ctx, e.db, func(tx *sqlx.Tx) error {
		// Account rows first, in id order, like every writer of them.
		if len(mark) > 0 {
			ids := make([]int64, len(mark))
			for i, v := range mark {
				ids[i] = v.ID
			}
			if err := account.LockAccounts(ctx, tx, ids); err != nil {
				return err
			}
		}
		var err error
		if entered, err = applyDiffs(ctx, tx, enterSQL, entries, now); err != nil {
			return err
		}
		if exited, err = applyDiffs(ctx, tx, exitSQL, exits, now); err != nil {
			return err
		}
		if len(errCount) > 0 {
			list := make([]*segError, 0, len(errCount))
			for _, se := range errCount {
				list = append(list, se)
			}
			sort.Slice(list, func(i, j int) bool { return list[i].SegmentID < list[j].SegmentID })
			payload, _ := json.Marshal(list)
			if _, err := tx.ExecContext(ctx, `
					UPDATE segment s SET error_count = s.error_count + x.n, last_error = x.message, last_error_at = $2
					FROM jsonb_to_recordset($1::jsonb) AS x(segment_id bigint, n integer, message text)
					WHERE s.id = x.segment_id`, payload, now); err != nil {
				return fmt.Errorf("segment: record errors: %w", err)
			}
		}
		if len(mark) > 0 {
			ids := make([]int64, len(mark))
			vers := make([]int64, len(mark))
			for i, v := range mark {
				ids[i], vers[i] = v.ID, v.Version
			}
			// Only the version this evaluation saw is cleared: a change
			// that arrived meanwhile leaves the account dirty, and pending.
			// An account leaves account_pending only here, while this
			// transaction holds its row lock (taken by the UPDATE, which
			// returns the latest change_version): a writer bumping it
			// either committed before, and is seen, or waits for this
			// transaction and then adds the account again.
			if _, err := tx.ExecContext(ctx, `
					WITH marked AS (
						UPDATE account a SET evaluated_version = x.version
						FROM unnest($1::bigint[], $2::bigint[]) AS x(id, version)
						WHERE a.id = x.id AND a.evaluated_version < x.version
						RETURNING a.id, a.change_version, a.evaluated_version
					)
					DELETE FROM account_pending p USING marked m
					WHERE p.account_id = m.id AND m.change_version <= m.evaluated_version`, pq.Array(ids), pq.Array(vers)); err != nil {
				return fmt.Errorf("segment: mark evaluated: %w", err)
			}
		}
		// Last: the stamps vouch for the differences written above.
		return writeStamps(ctx, tx, now, sw)
	})
	return entered, exited, err
}

// Entries and exits are written only where the account's data and the
// segment's predicate are still the ones evaluated.
const diffGuard = `
	WITH x AS (
		SELECT x.* FROM jsonb_to_recordset($1::jsonb)
		     AS x(segment_id bigint, generation bigint, account_id bigint, version bigint, reason text)
		JOIN account a ON a.id = x.account_id AND a.change_version = x.version
		JOIN segment s ON s.id = x.segment_id AND s.generation = x.generation AND s.deleted_at IS NULL
		ORDER BY x.segment_id, x.account_id
	)`

const enterSQL = diffGuard + `,
	changed AS (
		INSERT INTO segment_membership (segment_id, account_id, entered_at, entry_reason)
		SELECT segment_id, account_id, $2, reason FROM x
		ON CONFLICT (segment_id, account_id) WHERE exited_at IS NULL DO NOTHING
		RETURNING segment_id, account_id, entry_reason AS reason
	)
	INSERT INTO segment_event (segment_id, account_id, kind, reason, at)
	SELECT segment_id, account_id, 'enter', reason, $2 FROM changed`

const exitSQL = diffGuard + `,
	changed AS (
		UPDATE segment_membership m SET exited_at = $2, exit_reason = x.reason
		FROM x
		WHERE m.segment_id = x.segment_id AND m.account_id = x.account_id AND m.exited_at IS NULL
		RETURNING m.segment_id, m.account_id, m.exit_reason AS reason
	)
	INSERT INTO segment_event (segment_id, account_id, kind, reason, at)
	SELECT segment_id, account_id, 'exit', reason, $2 FROM changed`

func applyDiffs(ctx context.Context, tx *sqlx.Tx, query string, d []diff, now time.Time) (int, error) {
	if len(d) == 0 {
		return 0, nil
	}
	payload, err := json.Marshal(d)
	if err != nil {
		return 0, fmt.Errorf("segment: write: %w", err)
	}
	res, err := tx.ExecContext(ctx, query, payload, now)
	if err != nil {
		return 0, fmt.Errorf("segment: write: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// EvaluateAccounts re-evaluates the given accounts against every live segment.
func (e *Engine) EvaluateAccounts(ctx context.Context, accountIDs []int64) (Stats, error) {
	return e.evaluateIDs(ctx, accountIDs, nil)
}

// DirtyRounds bounds one EvaluateDirty call, so a constantly changing account
// cannot keep a task running forever; the caller signals again.
const DirtyRounds = 50

// EvaluateDirty evaluates the accounts whose data changed since they were
// last evaluated, among those with id % shards == shard, until none is left
// (or DirtyRounds batches were done; more reports whether some may remain).
func (e *Engine) EvaluateDirty(ctx context.Context, shard, shards int) (st Stats, more bool, err error) {
	for round := 0; round < DirtyRounds; round++ {
		var batch []int64
		err := e.db.SelectContext(ctx, &batch, `
			SELECT a.id FROM account_pending p JOIN account a ON a.id = p.account_id
			WHERE a.change_version > a.evaluated_version AND p.account_id % $1 = $2
			ORDER BY p.account_id LIMIT $3`, shards, shard, e.BatchSize)
		if err != nil {
			return st, false, fmt.Errorf("segment: dirty: %w", err)
		}
		if len(batch) == 0 {
			return st, false, nil
		}
		s, err := e.evaluateIDs(ctx, batch, nil)
		if err != nil {
			return st, false, err
		}
		st.add(s)
	}
	return st, true, nil
}

// HasDirty reports whether any account waits for re-evaluation.
func (e *Engine) HasDirty(ctx context.Context) (bool, error) {
	n, err := e.Pending(ctx, 1)
	return n > 0, err
}

// Pending counts the accounts waiting for an evaluation of a change, up to
// limit (a bulk import can list every account; counting them all on every
// scrape would cost more than the answer is worth).
func (e *Engine) Pending(ctx context.Context, limit int) (int64, error) {
	var n int64
	err := e.db.GetContext(ctx, &n, `
		SELECT count(*) FROM (
			SELECT 1 FROM account_pending p JOIN account a ON a.id = p.account_id
			WHERE a.change_version > a.evaluated_version LIMIT $1) s`, limit)
	if err != nil {
		return 0, fmt.Errorf("segment: pending: %w", err)
	}
	return n, nil
}

// Shard is a range of account ids of one pass: Lo <= id < Hi.
type Shard struct {
	PassID int64 `json:"pass_id" db:"pass_id"`
	Lo     int64 `json:"lo" db:"lo"`
	Hi     int64 `json:"hi" db:"hi"`
}

// StartPass records a pass under key (idempotent: a key already started
// returns its open shards) and splits the accounts into shards. A full pass
// evaluates every live segment; a build pass (segmentID > 0) evaluates that
// segment's current generation only.
func (e *Engine) StartPass(ctx context.Context, key string, segmentID int64) ([]Shard, error) {
	var shards []Shard
	err := postgres.InTx(ctx, e.db, func(tx *sqlx.Tx) error {
		gens := map[string]int64{}
		q := `SELECT id, generation FROM segment WHERE deleted_at IS NULL`
		args := []any{}
		if segmentID > 0 {
			q += ` AND id = $1`
			args = append(args, segmentID)
		}
		var rows []struct {
			ID         int64 `db:"id"`
			Generation int64 `db:"generation"`
		}
		if err := tx.SelectContext(ctx, &rows, q, args...); err != nil {
			return fmt.Errorf("segment: start pass: %w", err)
		}
		for _, r := range rows {
			gens[strconv.FormatInt(r.ID, 10)] = r.Generation
		}
		payload, _ := json.Marshal(gens)
		var passID int64
		err := tx.GetContext(ctx, &passID, `
			INSERT INTO segment_pass (key, all_segments, generations, started_at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (key) DO NOTHING RETURNING id`, key, segmentID == 0, payload, e.clock.Now())
		if errors.Is(err, sql.ErrNoRows) {
			// Started already (by another scheduler, or before a restart).
			return tx.SelectContext(ctx, &shards, `
				SELECT s.pass_id, s.lo, s.hi FROM segment_pass_shard s JOIN segment_pass p ON p.id = s.pass_id
				WHERE p.key = $1 AND s.done_at IS NULL ORDER BY s.lo`, key)
		}
		if err != nil {
			return fmt.Errorf("segment: start pass: %w", err)
		}
		// Shards by id range, covering every id up to the current maximum.
		err = tx.SelectContext(ctx, &shards, `
			INSERT INTO segment_pass_shard (pass_id, lo, hi)
			SELECT $1, lo, lo + $2 FROM generate_series(
				(SELECT coalesce(min(id), 1) FROM account),
				(SELECT coalesce(max(id), 0) FROM account), $2) AS lo
			RETURNING pass_id, lo, hi`, passID, e.ShardSize)
		if err != nil {
			return fmt.Errorf("segment: start pass: shards: %w", err)
		}
		if len(shards) == 0 {
			return e.finishPass(ctx, tx, passID)
		}
		return nil
	})
	return shards, err
}

// RunShard evaluates one shard of a pass and, when it was the last, finishes
// the pass: the segments it built are marked ready. Running a shard twice, or
// two shards at once, is safe.
func (e *Engine) RunShard(ctx context.Context, sh Shard) (Stats, error) {
	var pass struct {
		Full        bool            `db:"all_segments"`
		Generations json.RawMessage `db:"generations"`
		Finished    *time.Time      `db:"finished_at"`
	}
	if err := e.db.GetContext(ctx, &pass, `SELECT all_segments, generations, finished_at FROM segment_pass WHERE id = $1`, sh.PassID); err != nil {
		return Stats{}, fmt.Errorf("segment: run shard %d: %w", sh.PassID, err)
	}
	var only map[int64]int64
	if !pass.Full {
		var g map[string]int64
		if err := json.Unmarshal(pass.Generations, &g); err != nil {
			return Stats{}, fmt.Errorf("segment: run shard: %w", err)
		}
		only = map[int64]int64{}
		for k, v := range g {
			id, _ := strconv.ParseInt(k, 10, 64)
			only[id] = v
		}
	}
	var st Stats
	var err error
	if pass.Full {
		st, err = e.runFull(ctx, sh)
	} else {
		st, err = e.runBuild(ctx, sh, only)
	}
	if err != nil {
		return st, err
	}
	err = postgres.InTx(ctx, e.db, func(tx *sqlx.Tx) error {
		// Shards finishing at once take turns on the pass row, and each
		// counts the open shards in a statement of its own, after the lock:
		// a statement's snapshot is taken when it starts, so a count in the
		// statement that waited for the lock would miss the shard whose
		// transaction it waited for, and when the last two shards finish
		// together neither would finish the pass.
		if _, err := tx.ExecContext(ctx, `SELECT 1 FROM segment_pass WHERE id = $1 FOR UPDATE`, sh.PassID); err != nil {
			return fmt.Errorf("segment: shard done: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `
			UPDATE segment_pass_shard SET done_at = $3 WHERE pass_id = $1 AND lo = $2 AND done_at IS NULL`,
			sh.PassID, sh.Lo, e.clock.Now()); err != nil {
			return fmt.Errorf("segment: shard done: %w", err)
		}
		var open int
		if err := tx.GetContext(ctx, &open, `
			SELECT count(*) FROM segment_pass_shard WHERE pass_id = $1 AND done_at IS NULL`, sh.PassID); err != nil {
			return fmt.Errorf("segment: shard done: %w", err)
		}
		if open == 0 {
			return e.finishPass(ctx, tx, sh.PassID)
		}
		return nil
	})
	return st, err
}

// runFull evaluates a shard of a full pass: the accounts and segments that
// can have changed since the accounts' stamps (see stamp.go).
func (e *Engine) runFull(ctx context.Context, sh Shard) (Stats, error) {
	p, err := e.plan(ctx, nil)
	if err != nil {
		return Stats{}, err
	}
	targets, err := e.candidates(ctx, p, sh.Lo, sh.Hi, e.clock.Now().Truncate(time.Microsecond))
	if err != nil {
		return Stats{}, err
	}
	var st Stats
	for first := true; len(targets) > 0; first = false {
		if !first {
			// Segments (or the model) may have changed since the
			// candidates were chosen: the rest is evaluated in full under
			// the new ones. (The accounts not chosen keep memberships that
			// were right under the old ones, like after a pass that ran
			// just before the change; the change's own build or pass sees
			// to them.)
			np, err := e.plan(ctx, nil)
			if err != nil {
				return st, err
			}
			if np.fp != p.fp {
				for i := range targets {
					targets[i].full = true
				}
			}
			p = np
		}
		n := min(len(targets), e.BatchSize)
		s, err := e.evaluate(ctx, p, targets[:n])
		if err != nil {
			return st, err
		}
		st.add(s)
		targets = targets[n:]
	}
	return st, nil
}

// runBuild evaluates every account of a shard of a build pass against the
// segments it builds.
func (e *Engine) runBuild(ctx context.Context, sh Shard, only map[int64]int64) (Stats, error) {
	var st Stats
	cursor := sh.Lo
	for {
		var batch []int64
		if err := e.db.SelectContext(ctx, &batch, `
			SELECT id FROM account WHERE id >= $1 AND id < $2 ORDER BY id LIMIT $3`, cursor, sh.Hi, e.BatchSize); err != nil {
			return st, fmt.Errorf("segment: run shard: %w", err)
		}
		if len(batch) == 0 {
			return st, nil
		}
		s, err := e.evaluateIDs(ctx, batch, only)
		if err != nil {
			return st, err
		}
		st.add(s)
		cursor = batch[len(batch)-1] + 1
	}
}

// finishPass closes a pass and marks the segment generations it evaluated as built.
func (e *Engine) finishPass(ctx context.Context, tx *sqlx.Tx, passID int64) error {
	_, err := tx.ExecContext(ctx, `
		WITH p AS (
			UPDATE segment_pass SET finished_at = $2 WHERE id = $1 AND finished_at IS NULL
			RETURNING generations
		)
		UPDATE segment s SET built_generation = g.generation
		FROM p, jsonb_each_text(p.generations) AS kv(id, gen),
		     LATERAL (SELECT kv.id::bigint AS id, kv.gen::bigint AS generation) g
		WHERE s.id = g.id AND s.built_generation < g.generation AND s.generation = g.generation`,
		passID, e.clock.Now())
	if err != nil {
		return fmt.Errorf("segment: finish pass: %w", err)
	}
	return nil
}

// OpenShards lists the unfinished shards of passes started before the given
// time, for the reconciler to re-enqueue after Redis lost them.
func (e *Engine) OpenShards(ctx context.Context, startedBefore time.Time, limit int) ([]Shard, error) {
	var out []Shard
	err := e.db.SelectContext(ctx, &out, `
		SELECT s.pass_id, s.lo, s.hi FROM segment_pass p JOIN segment_pass_shard s ON s.pass_id = p.id
		WHERE p.finished_at IS NULL AND p.started_at < $1 AND s.done_at IS NULL
		ORDER BY s.pass_id, s.lo LIMIT $2`, startedBefore, limit)
	if err != nil {
		return nil, fmt.Errorf("segment: open shards: %w", err)
	}
	return out, nil
}

// Unbuilt lists segments whose current generation has no finished build,
// as (id, generation) pairs.
func (e *Engine) Unbuilt(ctx context.Context) ([][2]int64, error) {
	var rows []struct {
		ID         int64 `db:"id"`
		Generation int64 `db:"generation"`
	}
	if err := e.db.SelectContext(ctx, &rows, `
		SELECT id, generation FROM segment WHERE deleted_at IS NULL AND built_generation < generation ORDER BY id`); err != nil {
		return nil, fmt.Errorf("segment: unbuilt: %w", err)
	}
	out := make([][2]int64, len(rows))
	for i, r := range rows {
		out[i] = [2]int64{r.ID, r.Generation}
	}
	return out, nil
}

// BuildKey names the pass that builds a segment generation.
func BuildKey(segmentID, generation int64) string {
	return fmt.Sprintf("build:%d:%d", segmentID, generation)
}

// Preview counts the accounts a predicate matches now and returns up to
// sample of their external ids, saving nothing. Accounts are streamed in
// batches; runtime errors count as not matching and are counted.
func (e *Engine) Preview(ctx context.Context, src string, sample int) (count int, ids []string, runtimeErrors int, err error) {
	pred, err := Compile(src, e.clock)
	if err != nil {
		return 0, nil, 0, err
	}
	now := e.clock.Now()
	ids = []string{}
	var m Matcher
	var cursor int64
	for {
		var batch []struct {
			ID         int64  `db:"id"`
			ExternalID string `db:"external_id"`
		}
		if err := e.db.SelectContext(ctx, &batch, `
			SELECT id, external_id FROM account WHERE id > $1 ORDER BY id LIMIT $2`, cursor, e.BatchSize); err != nil {
			return 0, nil, 0, fmt.Errorf("segment: preview: %w", err)
		}
		if len(batch) == 0 {
			return count, ids, runtimeErrors, nil
		}
		accIDs := make([]int64, len(batch))
		for i, b := range batch {
			accIDs[i] = b.ID
		}
		profiles, err := account.CachedProfiles(ctx, e.db, accIDs, now, pred.Maps)
		if err != nil {
			return 0, nil, 0, err
		}
		for _, b := range batch {
			ok, err := m.Match(pred, profiles[b.ID].Profile)
			if err != nil {
				runtimeErrors++
			}
			if ok {
				count++
				if len(ids) < sample {
					ids = append(ids, b.ExternalID)
				}
			}
		}
		cursor = batch[len(batch)-1].ID
	}
}
