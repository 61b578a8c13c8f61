package campaign

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/postgres"
)

// BroadcastBatch is how many accounts one broadcast transaction fans out to.
const BroadcastBatch = 2000

// RunDueBroadcasts fans out every active broadcast whose send_at has come:
// each account gets the first variant whose segment it is in (never two),
// and each audience contact one message, due at send_at moved into the
// campaign's window in the contact's own time zone. Work goes in batches of
// accounts, each its own transaction with a cursor, so a worker that dies
// midway is continued by the next run, and nothing is written twice. It
// returns how many messages it scheduled. A broadcast waits while one of its
// variants' segments is still building: fanned out then, it would reach only
// the members found so far.
//
// A broadcast that fails (a definition stored before validation refused
// what it holds, say) does not hold up the others: they go on, and the
// failures come back together, each naming its broadcast.
func (e *Enroller) RunDueBroadcasts(ctx context.Context) (int, error) {
	// send_at is read in Go: cast in SQL, one unreadable value would fail
	// the query, and with it every broadcast.
	var candidates []struct {
		Name   string `db:"name"`
		SendAt string `db:"send_at"`
	}
	if err := e.db.SelectContext(ctx, &candidates, `
		SELECT c.name, coalesce(v.definition->>'send_at', '') AS send_at
		FROM campaign c JOIN campaign_version v ON v.campaign_id = c.id AND v.version = c.current_version
		WHERE c.kind = 'broadcast' AND c.status = 'active' AND c.broadcast_finished_at IS NULL
		  AND (c.broadcast_started_at IS NOT NULL OR NOT EXISTS (
		      SELECT 1 FROM jsonb_array_elements(v.definition->'variants') AS var
		      JOIN segment s ON s.name = var->>'segment' AND s.deleted_at IS NULL
		      WHERE s.built_generation < s.generation))
		ORDER BY c.id`); err != nil {
		return 0, fmt.Errorf("campaign: due broadcasts: %w", err)
	}
	now := e.clock.Now()
	total := 0
	var failed []error
	for _, c := range candidates {
		at, err := time.Parse(time.RFC3339Nano, c.SendAt)
		if err != nil {
			failed = append(failed, fmt.Errorf("campaign: broadcast %s: send_at %q: %w", c.Name, c.SendAt, err))
			continue
		}
		if at.After(now) {
			continue
		}
		for {
			n, done, err := e.broadcastBatch(ctx, c.Name)
			total += n
			if err != nil {
				failed = append(failed, fmt.Errorf("campaign: broadcast %s: %w", c.Name, err))
				break
			}
			if done {
				break
			}
		}
	}
	return total, errors.Join(failed...)
}

type variantPlan struct {
	variant Variant
	step    Step
	segment int64
}

