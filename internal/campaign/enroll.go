package campaign

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/expr-lang/expr/vm"
	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/postgres"
)

// Enrollment statuses.
const (
	EnrollmentActive    = "active"
	EnrollmentCompleted = "completed"
	EnrollmentExited    = "exited"
	EnrollmentConverted = "converted"
)

// Enroller turns segment entries and exits into drip enrollments and
// schedules each enrollment's steps as outbox rows.
type Enroller struct {
	db    *sqlx.DB
	clock clock.Clock
	log   *slog.Logger
	// DefaultTimezone applies to contacts and accounts that name none.
	DefaultTimezone *time.Location
	// EnrollBatch is how many segment members EnrollExisting enrolls at a
	// time.
	EnrollBatch int

	progs sync.Map // expression source → *vm.Program
}

// NewEnroller returns an enroller.
func NewEnroller(db *sqlx.DB, clk clock.Clock, log *slog.Logger, defaultTZ *time.Location) *Enroller {
	if defaultTZ == nil {
		defaultTZ = time.UTC
	}
	return &Enroller{db: db, clock: clk, log: log, DefaultTimezone: defaultTZ, EnrollBatch: 1000}
}

type segEvent struct {
	ID        int64     `db:"id"`
	SegmentID int64     `db:"segment_id"`
	AccountID int64     `db:"account_id"`
	Kind      string    `db:"kind"`
	Reason    string    `db:"reason"`
	At        time.Time `db:"at"`
}

type runningDrip struct {
	ID          int64      `db:"id"`
	Version     int        `db:"current_version"`
	ActivatedAt *time.Time `db:"activated_at"`
	SegmentID   int64      `db:"segment_id"`
	Raw         []byte     `db:"definition"`
	Def         Definition `db:"-"`
}

