// Package account owns accounts, contacts, CSMs and the usage data ingested for
// them (events, daily rollups, metric snapshots), and computes each account's
// profile: the predicate environment that segments are evaluated against.
//
// Every write that can change a profile bumps the account's change_version in
// the same statement and adds the account to account_pending in the same
// transaction, so the segment engine can find dirty accounts in PostgreSQL
// without trusting the queue to have delivered a signal.
package account

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Limits on ingested values.
const (
	MaxBatch      = 10000 // items per request
	maxIDLen      = 200
	maxTextLen    = 1000
	maxFutureSkew = 5 * time.Minute // how far ahead of the clock an event may be stamped
	// maxMRR keeps sums of MRR (revenue at risk) finite: PostgreSQL's sum
	// of double precision fails on overflow.
	maxMRR = 1e15
)

// Store reads and writes accounts and their usage.
type Store struct {
	db    *sqlx.DB
	clock clock.Clock
	// prepared runs the ingest statement, the hot one.
	prepared *postgres.Prepared
	// ingestSlots admits event-ingest statements: at most its capacity
	// run at once (see IngestConcurrency).
	ingestSlots chan struct{}
}

// DefaultIngestConcurrency is how many event batches a Store writes at once
// unless told otherwise (see IngestConcurrency).
const DefaultIngestConcurrency = 2

// Option configures a Store.
type Option func(*Store)

// IngestConcurrency sets how many event batches a Store writes to PostgreSQL
// at once (at least 1); more wait their turn, in the process, for as long as
// their context allows. Concurrent batches share accounts, and each waits at
// the first account another holds until that one commits: in
// BenchmarkIngestEvents (1,000-event batches over 10,000 accounts, 2 cores)
// 2 statements at once wrote 52.6–53.1k events/s where 4 wrote 46.6–47.7k and
// 8 wrote 41k. The bound is per process.
func IngestConcurrency(n int) Option {
	return func(s *Store) { s.ingestSlots = make(chan struct{}, max(n, 1)) }
}

// NewStore returns an account store.
func NewStore(db *sqlx.DB, clk clock.Clock, opts ...Option) *Store {
	s := &Store{db: db, clock: clk, prepared: postgres.NewPrepared(db)}
	IngestConcurrency(DefaultIngestConcurrency)(s)
	for _, o := range opts {
		o(s)
	}
	return s
}

// Account is an account as stored.
type Account struct {
	ID         int64           `db:"id" json:"-"`
	ExternalID string          `db:"external_id" json:"id"`
	Name       string          `db:"name" json:"name"`
	Plan       string          `db:"plan" json:"plan"`
	MRR        float64         `db:"mrr" json:"mrr"`
	Seats      int             `db:"seats" json:"seats"`
	SignupAt   time.Time       `db:"signup_at" json:"signup_at"`
	Stage      string          `db:"stage" json:"stage"`
	Tier       string          `db:"tier" json:"tier"`
	Region     string          `db:"region" json:"region"`
	CSMEmail   string          `db:"csm_email" json:"csm_email"`
	Timezone   string          `db:"timezone" json:"timezone"`
	Traits     json.RawMessage `db:"traits" json:"traits"`
	CreatedAt  time.Time       `db:"created_at" json:"created_at"`
	UpdatedAt  time.Time       `db:"updated_at" json:"updated_at"`
}

// AccountInput is one account to upsert. A field left out (nil) keeps its
// stored value, or its default for a new account. Traits are merged into the
// stored traits; a trait set to null is removed.
type AccountInput struct {
	ID       string          `json:"id"`
	Name     *string         `json:"name,omitempty"`
	Plan     *string         `json:"plan,omitempty"`
	MRR      *float64        `json:"mrr,omitempty"`
	Seats    *int            `json:"seats,omitempty"`
	SignupAt *time.Time      `json:"signup_at,omitempty"`
	Stage    *string         `json:"stage,omitempty"`
	Tier     *string         `json:"tier,omitempty"`
	Region   *string         `json:"region,omitempty"`
	CSMEmail *string         `json:"csm_email,omitempty"`
	Timezone *string         `json:"timezone,omitempty"`
	Traits   json.RawMessage `json:"traits,omitempty"`
}

