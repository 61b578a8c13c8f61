package campaign

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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

	progs sync.Map // expression source → *vm.Program
}

// NewEnroller returns an enroller.
func NewEnroller(db *sqlx.DB, clk clock.Clock, log *slog.Logger, defaultTZ *time.Location) *Enroller {
	if defaultTZ == nil {
		defaultTZ = time.UTC
	}
	return &Enroller{db: db, clock: clk, log: log, DefaultTimezone: defaultTZ}
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
		bySegment := map[int64][]*runningDrip{}
		for i := range drips {
			if err := json.Unmarshal(drips[i].Raw, &drips[i].Def); err != nil {
				return fmt.Errorf("campaign: drip %d: %w", drips[i].ID, err)
			}
			bySegment[drips[i].SegmentID] = append(bySegment[drips[i].SegmentID], &drips[i])
		}
		for _, ev := range events {
			switch ev.Kind {
			case "enter":
				for _, d := range bySegment[ev.SegmentID] {
					if err := e.enter(ctx, tx, d, ev); err != nil {
						return err
					}
				}
			case "exit":
				if err := e.exit(ctx, tx, ev); err != nil {
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

// enter enrolls the account of an entry event in a drip, when the drip's
// rules allow it.
func (e *Enroller) enter(ctx context.Context, tx *sqlx.Tx, d *runningDrip, ev segEvent) error {
	switch {
	case (ev.Reason == "initial" || ev.Reason == "definition") && !d.Def.EnrollExisting:
		return nil // created or edited segment: only with enroll_existing
	case d.ActivatedAt == nil || ev.At.Before(*d.ActivatedAt):
		return nil // the account entered before the drip was running
	}
	var last struct {
		Entry     int       `db:"entry_number"`
		EnteredAt time.Time `db:"entered_at"`
		Status    string    `db:"status"`
	}
	err := tx.GetContext(ctx, &last, `
		SELECT entry_number, entered_at, status FROM enrollment
		WHERE campaign_id = $1 AND account_id = $2 ORDER BY entry_number DESC LIMIT 1`, d.ID, ev.AccountID)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("campaign: last enrollment: %w", err)
	case last.Status == EnrollmentActive:
		return nil
	case d.Def.ReenrollAfter == "":
		return nil // entered before, and re-entry is not allowed
	default:
		w, _ := ParseWait(d.Def.ReenrollAfter)
		if ev.At.Before(w.After(last.EnteredAt, time.UTC)) {
			return nil // too soon to re-enter
		}
	}
	contacts, err := e.audience(ctx, tx, d.Def, ev.AccountID)
	if err != nil {
		return err
	}
	var id int64
	err = tx.GetContext(ctx, &id, `
		INSERT INTO enrollment (campaign_id, version, account_id, entry_number, segment_event_id, contacts,
			status, step, anchor_at, entered_at)
		VALUES ($1, $2, $3, $4, nullif($5, 0), $6, 'active', 0, $7, $7)
		ON CONFLICT DO NOTHING
		RETURNING id`, d.ID, d.Version, ev.AccountID, last.Entry+1, ev.ID, pq.Array(contacts), ev.At)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // a concurrent enrollment won
	}
	if err != nil {
		return fmt.Errorf("campaign: enroll: %w", err)
	}
	return e.scheduleStep(ctx, tx, id, d.ID, d.Version, d.Def, ev.AccountID, contacts, 0, ev.At)
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

// audience returns the ids of one account's contacts in the audience.
func (e *Enroller) audience(ctx context.Context, q postgres.Queryer, def Definition, accountID int64) ([]int64, error) {
	by, err := e.audienceOf(ctx, q, def, []int64{accountID})
	if err != nil {
		return nil, err
	}
	ids := make([]int64, 0, len(by[accountID]))
	for _, c := range by[accountID] {
		ids = append(ids, c.ID)
	}
	return ids, nil
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

// scheduleStep writes the outbox rows of one step: one per audience contact,
// due at anchor plus the step's wait in the contact's time zone (else the
// account's, else the default), moved into the campaign's send window in
// that zone. An enrollment with nobody to write to completes at once.
func (e *Enroller) scheduleStep(ctx context.Context, tx *sqlx.Tx, enrollmentID, campaignID int64, version int, def Definition,
	accountID int64, contacts []int64, step int, anchor time.Time) error {
	if len(contacts) == 0 {
		_, err := tx.ExecContext(ctx, `
			UPDATE enrollment SET status = 'completed', finished_at = $2, finish_reason = 'no contact in the audience'
			WHERE id = $1`, enrollmentID, e.clock.Now())
		return err
	}
	st := def.Steps[step]
	wait, err := ParseWait(st.Wait)
	if err != nil {
		return fmt.Errorf("campaign: step %s: %w", st.ID, err)
	}
	var zones []struct {
		ID      int64  `db:"id"`
		Contact string `db:"contact_tz"`
		Account string `db:"account_tz"`
	}
	if err := tx.SelectContext(ctx, &zones, `
		SELECT c.id, c.timezone AS contact_tz, a.timezone AS account_tz
		FROM contact c JOIN account a ON a.id = c.account_id
		WHERE c.id = ANY($1) ORDER BY c.id`, pq.Array(contacts)); err != nil {
		return fmt.Errorf("campaign: schedule: %w", err)
	}
	ids := make([]int64, len(zones))
	due := make([]time.Time, len(zones))
	for i, z := range zones {
		ids[i] = z.ID
		loc := e.Location(z.Contact, z.Account)
		due[i] = def.Window.Next(wait.After(anchor, loc), loc)
	}
	now := e.clock.Now()
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, created_at, updated_at)
		SELECT $1, $2, $3, $4, x.contact_id, $5, 'scheduled', x.due_at, $6, $6
		FROM unnest($7::bigint[], $8::timestamptz[]) AS x(contact_id, due_at)
		ON CONFLICT (enrollment_id, step_id, contact_id) DO NOTHING`,
		enrollmentID, campaignID, version, st.ID, st.Channel, now, pq.Array(ids), pq.Array(due)); err != nil {
		return fmt.Errorf("campaign: schedule step %s: %w", st.ID, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE enrollment SET step = $2, anchor_at = $3 WHERE id = $1`, enrollmentID, step, anchor); err != nil {
		return fmt.Errorf("campaign: schedule step %s: %w", st.ID, err)
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

// exit stops the account's running enrollments in drips that exit when the
// account leaves this segment; their scheduled messages are skipped.
func (e *Enroller) exit(ctx context.Context, tx *sqlx.Tx, ev segEvent) error {
	var exited []int64
	err := tx.SelectContext(ctx, &exited, `
		UPDATE enrollment en SET status = 'exited', finished_at = $3, finish_reason = 'left segment ' || s.name
		FROM campaign_version v, segment s
		WHERE en.account_id = $1 AND en.status = 'active'
		  AND v.campaign_id = en.campaign_id AND v.version = en.version
		  AND v.definition->>'exit' = 'leaves_segment'
		  AND s.id = $2 AND s.name = v.definition->>'segment'
		RETURNING en.id`, ev.AccountID, ev.SegmentID, e.clock.Now())
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

// Convert ends an enrollment whose goal holds: converted, its scheduled
// messages skipped.
func (e *Enroller) Convert(ctx context.Context, q postgres.Queryer, enrollmentID int64) error {
	now := e.clock.Now()
	res, err := q.ExecContext(ctx, `
		UPDATE enrollment SET status = 'converted', finished_at = $2, finish_reason = 'goal reached'
		WHERE id = $1 AND status = 'active'`, enrollmentID, now)
	if err != nil {
		return fmt.Errorf("campaign: convert: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil
	}
	return skipScheduled(ctx, q, []int64{enrollmentID}, "converted: the goal holds", now)
}

// Advance moves enrollments whose current step is finished (every message
// sent, failed, skipped or uncertain) to their next step, anchored on the
// step's last send, or completes them after the last step.
func (e *Enroller) Advance(ctx context.Context, tx *sqlx.Tx, enrollmentIDs []int64) error {
	if len(enrollmentIDs) == 0 {
		return nil
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
	// messages agree on one advance.
	err := tx.SelectContext(ctx, &rows, `
		SELECT en.id, en.campaign_id, en.version, en.account_id, en.step, en.contacts, v.definition,
		       coalesce(max(m.sent_at), max(m.due_at)) AS anchor
		FROM enrollment en
		JOIN campaign_version v ON v.campaign_id = en.campaign_id AND v.version = en.version
		JOIN message m ON m.enrollment_id = en.id AND m.step_id = v.definition->'steps'->en.step->>'id'
		WHERE en.id = ANY($1) AND en.status = 'active'
		GROUP BY en.id, v.definition
		HAVING bool_and(m.status IN ('sent', 'failed', 'skipped', 'uncertain'))
		ORDER BY en.id`, pq.Array(enrollmentIDs))
	if err != nil {
		return fmt.Errorf("campaign: advance: %w", err)
	}
	for _, r := range rows {
		var locked int64
		if err := tx.GetContext(ctx, &locked, `SELECT id FROM enrollment WHERE id = $1 AND status = 'active' AND step = $2 FOR UPDATE`, r.ID, r.Step); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				continue // advanced or finished by someone else
			}
			return fmt.Errorf("campaign: advance: %w", err)
		}
		var def Definition
		if err := json.Unmarshal(r.Raw, &def); err != nil {
			return fmt.Errorf("campaign: advance: %w", err)
		}
		if r.Step+1 >= len(def.Steps) {
			if _, err := tx.ExecContext(ctx, `
				UPDATE enrollment SET status = 'completed', finished_at = $2, finish_reason = 'every step done' WHERE id = $1`,
				r.ID, e.clock.Now()); err != nil {
				return fmt.Errorf("campaign: complete: %w", err)
			}
			continue
		}
		if err := e.scheduleStep(ctx, tx, r.ID, r.CampaignID, r.Version, def, r.AccountID, r.Contacts, r.Step+1, r.Anchor); err != nil {
			return err
		}
	}
	return nil
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
		var members []int64
		if err := tx.SelectContext(ctx, &members, `
			SELECT account_id FROM segment_membership WHERE segment_id = $1 AND exited_at IS NULL ORDER BY account_id`,
			d.SegmentID); err != nil {
			return fmt.Errorf("campaign: enroll existing: %w", err)
		}
		now := e.clock.Now()
		for _, acc := range members {
			var before int
			tx.GetContext(ctx, &before, `SELECT count(*) FROM enrollment WHERE campaign_id = $1 AND account_id = $2`, d.ID, acc)
			if err := e.enter(ctx, tx, &d, segEvent{SegmentID: d.SegmentID, AccountID: acc, Kind: "enter", Reason: "initial", At: now}); err != nil {
				return err
			}
			var after int
			tx.GetContext(ctx, &after, `SELECT count(*) FROM enrollment WHERE campaign_id = $1 AND account_id = $2`, d.ID, acc)
			made += after - before
		}
		return nil
	})
	return made, err
}
