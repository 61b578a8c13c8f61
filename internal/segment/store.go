package segment

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Status of a segment's membership.
const (
	StatusBuilding = "building" // the current predicate has not been evaluated for every account yet
	StatusReady    = "ready"
)

// Reasons for entries and exits.
const (
	ReasonData       = "data"       // the account's data changed
	ReasonInitial    = "initial"    // the segment was created
	ReasonDefinition = "definition" // the segment's predicate was edited
	ReasonTime       = "time"       // the clock moved (a window slid, days_since grew)
	ReasonDeleted    = "deleted"    // the segment was deleted (exits only)
)

// Segment is a stored segment.
type Segment struct {
	ID              int64      `db:"id" json:"-"`
	Name            string     `db:"name" json:"name"`
	Description     string     `db:"description" json:"description"`
	Predicate       string     `db:"predicate" json:"predicate"`
	Generation      int64      `db:"generation" json:"generation"`
	BuiltGeneration int64      `db:"built_generation" json:"-"`
	BuildReason     string     `db:"build_reason" json:"-"`
	Status          string     `db:"-" json:"status"`
	Members         int64      `db:"members" json:"members"`
	ErrorCount      int64      `db:"error_count" json:"error_count"`
	LastError       string     `db:"last_error" json:"last_error,omitempty"`
	LastErrorAt     *time.Time `db:"last_error_at" json:"last_error_at,omitempty"`
	CreatedAt       time.Time  `db:"created_at" json:"created_at"`
	UpdatedAt       time.Time  `db:"updated_at" json:"updated_at"`
}

func (s *Segment) fill() {
	s.Status = StatusReady
	if s.BuiltGeneration < s.Generation {
		s.Status = StatusBuilding
	}
}

// Input creates or edits a segment.
type Input struct {
	Name        string  `json:"name"`
	Predicate   string  `json:"predicate"`
	Description *string `json:"description,omitempty"`
}

// Store keeps segments and their membership.
type Store struct {
	db    *sqlx.DB
	clock clock.Clock
}

// NewStore returns a segment store.
func NewStore(db *sqlx.DB, clk clock.Clock) *Store { return &Store{db: db, clock: clk} }

const maxDescriptionLen = 2000

var nameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

func checkName(name string) error {
	if !nameRe.MatchString(name) {
		return errs.E(errs.Invalid, "invalid_name", "a segment name is 1 to 63 lower-case letters, digits, - or _, starting with a letter or digit; got %q", name).With("field", "name")
	}
	return nil
}

func (s *Store) check(in Input) error {
	if err := checkName(in.Name); err != nil {
		return err
	}
	if in.Description != nil {
		if p := postgres.BoundedTextProblem(*in.Description, maxDescriptionLen); p != "" {
			return errs.E(errs.Invalid, "invalid_description", "the description %s", p).With("field", "description")
		}
	}
	_, err := Compile(in.Predicate, s.clock)
	return err
}

const segmentColumns = `s.id, s.name, s.description, s.predicate, s.generation, s.built_generation, s.build_reason,
	s.error_count, s.last_error, s.last_error_at, s.created_at, s.updated_at,
	(SELECT count(*) FROM segment_membership m WHERE m.segment_id = s.id AND m.exited_at IS NULL) AS members`

// Create saves a new segment; its membership is built in the background.
func (s *Store) Create(ctx context.Context, in Input) (Segment, error) {
	if err := s.check(in); err != nil {
		return Segment{}, err
	}
	desc := ""
	if in.Description != nil {
		desc = *in.Description
	}
	var seg Segment
	err := s.db.GetContext(ctx, &seg, `
		INSERT INTO segment AS s (name, description, predicate, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $4)
		ON CONFLICT (name) WHERE deleted_at IS NULL DO NOTHING
		RETURNING `+segmentColumns, in.Name, desc, in.Predicate, s.clock.Now())
	if err != nil {
		return Segment{}, postgres.NotFound(err, "segment: create",
			errs.E(errs.Conflict, "segment_exists", "a segment named %q exists; PUT /v1/segments/%s to edit it", in.Name, in.Name))
	}
	seg.fill()
	return seg, nil
}

// Update edits a segment. A new predicate bumps its generation, which
// rebuilds its membership with reason "definition".
func (s *Store) Update(ctx context.Context, name string, in Input) (Segment, error) {
	if in.Name == "" {
		in.Name = name
	}
	if in.Name != name {
		return Segment{}, errs.E(errs.Invalid, "rename_not_supported", "the name in the body (%q) differs from the URL (%q); segments cannot be renamed", in.Name, name).With("field", "name")
	}
	if err := s.check(in); err != nil {
		return Segment{}, err
	}
	var seg Segment
	err := s.db.GetContext(ctx, &seg, `
		UPDATE segment AS s SET
			description = coalesce($3, s.description),
			predicate = $2,
			generation = s.generation + CASE WHEN s.predicate <> $2 THEN 1 ELSE 0 END,
			build_reason = CASE WHEN s.predicate <> $2 THEN 'definition' ELSE s.build_reason END,
			updated_at = $4
		WHERE s.name = $1 AND s.deleted_at IS NULL
		RETURNING `+segmentColumns, name, in.Predicate, in.Description, s.clock.Now())
	if err != nil {
		return Segment{}, postgres.NotFound(err, "segment: update", notFound(name))
	}
	seg.fill()
	return seg, nil
}