// checkString adds a problem when s is longer than max bytes or is not text
// PostgreSQL stores; it reports whether s is fine.
func checkString(items *errs.Items, i int, field, s string, max int) bool {
	if p := postgres.BoundedTextProblem(s, max); p != "" {
		items.Add(i, field, "%s", p)
		return false
	}
	return true
}

func checkID(items *errs.Items, i int, field, id string) {
	if strings.TrimSpace(id) == "" {
		items.Add(i, field, "is required")
		return
	}
	checkString(items, i, field, id, maxIDLen)
}

func checkText(items *errs.Items, i int, field string, s *string) {
	if s != nil {
		checkString(items, i, field, *s, maxTextLen)
	}
}

// checkTime checks a time a client sent: one PostgreSQL stores, and not
// ahead of the clock (now) by more than maxFutureSkew.
func checkTime(items *errs.Items, i int, field string, t, now time.Time) {
	if p := postgres.TimeProblem(t); p != "" {
		items.Add(i, field, "%s", p)
	} else if t.After(now.Add(maxFutureSkew)) {
		items.Add(i, field, "is more than %s in the future", maxFutureSkew)
	}
}

func checkTimezone(items *errs.Items, i int, field string, tz *string) {
	if tz == nil || *tz == "" {
		return
	}
	if _, err := time.LoadLocation(*tz); err != nil || *tz == "Local" {
		items.Add(i, field, "%q is not an IANA time zone such as Europe/Paris", *tz)
	}
}

// checkObject accepts a JSON object that PostgreSQL's jsonb stores, or
// nothing (absent or null).
func checkObject(items *errs.Items, i int, field string, raw json.RawMessage) {
	if isAbsent(raw) {
		return
	}
	// Valid JSON whose first token opens an object is an object; no need
	// to decode it.
	if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) == 0 || t[0] != '{' || !json.Valid(raw) {
		items.Add(i, field, "must be a JSON object")
	} else if p := postgres.JSONProblem(raw); p != "" {
		items.Add(i, field, "%s", p)
	}
}

func checkBatchSize(n int, what string) error {
	if n == 0 {
		return errs.E(errs.Invalid, "empty_batch", "no %s given", what)
	}
	if n > MaxBatch {
		return errs.E(errs.TooLarge, "batch_too_large", "at most %d %s per request, got %d", MaxBatch, what, n)
	}
	return nil
}

// checkDuplicates reports ids that stand more than once in a batch.
func checkDuplicates(items *errs.Items, field string, ids []string) {
	seen := make(map[string]int, len(ids))
	for i, id := range ids {
		if first, ok := seen[id]; ok && id != "" {
			items.Add(i, field, "repeats item %d; send each %s once per batch", first, field)
			continue
		}
		seen[id] = i
	}
}

// lockKeys takes transaction-scoped advisory locks on the given keys, in a
// fixed order, so that concurrent upserts of the same new or existing row
// serialise instead of overwriting each other's merged fields.
func lockKeys(ctx context.Context, tx *sqlx.Tx, namespace string, keys []string) error {
	_, err := tx.ExecContext(ctx, `
		SELECT pg_advisory_xact_lock(h)
		FROM (SELECT DISTINCT hashtextextended($1 || k, 0) AS h FROM unnest($2::text[]) AS k) s
		ORDER BY h`, namespace, pq.Array(keys))
	return err
}

