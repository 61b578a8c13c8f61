package account

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Event names with a meaning of their own in the profile.
const (
	EventLogin       = "login"        // counts in logins_7d/logins_30d and sets last_login_at
	EventFeatureUsed = "feature_used" // properties.feature counts in features
)

const maxPropertiesLen = 32 << 10

// EventInput is one usage event. An event must name an account that exists:
// events for unknown accounts are refused (see IngestEvents).
type EventInput struct {
	AccountID  string          `json:"account_id"`
	ContactID  string          `json:"contact_id,omitempty"`
	Name       string          `json:"name"`
	Properties json.RawMessage `json:"properties,omitempty"`
	Timestamp  *time.Time      `json:"timestamp,omitempty"`
	// MessageID is an optional idempotency key: an event whose MessageID was
	// seen before is counted once.
	MessageID string `json:"message_id,omitempty"`
}

// IngestResult says what an ingest call did.
type IngestResult struct {
	Accepted   int        `json:"accepted"`
	Duplicates int        `json:"duplicates"`
	Rejected   errs.Items `json:"rejected,omitempty"`
	// Changed lists the internal ids of the accounts whose data changed.
	Changed []int64 `json:"-"`
}

// storedEvent is an event ready to insert, still naming its account by
// external id (the statement resolves it).
type storedEvent struct {
	Account    string          `json:"account"`
	UserKey    string          `json:"user_key"`
	Name       string          `json:"name"`
	Properties json.RawMessage `json:"properties"`
	OccurredAt time.Time       `json:"occurred_at"`
	MessageID  *string         `json:"message_id"`
}

// IngestEvents stores usage events, their daily rollups and user activity, and
// marks their accounts changed, in one statement.
//
// An event naming an unknown account is a bad item: accounts are created by
// POST /v1/accounts (or a Segment "group" call), never implied by an event, so
// a typo in an id cannot create a phantom account. With partial false (the
// /v1/events contract) any bad item refuses the whole batch; with partial true
// (Segment's contract) the good items are kept and the bad ones reported in
// the result.
func (s *Store) IngestEvents(ctx context.Context, in []EventInput, partial bool) (IngestResult, error) {
	if err := checkBatchSize(len(in), "events"); err != nil {
		return IngestResult{}, err
	}
	now := s.clock.Now()
	var items errs.Items
	for i, e := range in {
		checkID(&items, i, "account_id", e.AccountID)
		checkString(&items, i, "contact_id", e.ContactID, maxIDLen)
		checkID(&items, i, "name", e.Name)
		if len(e.Properties) > maxPropertiesLen {
			items.Add(i, "properties", "is larger than %d bytes", maxPropertiesLen)
		} else {
			checkObject(&items, i, "properties", e.Properties)
		}
		if e.Name == EventFeatureUsed && !hasFeature(e.Properties) {
			items.Add(i, "properties.feature", "a feature_used event needs properties.feature, a non-empty string")
		}
		if e.Timestamp != nil {
			checkTime(&items, i, "timestamp", *e.Timestamp, now)
		}
		checkString(&items, i, "message_id", e.MessageID, maxIDLen)
	}
	if len(items) > 0 && !partial {
		// Refused whole; the answer lists every bad item, unknown
		// accounts too.
		if err := s.addUnknownAccounts(ctx, &items, in); err != nil {
			return IngestResult{}, err
		}
		return IngestResult{}, items.Err("events")
	}
	bad := make(map[int]bool, len(items))
	for _, it := range items {
		bad[it.Index] = true
	}
	rows := make([]storedEvent, 0, len(in))
	pos := make([]int, 0, len(in)) // rows[k] is in[pos[k]]
	for i, e := range in {
		if bad[i] {
			continue
		}
		at := now
		if e.Timestamp != nil {
			at = e.Timestamp.UTC()
		}
		props := e.Properties
		if isAbsent(props) {
			props = json.RawMessage(`{}`)
		}
		var mid *string
		if e.MessageID != "" {
			mid = ptr(e.MessageID)
		}
		rows = append(rows, storedEvent{Account: e.AccountID, UserKey: e.ContactID, Name: e.Name, Properties: props, OccurredAt: at, MessageID: mid})
		pos = append(pos, i)
	}
	res := IngestResult{Rejected: items}
	if len(rows) == 0 {
		return res, nil
	}
	out, err := s.insertEvents(ctx, rows, now, partial)
	if err != nil {
		return IngestResult{}, err
	}
	for _, k := range out.unknown {
		i := pos[k]
		items.Add(i, "account_id", "no account %q; create it with POST /v1/accounts first", in[i].AccountID)
	}
	if len(out.unknown) > 0 && !partial {
		return IngestResult{}, items.Err("events") // nothing was stored
	}
	res.Rejected, res.Changed = items, out.changed
	res.Accepted = out.inserted
	res.Duplicates = len(rows) - len(out.unknown) - out.inserted
	return res, nil
}