func notFound(name string) *errs.Error {
	return errs.E(errs.NotFound, "segment_not_found", "no segment named %q", name)
}

// Delete removes a segment. Its open memberships are closed with reason
// "deleted", so history stays whole.
func (s *Store) Delete(ctx context.Context, name string) error {
	return postgres.InTx(ctx, s.db, func(tx *sqlx.Tx) error {
		now := s.clock.Now()
		var id int64
		err := tx.GetContext(ctx, &id, `UPDATE segment SET deleted_at = $2 WHERE name = $1 AND deleted_at IS NULL RETURNING id`, name, now)
		if err != nil {
			return postgres.NotFound(err, "segment: delete", notFound(name))
		}
		_, err = tx.ExecContext(ctx, `
			WITH closed AS (
				UPDATE segment_membership SET exited_at = $2, exit_reason = 'deleted'
				WHERE segment_id = $1 AND exited_at IS NULL
				RETURNING segment_id, account_id
			)
			INSERT INTO segment_event (segment_id, account_id, kind, reason, at)
			SELECT segment_id, account_id, 'exit', 'deleted', $2 FROM closed`, id, now)
		if err != nil {
			return fmt.Errorf("segment: delete: %w", err)
		}
		return nil
	})
}

// Get returns a live segment by name.
func (s *Store) Get(ctx context.Context, name string) (Segment, error) {
	var seg Segment
	err := s.db.GetContext(ctx, &seg, `SELECT `+segmentColumns+` FROM segment s WHERE s.name = $1 AND s.deleted_at IS NULL`, name)
	if err != nil {
		return Segment{}, postgres.NotFound(err, "segment: get", notFound(name))
	}
	seg.fill()
	return seg, nil
}

// List returns every live segment by name.
func (s *Store) List(ctx context.Context) ([]Segment, error) {
	out := []Segment{}
	if err := s.db.SelectContext(ctx, &out, `SELECT `+segmentColumns+` FROM segment s WHERE s.deleted_at IS NULL ORDER BY s.name`); err != nil {
		return nil, fmt.Errorf("segment: list: %w", err)
	}
	for i := range out {
		out[i].fill()
	}
	return out, nil
}

// Member is an account in a segment.
type Member struct {
	AccountID int64     `db:"account_id" json:"-"`
	Account   string    `db:"external_id" json:"account_id"`
	EnteredAt time.Time `db:"entered_at" json:"entered_at"`
	Reason    string    `db:"entry_reason" json:"reason"`
}

// Members lists current members after the given internal account id, in id
// order, up to limit.
func (s *Store) Members(ctx context.Context, name string, after int64, limit int) ([]Member, error) {
	seg, err := s.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	out := []Member{}
	err = s.db.SelectContext(ctx, &out, `
		SELECT m.account_id, a.external_id, m.entered_at, m.entry_reason
		FROM segment_membership m JOIN account a ON a.id = m.account_id
		WHERE m.segment_id = $1 AND m.exited_at IS NULL AND m.account_id > $2
		ORDER BY m.account_id
		LIMIT $3`, seg.ID, after, limit)
	if err != nil {
		return nil, fmt.Errorf("segment: members: %w", err)
	}
	return out, nil
}

// Stay is one stay of an account in a segment.
type Stay struct {
	Segment     string     `db:"name" json:"segment"`
	EnteredAt   time.Time  `db:"entered_at" json:"entered_at"`
	EntryReason string     `db:"entry_reason" json:"entry_reason"`
	ExitedAt    *time.Time `db:"exited_at" json:"exited_at,omitempty"`
	ExitReason  *string    `db:"exit_reason" json:"exit_reason,omitempty"`
}

// History lists an account's entries and exits, newest first.
func (s *Store) History(ctx context.Context, accountID int64, limit int) ([]Stay, error) {
	out := []Stay{}
	err := s.db.SelectContext(ctx, &out, `
		SELECT s.name, m.entered_at, m.entry_reason, m.exited_at, m.exit_reason
		FROM segment_membership m JOIN segment s ON s.id = m.segment_id
		WHERE m.account_id = $1
		ORDER BY m.entered_at DESC, m.id DESC
		LIMIT $2`, accountID, limit)
	if err != nil {
		return nil, fmt.Errorf("segment: history: %w", err)
	}
	return out, nil
}

// CurrentOf returns the names of the segments an account is in now.
func (s *Store) CurrentOf(ctx context.Context, accountID int64) ([]string, error) {
	out := []string{}
	err := s.db.SelectContext(ctx, &out, `
		SELECT s.name FROM segment_membership m JOIN segment s ON s.id = m.segment_id
		WHERE m.account_id = $1 AND m.exited_at IS NULL ORDER BY s.name`, accountID)
	if err != nil {
		return nil, fmt.Errorf("segment: current of: %w", err)
	}
	return out, nil
}

// shorten keeps a last-error text short.
func shorten(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 500 {
		return s[:500] + "…"
	}
	return s
}