// LockAccounts locks account rows in id order for the rest of the
// transaction. Transactions that update several account rows (metrics,
// upserts, the segment engine) take their locks this way first, so that two
// of them never wait for each other in a cycle. Ingest takes the same
// id-ordered account locks last, inside its one statement (see insertEvents).
func LockAccounts(ctx context.Context, q postgres.Queryer, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := q.ExecContext(ctx, `SELECT 1 FROM account WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE`, pq.Array(ids))
	if err != nil {
		return fmt.Errorf("account: lock: %w", err)
	}
	return nil
}

// MarkPending adds accounts whose change_version this transaction bumped to
// account_pending, where the segment engine looks for accounts to evaluate
// (see migration 00015). Call it after the bump, in the same transaction:
// the transaction must hold the accounts' row locks, so that the engine
// cannot take them off the list between the bump and this insert. Writers
// that bump in one statement add the same INSERT as a step of it.
func MarkPending(ctx context.Context, q postgres.Queryer, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := q.ExecContext(ctx, `
		INSERT INTO account_pending (account_id) SELECT id FROM unnest($1::bigint[]) AS id ORDER BY id
		ON CONFLICT DO NOTHING`, pq.Array(ids))
	if err != nil {
		return fmt.Errorf("account: mark pending: %w", err)
	}
	return nil
}

// MarkChanged records that the accounts' data changed outside the account
// store (a message sent to them, a reply): it locks them in id order, bumps
// their change_version and lists them in account_pending, in one statement,
// so the segment engine recomputes their profiles (emails_30d, replies_30d)
// and health. Callers signal the worker pool once it has committed.
func MarkChanged(ctx context.Context, q postgres.Queryer, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := q.ExecContext(ctx, `
		WITH locked AS MATERIALIZED (
			SELECT id FROM account WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE
		), bump AS (
			UPDATE account a SET change_version = a.change_version + 1 FROM locked WHERE a.id = locked.id
		)
		INSERT INTO account_pending (account_id) SELECT id FROM locked ORDER BY id
		ON CONFLICT DO NOTHING`, pq.Array(ids))
	if err != nil {
		return fmt.Errorf("account: mark changed: %w", err)
	}
	return nil
}

// Suppress records addresses no mail may go to again (hard bounces,
// complaints), emails[i] because of reasons[i] (the two are as long), in
// one statement: addresses are lowercased,
// reasons (which often quote a remote server) cleaned, and an address
// already suppressed keeps its first reason.
func Suppress(ctx context.Context, q postgres.Queryer, emails, reasons []string, at time.Time) error {
	if len(emails) == 0 {
		return nil
	}
	lower := make(pq.StringArray, len(emails))
	why := make(pq.StringArray, len(emails))
	for i := range emails {
		lower[i], why[i] = strings.ToLower(emails[i]), postgres.CleanText(reasons[i])
	}
	_, err := q.ExecContext(ctx, `
		INSERT INTO suppression (email, reason, at)
		SELECT x.email, x.reason, $3 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(email, reason, i)
		ORDER BY x.i
		ON CONFLICT (email) DO NOTHING`, lower, why, at)
	if err != nil {
		return fmt.Errorf("account: suppress: %w", err)
	}
	return nil
}