// ProcessSegmentEvents consumes up to limit unprocessed segment entries and
// exits, in order, in one transaction: enrollments made, steps scheduled,
// enrollments exited and the events marked processed commit together, so a
// crash never enrolls twice or loses an entry. Several workers may run it at
// once (SKIP LOCKED). It returns how many events it consumed.
func (e *Enroller) ProcessSegmentEvents(ctx context.Context, limit int) (int, error) {
	n := 0
	err := postgres.InTx(ctx, e.db, func(tx *sqlx.Tx) error {
		var events []segEvent
		if err := tx.SelectContext(ctx, &events, `
			SELECT id, segment_id, account_id, kind, reason, at FROM segment_event
			WHERE processed_at IS NULL ORDER BY id LIMIT $1
			FOR UPDATE SKIP LOCKED`, limit); err != nil {
			return fmt.Errorf("campaign: segment events: %w", err)
		}
		if len(events) == 0 {
			return nil
		}
		n = len(events)
		segIDs := make([]int64, 0, len(events))
		ids := make([]int64, len(events))
		for i, ev := range events {
			ids[i] = ev.ID
			segIDs = append(segIDs, ev.SegmentID)
		}
		var drips []runningDrip
		if err := tx.SelectContext(ctx, &drips, `
			SELECT c.id, c.current_version, c.activated_at, s.id AS segment_id, v.definition
			FROM campaign c
			JOIN campaign_version v ON v.campaign_id = c.id AND v.version = c.current_version
			JOIN segment s ON s.name = v.definition->>'segment' AND s.deleted_at IS NULL
			WHERE c.status = 'active' AND c.kind = 'drip' AND s.id = ANY($1)
			ORDER BY c.id`, pq.Array(segIDs)); err != nil {
			return fmt.Errorf("campaign: running drips: %w", err)
		}
		for i := range drips {
			if err := json.Unmarshal(drips[i].Raw, &drips[i].Def); err != nil {
				return fmt.Errorf("campaign: drip %d: %w", drips[i].ID, err)
			}
		}
		// Consecutive entries are applied together, drip by drip, and so
		// are consecutive exits. An account's entry and its next exit are
		// never in one run, so this does what one event at a time would,
		// in a few statements a run.
		for start := 0; start < len(events); {
			end := start + 1
			for end < len(events) && events[end].Kind == events[start].Kind {
				end++
			}
			run := events[start:end]
			start = end
			switch run[0].Kind {
			case "enter":
				for i := range drips {
					d := &drips[i]
					var mine []segEvent
					for _, ev := range run {
						if ev.SegmentID == d.SegmentID {
							mine = append(mine, ev)
						}
					}
					if _, err := e.enterAll(ctx, tx, d, mine); err != nil {
						return err
					}
				}
			case "exit":
				if err := e.exitAll(ctx, tx, run); err != nil {
					return err
				}
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE segment_event SET processed_at = $2 WHERE id = ANY($1)`, pq.Array(ids), e.clock.Now()); err != nil {
			return fmt.Errorf("campaign: mark events: %w", err)
		}
		return nil
	})
	return n, err
}

// enterAll enrolls the accounts of entry events into drip d, where the
// drip's rules allow it, and schedules their first step: a few statements
// for any number of events. Each account appears at most once in evs. It
// returns how many enrollments it made.
func (e *Enroller) enterAll(ctx context.Context, tx *sqlx.Tx, d *runningDrip, evs []segEvent) (int, error) {
	var cand []segEvent
	for _, ev := range evs {
		switch {
		case (ev.Reason == "initial" || ev.Reason == "definition") && !d.Def.EnrollExisting:
			// created or edited segment: only with enroll_existing
		case d.ActivatedAt == nil || ev.At.Before(*d.ActivatedAt):
			// the account entered before the drip was running
		default:
			cand = append(cand, ev)
		}
	}
	if len(cand) == 0 {
		return 0, nil
	}
	accIDs := accountsOf(cand)
	var lasts []struct {
		AccountID int64     `db:"account_id"`
		Entry     int       `db:"entry_number"`
		EnteredAt time.Time `db:"entered_at"`
		Status    string    `db:"status"`
	}
	if err := tx.SelectContext(ctx, &lasts, `
		SELECT DISTINCT ON (account_id) account_id, entry_number, entered_at, status FROM enrollment
		WHERE campaign_id = $1 AND account_id = ANY($2)
		ORDER BY account_id, entry_number DESC`, d.ID, pq.Array(accIDs)); err != nil {
		return 0, fmt.Errorf("campaign: last enrollments: %w", err)
	}
	type last struct {
		entry     int
		enteredAt time.Time
		status    string
	}
	lastOf := make(map[int64]last, len(lasts))
	for _, l := range lasts {
		lastOf[l.AccountID] = last{l.Entry, l.EnteredAt, l.Status}
	}
	reenroll, _ := ParseWait(d.Def.ReenrollAfter) // validated with the definition
	type row struct {
		AccountID int64     `json:"account_id"`
		Entry     int       `json:"entry"`
		Event     int64     `json:"event"`
		Contacts  string    `json:"contacts"` // a bigint[] literal
		At        time.Time `json:"at"`
	}
	var enter []segEvent
	for _, ev := range cand {
		if l, ok := lastOf[ev.AccountID]; ok {
			switch {
			case l.status == EnrollmentActive:
				continue
			case d.Def.ReenrollAfter == "":
				continue // entered before, and re-entry is not allowed
			case ev.At.Before(reenroll.After(l.enteredAt, time.UTC)):
				continue // too soon to re-enter
			}
		}
		enter = append(enter, ev)
	}
	if len(enter) == 0 {
		return 0, nil
	}
	audience, err := e.audienceOf(ctx, tx, d.Def, accountsOf(enter))
	if err != nil {
		return 0, err
	}
	rows := make([]row, len(enter))
	contactsOf := make(map[int64][]int64, len(enter))
	for i, ev := range enter {
		cs := make([]int64, len(audience[ev.AccountID]))
		for j, c := range audience[ev.AccountID] {
			cs[j] = c.ID
		}
		contactsOf[ev.AccountID] = cs
		lit, _ := pq.Array(cs).Value()
		rows[i] = row{AccountID: ev.AccountID, Entry: lastOf[ev.AccountID].entry + 1, Event: ev.ID, Contacts: lit.(string), At: ev.At}
	}
	payload, err := json.Marshal(rows)
	if err != nil {
		return 0, fmt.Errorf("campaign: enroll: %w", err)
	}
	var made []struct {
		ID        int64     `db:"id"`
		AccountID int64     `db:"account_id"`
		Anchor    time.Time `db:"anchor_at"`
	}
	// A conflict is a concurrent enrollment that won: nothing to do.
	if err := tx.SelectContext(ctx, &made, `
		INSERT INTO enrollment (campaign_id, version, account_id, entry_number, segment_event_id, contacts,
			status, step, anchor_at, entered_at)
		SELECT $1, $2, x.account_id, x.entry, nullif(x.event, 0), x.contacts::bigint[], 'active', 0, x.at, x.at
		FROM ROWS FROM (jsonb_to_recordset($3::jsonb) AS (account_id bigint, entry integer, event bigint,
		     contacts text, at timestamptz)) WITH ORDINALITY AS x(account_id, entry, event, contacts, at, i)
		ORDER BY x.i
		ON CONFLICT DO NOTHING
		RETURNING id, account_id, anchor_at`, d.ID, d.Version, payload); err != nil {
		return 0, fmt.Errorf("campaign: enroll: %w", err)
	}
	plans := make([]stepPlan, len(made))
	for i, m := range made {
		plans[i] = stepPlan{enrollment: m.ID, campaign: d.ID, version: d.Version, def: &d.Def,
			contacts: contactsOf[m.AccountID], step: 0, anchor: m.Anchor}
	}
	return len(made), e.scheduleSteps(ctx, tx, plans)
}

// accountsOf returns the accounts of events, in their order.
func accountsOf(evs []segEvent) []int64 {
	ids := make([]int64, len(evs))
	for i, ev := range evs {
		ids[i] = ev.AccountID
	}
	return ids
}

// audienceContact is a contact as audience expressions see it.
type audienceContact struct {
	ID        int64           `db:"id"`
	AccountID int64           `db:"account_id"`
	External  string          `db:"external_id"`
	Email     string          `db:"email"`
	Name      string          `db:"name"`
	Role      string          `db:"role"`
	Timezone  string          `db:"timezone"`
	Locale    string          `db:"locale"`
	Traits    json.RawMessage `db:"traits"`
}

// audienceOf returns, per account, its contacts that match the campaign's
// audience expression (all of them when it has none), in id order.
func (e *Enroller) audienceOf(ctx context.Context, q postgres.Queryer, def Definition, accountIDs []int64) (map[int64][]audienceContact, error) {
	var rows []audienceContact
	if err := q.SelectContext(ctx, &rows, `
		SELECT id, account_id, external_id, email, name, role, timezone, locale, traits
		FROM contact WHERE account_id = ANY($1) ORDER BY account_id, id`, pq.Array(accountIDs)); err != nil {
		return nil, fmt.Errorf("campaign: audience: %w", err)
	}
	out := make(map[int64][]audienceContact, len(accountIDs))
	var prog *vm.Program
	var profiles map[int64]account.Cached
	if def.Audience != "" {
		var err error
		if prog, err = e.compiled(def.Audience, CompileAudience); err != nil {
			return nil, err
		}
		if profiles, err = account.CachedProfiles(ctx, q, accountIDs, e.clock.Now(), account.AllMaps); err != nil {
			return nil, err
		}
	}
	var m vm.VM
	for _, r := range rows {
		if prog != nil {
			env := AudienceEnv{Profile: profiles[r.AccountID].Profile, Contact: ContactEnv{ID: r.External, Email: r.Email, Name: r.Name,
				Role: r.Role, Timezone: r.Timezone, Locale: r.Locale, Traits: map[string]any{}}}
			json.Unmarshal(r.Traits, &env.Contact.Traits)
			res, err := m.Run(prog, env)
			if err != nil {
				e.log.Warn("audience expression failed for a contact; left out", "contact", r.External, "err", err)
				continue
			}
			if ok, _ := res.(bool); !ok {
				continue
			}
		}
		out[r.AccountID] = append(out[r.AccountID], r)
	}
	return out, nil
}

func (e *Enroller) compiled(src string, compile func(string, clock.Clock) (*vm.Program, error)) (*vm.Program, error) {
	if p, ok := e.progs.Load(src); ok {
		return p.(*vm.Program), nil
	}
	p, err := compile(src, e.clock)
	if err != nil {
		return nil, err
	}
	e.progs.Store(src, p)
	return p, nil
}

// stepPlan is one enrollment's step to schedule.
type stepPlan struct {
	enrollment, campaign int64
	version              int
	def                  *Definition
	contacts             []int64
	step                 int
	anchor               time.Time
}

// scheduleSteps writes the outbox rows of enrollments' steps: one per
// audience contact that still exists, due at anchor plus the step's wait in
// the contact's time zone (else the account's, else the default), moved into
// the campaign's send window in that zone. An enrollment with nobody to write
// to completes at once. A few statements for any number of enrollments.
func (e *Enroller) scheduleSteps(ctx context.Context, tx *sqlx.Tx, plans []stepPlan) error {
	if len(plans) == 0 {
		return nil
	}
	var all []int64
	for _, p := range plans {
		all = append(all, p.contacts...)
	}
	var zones []struct {
		ID      int64  `db:"id"`
		Contact string `db:"contact_tz"`
		Account string `db:"account_tz"`
	}
	if len(all) > 0 {
		if err := tx.SelectContext(ctx, &zones, `
			SELECT c.id, c.timezone AS contact_tz, a.timezone AS account_tz
			FROM contact c JOIN account a ON a.id = c.account_id
			WHERE c.id = ANY($1)`, pq.Array(all)); err != nil {
			return fmt.Errorf("campaign: schedule: %w", err)
		}
	}
	locs := map[[2]string]*time.Location{}
	locOf := make(map[int64]*time.Location, len(zones))
	for _, z := range zones {
		k := [2]string{z.Contact, z.Account}
		loc, ok := locs[k]
		if !ok {
			loc = e.Location(z.Contact, z.Account)
			locs[k] = loc
		}
		locOf[z.ID] = loc
	}
	var (
		msgEnrollment, msgCampaign, msgContact []int64
		msgVersion                             []int64
		msgStep, msgChannel                    []string
		msgDue                                 []time.Time
		stepIDs                                []int64
		stepNums                               []int64
		stepAnchors                            []time.Time
		empty                                  []int64
	)
	for _, p := range plans {
		st := p.def.Steps[p.step]
		wait, err := ParseWait(st.Wait)
		if err != nil {
			return fmt.Errorf("campaign: step %s: %w", st.ID, err)
		}
		contacts := slices.Clone(p.contacts)
		slices.Sort(contacts)
		n := 0
		for _, c := range slices.Compact(contacts) {
			loc, ok := locOf[c]
			if !ok {
				continue // the contact is gone
			}
			n++
			msgEnrollment = append(msgEnrollment, p.enrollment)
			msgCampaign = append(msgCampaign, p.campaign)
			msgVersion = append(msgVersion, int64(p.version))
			msgStep = append(msgStep, st.ID)
			msgContact = append(msgContact, c)
			msgChannel = append(msgChannel, st.Channel)
			msgDue = append(msgDue, p.def.Window.Next(wait.After(p.anchor, loc), loc))
		}
		if n == 0 {
			empty = append(empty, p.enrollment)
			continue
		}
		stepIDs = append(stepIDs, p.enrollment)
		stepNums = append(stepNums, int64(p.step))
		stepAnchors = append(stepAnchors, p.anchor)
	}
	now := e.clock.Now()
	if len(empty) > 0 {
		if _, err := tx.ExecContext(ctx, `
			UPDATE enrollment SET status = 'completed', finished_at = $2, finish_reason = 'no contact in the audience'
			WHERE id = ANY($1)`, pq.Array(empty), now); err != nil {
			return fmt.Errorf("campaign: schedule: %w", err)
		}
	}
	if len(msgContact) == 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, created_at, updated_at)
		SELECT x.enrollment_id, x.campaign_id, x.version, x.step_id, x.contact_id, x.channel, 'scheduled', x.due_at, $8, $8
		FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $4::text[], $5::bigint[], $6::text[], $7::timestamptz[])
		     AS x(enrollment_id, campaign_id, version, step_id, contact_id, channel, due_at)
		ON CONFLICT (enrollment_id, step_id, contact_id) DO NOTHING`,
		pq.Array(msgEnrollment), pq.Array(msgCampaign), pq.Array(msgVersion), pq.Array(msgStep),
		pq.Array(msgContact), pq.Array(msgChannel), pq.Array(msgDue), now); err != nil {
		return fmt.Errorf("campaign: schedule: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `
		UPDATE enrollment en SET step = x.step, anchor_at = x.anchor
		FROM unnest($1::bigint[], $2::integer[], $3::timestamptz[]) AS x(id, step, anchor)
		WHERE en.id = x.id`, pq.Array(stepIDs), pq.Array(stepNums), pq.Array(stepAnchors)); err != nil {
		return fmt.Errorf("campaign: schedule: %w", err)
	}
	return nil
}

// Location picks the first valid time zone of the contact's, the account's
// and the default.
func (e *Enroller) Location(zones ...string) *time.Location {
	for _, z := range zones {
		if z == "" {
			continue
		}
		if loc, err := time.LoadLocation(z); err == nil {
			return loc
		}
	}
	return e.DefaultTimezone
}

// exitAll stops the running enrollments of the accounts of exit events in
// drips that exit when the account leaves that segment; their scheduled
// messages are skipped.
func (e *Enroller) exitAll(ctx context.Context, tx *sqlx.Tx, evs []segEvent) error {
	accounts := make([]int64, len(evs))
	segments := make([]int64, len(evs))
	for i, ev := range evs {
		accounts[i], segments[i] = ev.AccountID, ev.SegmentID
	}
	var exited []int64
	err := tx.SelectContext(ctx, &exited, `
		UPDATE enrollment en SET status = 'exited', finished_at = $3, finish_reason = 'left segment ' || s.name
		FROM unnest($1::bigint[], $2::bigint[]) AS x(account_id, segment_id), campaign_version v, segment s
		WHERE en.account_id = x.account_id AND en.status = 'active'
		  AND v.campaign_id = en.campaign_id AND v.version = en.version
		  AND v.definition->>'exit' = 'leaves_segment'
		  AND s.id = x.segment_id AND s.name = v.definition->>'segment'
		RETURNING en.id`, pq.Array(accounts), pq.Array(segments), e.clock.Now())
	if err != nil {
		return fmt.Errorf("campaign: exit: %w", err)
	}
	return skipScheduled(ctx, tx, exited, "exited: the account left the segment", e.clock.Now())
}

// skipScheduled skips the scheduled messages of enrollments with a reason.
func skipScheduled(ctx context.Context, q postgres.Queryer, enrollments []int64, reason string, now time.Time) error {
	if len(enrollments) == 0 {
		return nil
	}
	_, err := q.ExecContext(ctx, `
		UPDATE message SET status = 'skipped', reason = $2, updated_at = $3
		WHERE enrollment_id = ANY($1) AND status = 'scheduled'`, pq.Array(enrollments), reason, now)
	if err != nil {
		return fmt.Errorf("campaign: skip messages: %w", err)
	}
	return nil
}

// Convert ends enrollments whose goal holds: converted, their scheduled
// messages skipped. Enrollments no longer active are left as they are.
func (e *Enroller) Convert(ctx context.Context, q postgres.Queryer, enrollmentIDs []int64) error {
	if len(enrollmentIDs) == 0 {
		return nil
	}
	now := e.clock.Now()
	var converted []int64
	if err := q.SelectContext(ctx, &converted, `
		UPDATE enrollment SET status = 'converted', finished_at = $2, finish_reason = 'goal reached'
		WHERE id = ANY($1) AND status = 'active'
		RETURNING id`, pq.Array(enrollmentIDs), now); err != nil {
		return fmt.Errorf("campaign: convert: %w", err)
	}
	return skipScheduled(ctx, q, converted, "converted: the goal holds", now)
}

// Advance moves enrollments whose current step is finished (every message
// sent, failed, skipped or uncertain) to their next step, anchored on the
// step's last send, or completes them after the last step. A step whose
// messages are all gone (their contacts deleted) is finished too, anchored
// where it was. Running it again, or concurrently, advances a step once: an
// enrollment is moved on only from the step it was read at, under its lock.
func (e *Enroller) Advance(ctx context.Context, tx *sqlx.Tx, enrollmentIDs []int64) error {
	_, err := e.advance(ctx, tx, enrollmentIDs)
	return err
}

// advance is Advance, and says how many enrollments it moved on.
func (e *Enroller) advance(ctx context.Context, tx *sqlx.Tx, enrollmentIDs []int64) (int, error) {
	if len(enrollmentIDs) == 0 {
		return 0, nil
	}
	var rows []struct {
		ID         int64         `db:"id"`
		CampaignID int64         `db:"campaign_id"`
		Version    int           `db:"version"`
		AccountID  int64         `db:"account_id"`
		Step       int           `db:"step"`
		Contacts   pq.Int64Array `db:"contacts"`
		Raw        []byte        `db:"definition"`
		Anchor     time.Time     `db:"anchor"`
	}
	// Locks the enrollments so two workers finishing a step's last two
	// messages agree on one advance. (bool_and over no message is null.)
	err := tx.SelectContext(ctx, &rows, `
		SELECT en.id, en.campaign_id, en.version, en.account_id, en.step, en.contacts, v.definition,
		       coalesce(max(m.sent_at), max(m.due_at), en.anchor_at) AS anchor
		FROM enrollment en
		JOIN campaign_version v ON v.campaign_id = en.campaign_id AND v.version = en.version
		LEFT JOIN message m ON m.enrollment_id = en.id AND m.step_id = v.definition->'steps'->en.step->>'id'
		WHERE en.id = ANY($1) AND en.status = 'active'
		GROUP BY en.id, v.definition
		HAVING bool_and(m.status IN ('sent', 'failed', 'skipped', 'uncertain')) IS NOT FALSE
		ORDER BY en.id`, pq.Array(enrollmentIDs))
	if err != nil {
		return 0, fmt.Errorf("campaign: advance: %w", err)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	// Lock them at the step read, in id order: an enrollment advanced or
	// finished by someone else meanwhile drops out.
	ids := make([]int64, len(rows))
	steps := make([]int64, len(rows))
	for i, r := range rows {
		ids[i], steps[i] = r.ID, int64(r.Step)
	}
	var locked []int64
	if err := tx.SelectContext(ctx, &locked, `
		SELECT en.id FROM enrollment en JOIN unnest($1::bigint[], $2::integer[]) AS x(id, step)
		     ON en.id = x.id AND en.step = x.step
		WHERE en.status = 'active'
		ORDER BY en.id
		FOR UPDATE OF en`, pq.Array(ids), pq.Array(steps)); err != nil {
		return 0, fmt.Errorf("campaign: advance: %w", err)
	}
	mine := make(map[int64]bool, len(locked))
	for _, id := range locked {
		mine[id] = true
	}
	defs := map[[2]int64]*Definition{} // (campaign, version) → definition
	var done []int64
	var plans []stepPlan
	for _, r := range rows {
		if !mine[r.ID] {
			continue
		}
		k := [2]int64{r.CampaignID, int64(r.Version)}
		def, ok := defs[k]
		if !ok {
			def = new(Definition)
			if err := json.Unmarshal(r.Raw, def); err != nil {
				return 0, fmt.Errorf("campaign: advance: %w", err)
			}
			defs[k] = def
		}
		if r.Step+1 >= len(def.Steps) {
			done = append(done, r.ID)
			continue
		}
		plans = append(plans, stepPlan{enrollment: r.ID, campaign: r.CampaignID, version: r.Version, def: def,
			contacts: r.Contacts, step: r.Step + 1, anchor: r.Anchor})
	}
	if len(done) > 0 {
		if _, err := tx.ExecContext(ctx, `
			UPDATE enrollment SET status = 'completed', finished_at = $2, finish_reason = 'every step done'
			WHERE id = ANY($1)`, pq.Array(done), e.clock.Now()); err != nil {
			return 0, fmt.Errorf("campaign: complete: %w", err)
		}
	}
	return len(done) + len(plans), e.scheduleSteps(ctx, tx, plans)
}

// StalledCursor is where AdvanceStalled goes on: the last active enrollment
// it read, by (campaign, account), the order of the enrollment_running
// index. The zero cursor is the start.
type StalledCursor struct {
	Campaign, Account int64
}

// AdvanceStalled advances the drip enrollments among the next limit active
// ones after cur whose current step is finished though they are still on
// it: each step is advanced by the batch that settles its last message, so
// this is for steps settled otherwise (a message left sending by a worker
// that died and marked uncertain by the reaper, skipped past a hold, dropped
// by an operator) and for advances that failed or never ran. It finds them
// with one statement a page and moves them on through Advance, which checks
// again under lock. It returns the cursor to go on from, how many it
// advanced, and whether it has read the last active enrollment (the pass is
// through; the cursor is then the zero one, the start). When the page was
// read and an enrollment of it could not move on, the cursor returned is
// past the page: the error names those enrollments, and the others moved on.
// When the page was not read, or failed for a reason not its own (see
// postgres.RowFault), the cursor is cur, and the pass is not through.
func (e *Enroller) AdvanceStalled(ctx context.Context, cur StalledCursor, limit int) (next StalledCursor, n int, through bool, err error) {
	var page []struct {
		ID       int64 `db:"id"`
		Campaign int64 `db:"campaign_id"`
		Account  int64 `db:"account_id"`
		Finished bool  `db:"finished"`
	}
	// A page of active enrollments, read through the enrollment_running
	// index, each checked with one look-up of its current step's unsettled
	// messages. The step ids are taken once per campaign version on the
	// page, not from the definition once per enrollment.
	if err := e.db.SelectContext(ctx, &page, `
		WITH page AS (
			SELECT id, campaign_id, account_id, version, step FROM enrollment
			WHERE status = 'active' AND (campaign_id, account_id) > ($1, $2)
			ORDER BY campaign_id, account_id LIMIT $3
		), steps AS (
			SELECT v.campaign_id, v.version, s.i - 1 AS step, s.step->>'id' AS step_id
			FROM campaign_version v, jsonb_array_elements(v.definition->'steps') WITH ORDINALITY AS s(step, i)
			WHERE (v.campaign_id, v.version) IN (SELECT campaign_id, version FROM page)
		)
		SELECT p.id, p.campaign_id, p.account_id,
		       st.step_id IS NOT NULL AND NOT EXISTS (
		           SELECT 1 FROM message m WHERE m.enrollment_id = p.id AND m.step_id = st.step_id
		             AND m.status IN ('scheduled', 'claimed', 'sending')) AS finished
		FROM page p LEFT JOIN steps st ON st.campaign_id = p.campaign_id AND st.version = p.version AND st.step = p.step
		ORDER BY p.campaign_id, p.account_id`, cur.Campaign, cur.Account, limit); err != nil {
		return cur, 0, false, fmt.Errorf("campaign: stalled enrollments: %w", err)
	}
	if through = len(page) < limit; !through {
		last := page[len(page)-1]
		next = StalledCursor{last.Campaign, last.Account}
	}
	var ids []int64
	for _, p := range page {
		if p.Finished {
			ids = append(ids, p.ID)
		}
	}
	if len(ids) == 0 {
		return next, 0, through, nil
	}
	if n, err = e.advanceInTx(ctx, ids); err == nil {
		return next, n, through, nil
	} else if !postgres.RowFault(err) {
		// Not about one enrollment (the connection lost, the server
		// shutting down, the context cancelled): the page is read again
		// at the next sweep.
		return cur, 0, false, fmt.Errorf("campaign: advance stalled enrollments: %w", err)
	}
	// One enrollment that cannot move on must hold up neither the others
	// of its page nor the pass: each goes on its own, and the failures are
	// returned with the cursor past the page. A cancelled context fails
	// them all: the rest of the page waits for the next pass.
	n = 0
	var failed []error
	for _, id := range ids {
		if ctx.Err() != nil {
			failed = append(failed, ctx.Err())
			break
		}
		advanced, err := e.advanceInTx(ctx, []int64{id})
		n += advanced
		if err != nil {
			failed = append(failed, fmt.Errorf("enrollment %d: %w", id, err))
		}
	}
	return next, n, through, errors.Join(failed...)
}

// advanceInTx runs advance on ids in a transaction of its own, run again
// when PostgreSQL aborts it to break a deadlock.
func (e *Enroller) advanceInTx(ctx context.Context, ids []int64) (advanced int, err error) {
	err = postgres.InTxRetry(ctx, e.db, func(tx *sqlx.Tx) (err error) {
		advanced, err = e.advance(ctx, tx, ids)
		return err
	})
	return advanced, err
}

// PendingSegmentEvents reports whether segment entries or exits wait to be
// consumed.
func (e *Enroller) PendingSegmentEvents(ctx context.Context) (bool, error) {
	var b bool
	if err := e.db.GetContext(ctx, &b, `SELECT EXISTS (SELECT 1 FROM segment_event WHERE processed_at IS NULL)`); err != nil {
		return false, fmt.Errorf("campaign: pending events: %w", err)
	}
	return b, nil
}

// EnrollExisting enrolls the current members of an active drip's segment
// when the drip says enroll_existing (a no-op otherwise). It runs after each
// activation; re-entry rules keep it from enrolling anyone twice. It returns
// how many enrollments it made.
func (e *Enroller) EnrollExisting(ctx context.Context, campaignName string) (int, error) {
	made := 0
	err := postgres.InTx(ctx, e.db, func(tx *sqlx.Tx) error {
		var d runningDrip
		err := tx.GetContext(ctx, &d, `
			SELECT c.id, c.current_version, c.activated_at, s.id AS segment_id, v.definition
			FROM campaign c
			JOIN campaign_version v ON v.campaign_id = c.id AND v.version = c.current_version
			JOIN segment s ON s.name = v.definition->>'segment' AND s.deleted_at IS NULL
			WHERE c.name = $1 AND c.status = 'active' AND c.kind = 'drip'
			FOR UPDATE OF c`, campaignName)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("campaign: enroll existing: %w", err)
		}
		if err := json.Unmarshal(d.Raw, &d.Def); err != nil || !d.Def.EnrollExisting {
			return err
		}
		// The members in pages of EnrollBatch, by account id: a segment of
		// any size in a few statements a page, never all in memory.
		now := e.clock.Now()
		for after := int64(0); ; {
			var members []int64
			if err := tx.SelectContext(ctx, &members, `
				SELECT account_id FROM segment_membership
				WHERE segment_id = $1 AND exited_at IS NULL AND account_id > $2
				ORDER BY account_id LIMIT $3`, d.SegmentID, after, e.EnrollBatch); err != nil {
				return fmt.Errorf("campaign: enroll existing: %w", err)
			}
			if len(members) == 0 {
				return nil
			}
			evs := make([]segEvent, len(members))
			for i, acc := range members {
				evs[i] = segEvent{SegmentID: d.SegmentID, AccountID: acc, Kind: "enter", Reason: "initial", At: now}
			}
			n, err := e.enterAll(ctx, tx, &d, evs)
			if err != nil {
				return err
			}
			made += n
			after = members[len(members)-1]
		}
	})
	return made, err
}