// broadcastBatch fans out one batch of accounts after the cursor.
func (e *Enroller) broadcastBatch(ctx context.Context, name string) (scheduled int, done bool, err error) {
	err = postgres.InTx(ctx, e.db, func(tx *sqlx.Tx) error {
		var c struct {
			ID      int64  `db:"id"`
			Version int    `db:"current_version"`
			Cursor  int64  `db:"broadcast_cursor"`
			Raw     []byte `db:"definition"`
		}
		err := tx.GetContext(ctx, &c, `
			SELECT c.id, c.current_version, c.broadcast_cursor, v.definition
			FROM campaign c JOIN campaign_version v ON v.campaign_id = c.id AND v.version = c.current_version
			WHERE c.name = $1 AND c.status = 'active' AND c.broadcast_finished_at IS NULL
			FOR UPDATE OF c SKIP LOCKED`, name)
		if errors.Is(err, sql.ErrNoRows) {
			done = true // finished, paused, or another worker has this batch
			return nil
		}
		if err != nil {
			return fmt.Errorf("campaign: broadcast %s: %w", name, err)
		}
		def, err := Decode(c.Raw)
		if err != nil {
			return err
		}
		plan, err := e.variantPlan(ctx, tx, def)
		if err != nil {
			return err
		}
		fan, err := e.fanOut(ctx, tx, def, plan, c.Cursor, BroadcastBatch)
		if err != nil {
			return err
		}
		now := e.clock.Now()
		if fan.cursor == 0 { // no account left after the cursor
			done = true
			_, err := tx.ExecContext(ctx, `UPDATE campaign SET broadcast_finished_at = $2, broadcast_started_at = coalesce(broadcast_started_at, $2) WHERE id = $1`, c.ID, now)
			return err
		}
		sendAt := *def.SendAt
		var accIDs, contactIDs []int64
		var steps []string
		var dues []time.Time
		for _, a := range fan.accounts {
			for _, ct := range a.contacts {
				accIDs = append(accIDs, a.id)
				contactIDs = append(contactIDs, ct.id)
				steps = append(steps, a.plan.step.ID)
				loc := e.Location(ct.timezone, a.timezone)
				dues = append(dues, def.Window.Next(sendAt, loc))
			}
		}
		// One enrollment per account reached (entry 1: a broadcast goes
		// once), then one message per contact; both idempotent.
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO enrollment (campaign_id, version, account_id, entry_number, contacts, status, step, anchor_at, entered_at)
			SELECT $1, $2, x.a, 1, array_agg(x.c ORDER BY x.c), 'completed', 0, $3, $3
			FROM unnest($4::bigint[], $5::bigint[]) AS x(a, c)
			GROUP BY x.a
			ON CONFLICT (campaign_id, account_id, entry_number) DO NOTHING`,
			c.ID, c.Version, now, pq.Array(accIDs), pq.Array(contactIDs)); err != nil {
			return fmt.Errorf("campaign: broadcast enrollments: %w", err)
		}
		res, err := tx.ExecContext(ctx, `
			INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, created_at, updated_at)
			SELECT en.id, $1, $2, x.step, x.contact, CASE WHEN x.step = ANY($8) THEN 'in_app' ELSE 'email' END, 'scheduled', x.due, $3, $3
			FROM unnest($4::bigint[], $5::bigint[], $6::text[], $7::timestamptz[]) AS x(account, contact, step, due)
			JOIN enrollment en ON en.campaign_id = $1 AND en.account_id = x.account AND en.entry_number = 1
			ON CONFLICT (enrollment_id, step_id, contact_id) DO NOTHING`,
			c.ID, c.Version, now, pq.Array(accIDs), pq.Array(contactIDs), pq.Array(steps), pq.Array(dues), pq.Array(fan.inApp))
		if err != nil {
			return fmt.Errorf("campaign: broadcast messages: %w", err)
		}
		n, _ := res.RowsAffected()
		scheduled = int(n)
		_, err = tx.ExecContext(ctx, `UPDATE campaign SET broadcast_cursor = $2, broadcast_started_at = coalesce(broadcast_started_at, $3) WHERE id = $1`,
			c.ID, fan.cursor, now)
		return err
	})
	return scheduled, done, err
}

func (e *Enroller) variantPlan(ctx context.Context, q postgres.Queryer, def Definition) ([]variantPlan, error) {
	var segs []struct {
		ID   int64  `db:"id"`
		Name string `db:"name"`
	}
	if err := q.SelectContext(ctx, &segs, `SELECT id, name FROM segment WHERE deleted_at IS NULL`); err != nil {
		return nil, fmt.Errorf("campaign: variants: %w", err)
	}
	ids := map[string]int64{}
	for _, s := range segs {
		ids[s.Name] = s.ID
	}
	steps := def.BroadcastSteps()
	plan := make([]variantPlan, 0, len(def.Variants))
	for i, v := range def.Variants {
		if id, ok := ids[v.Segment]; ok {
			plan = append(plan, variantPlan{variant: v, step: steps[i], segment: id})
		}
	}
	return plan, nil
}

type fanContact struct {
	id       int64
	timezone string
}

type fanAccount struct {
	id       int64
	timezone string
	plan     *variantPlan
	contacts []fanContact
}

type fan struct {
	accounts []fanAccount
	cursor   int64
	inApp    []string
}

// fanOut resolves a batch of accounts after cursor: the first variant each
// is in, and its audience contacts.
func (e *Enroller) fanOut(ctx context.Context, q postgres.Queryer, def Definition, plan []variantPlan, cursor int64, limit int) (fan, error) {
	var out fan
	for _, p := range plan {
		if p.step.Channel == ChannelInApp {
			out.inApp = append(out.inApp, p.step.ID)
		}
	}
	var rows []struct {
		ID       int64         `db:"id"`
		Timezone string        `db:"timezone"`
		Segments pq.Int64Array `db:"segments"`
	}
	segIDs := make([]int64, len(plan))
	for i, p := range plan {
		segIDs[i] = p.segment
	}
	if err := q.SelectContext(ctx, &rows, `
		SELECT a.id, a.timezone, array_agg(m.segment_id) AS segments
		FROM account a JOIN segment_membership m ON m.account_id = a.id AND m.exited_at IS NULL AND m.segment_id = ANY($2)
		WHERE a.id > $1
		GROUP BY a.id ORDER BY a.id LIMIT $3`, cursor, pq.Array(segIDs), limit); err != nil {
		return out, fmt.Errorf("campaign: fan out: %w", err)
	}
	if len(rows) == 0 {
		return out, nil
	}
	out.cursor = rows[len(rows)-1].ID
	accIDs := make([]int64, len(rows))
	for i, r := range rows {
		accIDs[i] = r.ID
	}
	audience, err := e.audienceOf(ctx, q, def, accIDs)
	if err != nil {
		return out, err
	}
	byAccount := map[int64][]fanContact{}
	for acc, cs := range audience {
		for _, c := range cs {
			byAccount[acc] = append(byAccount[acc], fanContact{id: c.ID, timezone: c.Timezone})
		}
	}
	for _, r := range rows {
		in := map[int64]bool{}
		for _, s := range r.Segments {
			in[s] = true
		}
		for i := range plan {
			if in[plan[i].segment] { // the first matching variant wins
				if cs := byAccount[r.ID]; len(cs) > 0 {
					out.accounts = append(out.accounts, fanAccount{id: r.ID, timezone: r.Timezone, plan: &plan[i], contacts: cs})
				}
				break
			}
		}
	}
	return out, nil
}

// VariantReach is who one variant (or a drip's segment) would reach now.
type VariantReach struct {
	Segment  string  `json:"segment"`
	Template string  `json:"template,omitempty"`
	Accounts int     `json:"accounts"`
	Contacts int     `json:"contacts"`
	IDs      []int64 `json:"-"` // the contacts
}

// Reach answers who a campaign would reach if it were activated now, changing
// nothing: for a broadcast, per variant (first matching variant per
// account); for a drip, the current members of its segment.
func (e *Enroller) Reach(ctx context.Context, name string) (Definition, []VariantReach, error) {
	var raw []byte
	err := e.db.GetContext(ctx, &raw, `
		SELECT v.definition FROM campaign c JOIN campaign_version v ON v.campaign_id = c.id AND v.version = c.current_version
		WHERE c.name = $1`, name)
	if err != nil {
		return Definition{}, nil, postgres.NotFound(err, "campaign: reach", notFound(name))
	}
	def, err := Decode(raw)
	if err != nil {
		return def, nil, err
	}
	if def.Kind == KindDrip {
		// A drip reaches its segment's members, as one variant.
		def.Variants = []Variant{{Segment: def.Segment, Template: def.Steps[0].Template, Channel: def.Steps[0].Channel}}
	}
	plan, err := e.variantPlan(ctx, e.db, def)
	if err != nil {
		return def, nil, err
	}
	out := make([]VariantReach, len(def.Variants))
	index := map[string]int{}
	for i, v := range def.Variants {
		out[i] = VariantReach{Segment: v.Segment, Template: v.Template}
		index[v.Segment] = i
	}
	var cursor int64
	for {
		f, err := e.fanOut(ctx, e.db, def, plan, cursor, BroadcastBatch)
		if err != nil {
			return def, nil, err
		}
		if f.cursor == 0 {
			return def, out, nil
		}
		for _, a := range f.accounts {
			r := &out[index[a.plan.variant.Segment]]
			r.Accounts++
			for _, c := range a.contacts {
				r.Contacts++
				r.IDs = append(r.IDs, c.id)
			}
		}
		cursor = f.cursor
	}
}