// UpsertAccounts creates or updates accounts by their external id and returns
// the internal ids of those whose data actually changed.
func (s *Store) UpsertAccounts(ctx context.Context, in []AccountInput) ([]int64, error) {
	if err := checkBatchSize(len(in), "accounts"); err != nil {
		return nil, err
	}
	var items errs.Items
	ids := make([]string, len(in))
	csmOf := map[int]string{} // the CSM email of item i, to look up
	for i, a := range in {
		ids[i] = a.ID
		checkID(&items, i, "id", a.ID)
		for field, v := range map[string]*string{"name": a.Name, "plan": a.Plan, "stage": a.Stage, "tier": a.Tier, "region": a.Region} {
			checkText(&items, i, field, v)
		}
		if a.MRR != nil && (*a.MRR < 0 || *a.MRR > maxMRR) {
			items.Add(i, "mrr", "must be from 0 to %g", maxMRR)
		}
		if a.Seats != nil && (*a.Seats < 0 || *a.Seats > math.MaxInt32) {
			items.Add(i, "seats", "must be a whole number from 0 to %d", math.MaxInt32)
		}
		if a.SignupAt != nil {
			checkTime(&items, i, "signup_at", *a.SignupAt, s.clock.Now())
		}
		checkTimezone(&items, i, "timezone", a.Timezone)
		checkObject(&items, i, "traits", a.Traits)
		if a.CSMEmail != nil && *a.CSMEmail != "" {
			in[i].CSMEmail = ptr(strings.ToLower(strings.TrimSpace(*a.CSMEmail)))
			if checkString(&items, i, "csm_email", *in[i].CSMEmail, maxTextLen) {
				csmOf[i] = *in[i].CSMEmail
			}
		}
	}
	checkDuplicates(&items, "id", ids)
	var changed []int64
	err := postgres.InTx(ctx, s.db, func(tx *sqlx.Tx) error {
		if len(csmOf) > 0 {
			var known []string
			if err := tx.SelectContext(ctx, &known, `SELECT email FROM csm WHERE email = ANY($1)`, pq.Array(slices.Collect(maps.Values(csmOf)))); err != nil {
				return fmt.Errorf("account: upsert: %w", err)
			}
			have := make(map[string]bool, len(known))
			for _, e := range known {
				have[e] = true
			}
			for i := range in {
				if e, ok := csmOf[i]; ok && !have[e] {
					items.Add(i, "csm_email", "no CSM %q; create it with POST /v1/csms first", e)
				}
			}
		}
		if err := items.Err("accounts"); err != nil {
			return err
		}
		if err := lockKeys(ctx, tx, "account:", ids); err != nil {
			return fmt.Errorf("account: upsert: lock: %w", err)
		}
		existing, err := s.ResolveIDs(ctx, tx, ids)
		if err != nil {
			return err
		}
		if err := LockAccounts(ctx, tx, values(existing)); err != nil {
			return err
		}
		payload, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("account: upsert: %w", err)
		}
		// The input is merged with the stored row (x.f NULL = keep) in one
		// statement; the conflict branch only writes, and bumps
		// change_version, when a value really differs.
		err = tx.SelectContext(ctx, &changed, `
			WITH input AS (
				SELECT x.ordinality AS ord, x.id AS external_id,
				       coalesce(x.name, a.name, '') AS name,
				       coalesce(x.plan, a.plan, '') AS plan,
				       coalesce(x.mrr, a.mrr, 0) AS mrr,
				       coalesce(x.seats, a.seats, 0) AS seats,
				       coalesce(x.signup_at, a.signup_at, $2) AS signup_at,
				       coalesce(x.stage, a.stage, '') AS stage,
				       coalesce(x.tier, a.tier, '') AS tier,
				       coalesce(x.region, a.region, '') AS region,
				       CASE WHEN x.csm_email IS NULL THEN a.csm_id ELSE c.id END AS csm_id,
				       coalesce(x.timezone, a.timezone, '') AS timezone,
				       jsonb_strip_nulls(coalesce(a.traits, '{}') || coalesce(x.traits, '{}')) AS traits
				FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (id text, name text, plan text, mrr double precision,
				       seats integer, signup_at timestamptz, stage text, tier text, region text,
				       csm_email text, timezone text, traits jsonb)) WITH ORDINALITY AS x
				LEFT JOIN account a ON a.external_id = x.id
				LEFT JOIN csm c ON c.email = x.csm_email
			)
			INSERT INTO account AS a (external_id, name, plan, mrr, seats, signup_at, stage, tier, region,
			                          csm_id, timezone, traits, created_at, updated_at)
			SELECT external_id, name, plan, mrr, seats, signup_at, stage, tier, region,
			       csm_id, timezone, traits, $2, $2
			FROM input ORDER BY ord -- ids follow the order items were sent in
			ON CONFLICT (external_id) DO UPDATE SET
				name = EXCLUDED.name, plan = EXCLUDED.plan, mrr = EXCLUDED.mrr, seats = EXCLUDED.seats,
				signup_at = EXCLUDED.signup_at, stage = EXCLUDED.stage, tier = EXCLUDED.tier,
				region = EXCLUDED.region, csm_id = EXCLUDED.csm_id, timezone = EXCLUDED.timezone,
				traits = EXCLUDED.traits, updated_at = EXCLUDED.updated_at,
				change_version = a.change_version + 1
			WHERE (a.name, a.plan, a.mrr, a.seats, a.signup_at, a.stage, a.tier, a.region, a.csm_id, a.timezone, a.traits)
			      IS DISTINCT FROM
			      (EXCLUDED.name, EXCLUDED.plan, EXCLUDED.mrr, EXCLUDED.seats, EXCLUDED.signup_at, EXCLUDED.stage,
			       EXCLUDED.tier, EXCLUDED.region, EXCLUDED.csm_id, EXCLUDED.timezone, EXCLUDED.traits)
			RETURNING a.id`, payload, s.clock.Now())
		if err != nil {
			return fmt.Errorf("account: upsert: %w", err)
		}
		// New accounts too: they wait for their first evaluation.
		return MarkPending(ctx, tx, changed)
	})
	return changed, err
}