// addUnknownAccounts adds to items the events naming an account that does
// not exist.
func (s *Store) addUnknownAccounts(ctx context.Context, items *errs.Items, in []EventInput) error {
	ids := make([]string, 0, len(in))
	for _, e := range in {
		ids = append(ids, e.AccountID)
	}
	known, err := s.ResolveIDs(ctx, s.db, ids)
	if err != nil {
		return err
	}
	for i, e := range in {
		if unknownAccount(known, e.AccountID) {
			items.Add(i, "account_id", "no account %q; create it with POST /v1/accounts first", e.AccountID)
		}
	}
	return nil
}

// hasFeature tells whether the properties of a feature_used event name the
// feature: a non-empty string under exactly "feature" (SQL reads exactly
// that key; JSON struct decoding would match it without regard to case).
func hasFeature(props json.RawMessage) bool {
	var p map[string]json.RawMessage
	if json.Unmarshal(props, &p) != nil {
		return false
	}
	var f string
	return json.Unmarshal(p["feature"], &f) == nil && f != "" && len(f) <= maxIDLen
}

// inserted is what insertEvents did.
type inserted struct {
	inserted int     // events stored (not already seen by message id)
	changed  []int64 // the accounts whose data changed
	unknown  []int   // positions of rows naming no account
}

// insertEvents writes events and everything derived from them in one
// statement (one round trip a batch, no transaction around it): it resolves
// the events' accounts, and — unless some account is unknown and partial is
// false, when it writes nothing — writes the raw rows (skipping message ids
// already seen), the daily rollups, user activity, and the accounts'
// last_login_at and change_version (and their place in account_pending). It
// answers the rows naming no account, and what it wrote.
//
// Concurrent batches meet on message ids, rollup, activity and account rows,
// so the statement takes its row locks in one order, and concurrent ingests
// wait for each other instead of deadlocking: message ids, rollup keys and
// activity keys, each sorted, then the accounts in id order ("locked"). The
// sub-statements of a WITH otherwise run in an unspecified order, so each
// waits for the one before through a condition on its row count:
// "(SELECT count(*) FROM daily) >= 0" always holds, but cannot be tested
// before daily has run to completion.
//
// Unlike the other writers of account rows, which lock them first
// (LockAccounts), ingest locks its accounts last: nearly every pair of large
// batches shares some accounts, and locking them first would run overlapping
// batches one after the other from start to commit, where locked last they
// overlap until the account UPDATE. Only ingest writes rollups and activity,
// so the two orders agree.
func (s *Store) insertEvents(ctx context.Context, rows []storedEvent, now time.Time, partial bool) (inserted, error) {
	payload, err := json.Marshal(rows)
	if err != nil {
		return inserted{}, fmt.Errorf("account: ingest: %w", err)
	}
	select {
	case s.ingestSlots <- struct{}{}:
		defer func() { <-s.ingestSlots }()
	case <-ctx.Done():
		return inserted{}, fmt.Errorf("account: ingest: waiting for a turn: %w", ctx.Err())
	}
	var out []struct {
		ID      *int64 `db:"id"`
		N       int    `db:"n"`
		Unknown *int   `db:"unknown"`
	}
	err = s.prepared.Select(ctx, &out, ingestSQL, payload, now, partial)
	if err != nil {
		return inserted{}, fmt.Errorf("account: ingest: %w", err)
	}
	var res inserted
	for _, r := range out {
		if r.Unknown != nil {
			res.unknown = append(res.unknown, *r.Unknown)
			continue
		}
		res.inserted += r.N
		res.changed = append(res.changed, *r.ID)
	}
	return res, nil
}