// Get returns one account by its external id.
func (s *Store) Get(ctx context.Context, externalID string) (Account, error) {
	var a Account
	err := s.db.GetContext(ctx, &a, `
		SELECT a.id, a.external_id, a.name, a.plan, a.mrr, a.seats, a.signup_at, a.stage, a.tier,
		       a.region, coalesce(c.email, '') AS csm_email, a.timezone, a.traits, a.created_at, a.updated_at
		FROM account a LEFT JOIN csm c ON c.id = a.csm_id
		WHERE a.external_id = $1`, externalID)
	if err != nil {
		return Account{}, postgres.NotFound(err, "account: get", errs.E(errs.NotFound, "account_not_found", "no account with id %q", externalID))
	}
	return a, nil
}

// ResolveIDs maps external account ids to internal ones; unknown ids are
// absent, as are ids that are not text (no account has one).
func (s *Store) ResolveIDs(ctx context.Context, q postgres.Queryer, externalIDs []string) (map[string]int64, error) {
	rows := []struct {
		ID         int64  `db:"id"`
		ExternalID string `db:"external_id"`
	}{}
	text := slices.DeleteFunc(slices.Clone(externalIDs), func(id string) bool { return postgres.TextProblem(id) != "" })
	if err := q.SelectContext(ctx, &rows, `SELECT id, external_id FROM account WHERE external_id = ANY($1)`, pq.Array(text)); err != nil {
		return nil, fmt.Errorf("account: resolve ids: %w", err)
	}
	m := make(map[string]int64, len(rows))
	for _, r := range rows {
		m[r.ExternalID] = r.ID
	}
	return m, nil
}

// unknownAccount tells whether id, given and text, names no account in
// known (a malformed id has had its own problem reported).
func unknownAccount(known map[string]int64, id string) bool {
	_, ok := known[id]
	return !ok && id != "" && postgres.TextProblem(id) == ""
}

func checkEmail(items *errs.Items, i int, field string, email *string, required bool) {
	if email == nil || *email == "" {
		if required {
			items.Add(i, field, "is required")
		}
		return
	}
	a, err := mail.ParseAddress(*email)
	if err != nil || a.Address != *email {
		items.Add(i, field, "%q is not an email address", *email)
	}
}

func ptr[T any](v T) *T { return &v }

// isAbsent reports whether an optional JSON value was left out or sent as null.
func isAbsent(raw json.RawMessage) bool {
	return len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null"
}

func values(m map[string]int64) []int64 {
	out := make([]int64, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