// ingestSQL is insertEvents' statement: $1 the rows (JSON), $2 now, $3
// partial. It is prepared, and PostgreSQL keeps its generic plan (its
// estimate of a JSON recordset does not depend on the contents anyway): a
// batch is one round trip, neither parsed nor planned, ~1.4 ms less of the
// database's time a batch in BenchmarkIngestEvents. (Reading the JSON
// parameter itself takes 2–3 ms of a batch's bind.)
const ingestSQL = `
		WITH x AS MATERIALIZED (
			SELECT x.*, a.id AS account_id
			FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (account text, user_key text, name text,
			     properties jsonb, occurred_at timestamptz, message_id text))
			     WITH ORDINALITY AS x(account, user_key, name, properties, occurred_at, message_id, i)
			LEFT JOIN account a ON a.external_id = x.account
		), ins AS (
			INSERT INTO usage_event (account_id, user_key, name, properties, occurred_at, received_at, message_id)
			SELECT account_id, user_key, name, properties, occurred_at, $2, message_id
			FROM x
			WHERE account_id IS NOT NULL AND ($3 OR NOT EXISTS (SELECT 1 FROM x WHERE account_id IS NULL))
			ORDER BY message_id, i -- of repeats within the batch, the first is kept
			ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO NOTHING
			RETURNING account_id, user_key, name, properties, occurred_at
		), daily AS (
			INSERT INTO usage_daily AS d (account_id, day, kind, key, n)
			SELECT account_id, (occurred_at AT TIME ZONE 'UTC')::date, kind, key, count(*)
			FROM (
				SELECT account_id, occurred_at, 'e'::"char" AS kind, name AS key FROM ins
				UNION ALL
				SELECT account_id, occurred_at, 'f'::"char", properties->>'feature' FROM ins
				WHERE name = 'feature_used'
			) s
			GROUP BY 1, 2, 3, 4
			ORDER BY 1, 2, 3, 4
			ON CONFLICT (account_id, day, kind, key) DO UPDATE SET n = d.n + EXCLUDED.n
			RETURNING 1
		), users AS (
			INSERT INTO account_user_activity AS u (account_id, user_key, last_seen_at)
			SELECT account_id, user_key, max(occurred_at) FROM ins
			WHERE user_key <> '' AND (SELECT count(*) FROM daily) >= 0
			GROUP BY 1, 2
			ORDER BY 1, 2
			ON CONFLICT (account_id, user_key) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at
			WHERE EXCLUDED.last_seen_at > u.last_seen_at
			RETURNING 1
		), locked AS MATERIALIZED (
			SELECT id FROM account
			WHERE id IN (SELECT account_id FROM ins) AND (SELECT count(*) FROM users) >= 0
			ORDER BY id
			FOR NO KEY UPDATE
		), pending AS (
			INSERT INTO account_pending (account_id) SELECT id FROM locked ORDER BY id
			ON CONFLICT DO NOTHING
		), changed AS (
			UPDATE account a
			SET change_version = a.change_version + 1,
			    last_login_at = GREATEST(a.last_login_at, s.last_login)
			FROM (
				SELECT account_id, count(*) AS n, max(occurred_at) FILTER (WHERE name = 'login') AS last_login
				FROM ins GROUP BY 1
			) s
			WHERE a.id = s.account_id AND a.id IN (SELECT id FROM locked)
			RETURNING a.id, s.n
		)
		SELECT id, n, NULL::int AS unknown FROM changed
		UNION ALL
		SELECT NULL, 0, i - 1 FROM x WHERE account_id IS NULL`

// Metric names a customer's pipeline may set directly.
const (
	MetricActiveUsers = "active_users"
	MetricOpenTickets = "open_tickets"
	MetricNPS         = "nps"
)

// MetricInput sets metric snapshots for one account at a time (now when At is
// nil). A snapshot older than the stored one is ignored.
type MetricInput struct {
	AccountID string             `json:"account_id"`
	At        *time.Time         `json:"at,omitempty"`
	Values    map[string]float64 `json:"values"`
}

// RecordMetrics stores metric snapshots; any bad item refuses the batch.
// It returns the internal ids of the accounts whose metrics changed.
func (s *Store) RecordMetrics(ctx context.Context, in []MetricInput) ([]int64, error) {
	if err := checkBatchSize(len(in), "metrics"); err != nil {
		return nil, err
	}
	now := s.clock.Now()
	var items errs.Items
	accIDs := make([]string, len(in))
	for i, m := range in {
		accIDs[i] = m.AccountID
		checkID(&items, i, "account_id", m.AccountID)
		if m.At != nil {
			checkTime(&items, i, "at", *m.At, now)
		}
		if len(m.Values) == 0 {
			items.Add(i, "values", "give at least one of active_users, open_tickets, nps")
		}
		for name, v := range m.Values {
			field := "values." + name
			switch {
			case name != MetricActiveUsers && name != MetricOpenTickets && name != MetricNPS:
				items.Add(i, field, "unknown metric; known: active_users, open_tickets, nps")
			case v != math.Trunc(v) || v < 0 || v > math.MaxInt32:
				items.Add(i, field, "must be a whole number from 0 to %d", math.MaxInt32)
			case name == MetricNPS && v > 10:
				items.Add(i, field, "an NPS answer is 0 to 10")
			}
		}
	}
	type row struct {
		AccountID int64     `json:"account_id"`
		Name      string    `json:"name"`
		Value     float64   `json:"value"`
		At        time.Time `json:"at"`
	}
	var changed []int64
	err := postgres.InTx(ctx, s.db, func(tx *sqlx.Tx) error {
		known, err := s.ResolveIDs(ctx, tx, accIDs)
		if err != nil {
			return err
		}
		for i, m := range in {
			if unknownAccount(known, m.AccountID) {
				items.Add(i, "account_id", "no account %q; create it with POST /v1/accounts first", m.AccountID)
			}
		}
		if err := items.Err("metrics"); err != nil {
			return err
		}
		// Within one batch the latest snapshot of a metric wins.
		latest := map[[2]any]row{}
		for _, m := range in {
			at := now
			if m.At != nil {
				at = m.At.UTC()
			}
			for name, v := range m.Values {
				k := [2]any{known[m.AccountID], name}
				if cur, ok := latest[k]; !ok || !at.Before(cur.At) {
					latest[k] = row{AccountID: known[m.AccountID], Name: name, Value: v, At: at}
				}
			}
		}
		rows := make([]row, 0, len(latest))
		for _, r := range latest {
			rows = append(rows, r)
		}
		payload, err := json.Marshal(rows)
		if err != nil {
			return fmt.Errorf("account: metrics: %w", err)
		}
		if err := LockAccounts(ctx, tx, values(known)); err != nil {
			return err
		}
		err = tx.SelectContext(ctx, &changed, `
			WITH up AS (
				INSERT INTO account_metric AS m (account_id, name, value, at)
				SELECT account_id, name, value, at
				FROM jsonb_to_recordset($1::jsonb) AS x(account_id bigint, name text, value double precision, at timestamptz)
				ON CONFLICT (account_id, name) DO UPDATE SET value = EXCLUDED.value, at = EXCLUDED.at
				WHERE EXCLUDED.at >= m.at
				RETURNING account_id
			), bumped AS (
				UPDATE account a SET change_version = a.change_version + 1
				WHERE a.id IN (SELECT account_id FROM up)
				RETURNING a.id
			), pending AS (
				INSERT INTO account_pending (account_id) SELECT id FROM bumped ORDER BY id
				ON CONFLICT DO NOTHING
			)
			SELECT id FROM bumped`, payload)
		if err != nil {
			return fmt.Errorf("account: metrics: %w", err)
		}
		return nil
	})
	return changed, err
}
