package campaign

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Statuses of a campaign.
const (
	StatusDraft    = "draft"
	StatusActive   = "active"
	StatusPaused   = "paused"
	StatusArchived = "archived"
)

// Template kinds.
const (
	TemplateEmail  = "email"
	TemplateNudge  = "nudge"
	TemplateLayout = "layout" // named layouts/NAME; wraps the email templates asking for it (layouts/default: the others)
)

// layoutPrefix starts the name of every layout, and of nothing else.
const layoutPrefix = "layouts/"

// TemplateInput is a template to store.
type TemplateInput struct {
	Name   string `json:"name"`
	Kind   string `json:"kind"`
	Source string `json:"source"`
}

func (t TemplateInput) hash() string {
	h := sha256.Sum256([]byte(t.Kind + "\x00" + t.Source))
	return hex.EncodeToString(h[:])
}

// Template is a stored template.
type Template struct {
	Name      string    `db:"name" json:"name"`
	Kind      string    `db:"kind" json:"kind"`
	Source    string    `db:"source" json:"source"`
	Hash      string    `db:"hash" json:"-"`
	UpdatedAt time.Time `db:"updated_at" json:"updated_at"`
}

// TemplateChecker parses a template and renders it against sample data,
// refusing one that would fail at send time, and says which layout an email
// template asks for ("" for other kinds). internal/render provides it.
type TemplateChecker interface {
	CheckTemplate(name, kind, source string) (layout string, err error)
}

// Campaign is a stored campaign with its current version's definition.
type Campaign struct {
	ID             int64      `db:"id" json:"-"`
	Name           string     `db:"name" json:"name"`
	Kind           string     `db:"kind" json:"kind"`
	Topic          string     `db:"topic" json:"topic"`
	Status         string     `db:"status" json:"status"`
	CurrentVersion int        `db:"current_version" json:"version"`
	Definition     Definition `db:"-" json:"definition"`
	RawDefinition  []byte     `db:"definition" json:"-"`
	CreatedAt      time.Time  `db:"created_at" json:"created_at"`
	UpdatedAt      time.Time  `db:"updated_at" json:"updated_at"`
}

// Store keeps campaigns, their versions and templates.
type Store struct {
	db      *sqlx.DB
	clock   clock.Clock
	checker TemplateChecker
}

// NewStore returns a campaign store. checker validates templates.
func NewStore(db *sqlx.DB, clk clock.Clock, checker TemplateChecker) *Store {
	return &Store{db: db, clock: clk, checker: checker}
}

// Change is one thing an apply does (or would do).
type Change struct {
	What   string `json:"what"`   // "template" or "campaign"
	Name   string `json:"name"`   // its name
	Action string `json:"action"` // "create", "update", "new version", "unchanged"
	Detail string `json:"detail,omitempty"`
}

// Bundle is what `tend campaigns apply` and POST /v1/campaigns send: campaign
// definitions and the templates they use (those not given are read from the
// store).
type Bundle struct {
	Campaigns []Definition
	Templates []TemplateInput
}

// lookup answers validation questions from the bundle first, then the database.
type lookup struct {
	segments  map[string]bool
	templates map[string]TemplateInput
}

func (l lookup) SegmentExists(name string) bool { return l.segments[name] }
func (l lookup) TemplateKind(name string) (string, bool) {
	t, ok := l.templates[name]
	return t.Kind, ok
}

func (s *Store) loadLookup(ctx context.Context, q postgres.Queryer, b Bundle) (lookup, error) {
	l := lookup{segments: map[string]bool{}, templates: map[string]TemplateInput{}}
	var segs []string
	if err := q.SelectContext(ctx, &segs, `SELECT name FROM segment WHERE deleted_at IS NULL`); err != nil {
		return l, fmt.Errorf("campaign: lookup segments: %w", err)
	}
	for _, n := range segs {
		l.segments[n] = true
	}
	var names []string
	for _, d := range b.Campaigns {
		names = append(names, d.templateNames()...)
	}
	// A name that is not one is refused by Validate; PostgreSQL might
	// refuse it first (a NUL).
	names = slices.DeleteFunc(names, func(n string) bool { return !templRe.MatchString(n) })
	var stored []Template
	if err := q.SelectContext(ctx, &stored, `SELECT name, kind, source, hash, updated_at FROM template WHERE name = ANY($1)`, pq.Array(names)); err != nil {
		return l, fmt.Errorf("campaign: lookup templates: %w", err)
	}
	for _, t := range stored {
		l.templates[t.Name] = TemplateInput{Name: t.Name, Kind: t.Kind, Source: t.Source}
	}
	for _, t := range b.Templates {
		l.templates[t.Name] = t
	}
	return l, nil
}

// templateNames lists the templates a definition uses, sorted and unique.
func (d Definition) templateNames() []string {
	set := map[string]bool{}
	for _, s := range d.Steps {
		set[s.Template] = true
	}
	for _, v := range d.Variants {
		set[v.Template] = true
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// checkTemplate validates a template; it returns the layout an email
// template asks for, when not the default one.
func (s *Store) checkTemplate(t TemplateInput) (string, error) {
	if !templRe.MatchString(t.Name) {
		return "", errs.E(errs.Invalid, "invalid_template", "a template name is lower-case letters, digits and - _ . / (got %q)", t.Name).With("template", t.Name)
	}
	if t.Kind != TemplateEmail && t.Kind != TemplateNudge && t.Kind != TemplateLayout {
		return "", errs.E(errs.Invalid, "invalid_template", "template %q: kind is email, nudge or layout (got %q)", t.Name, t.Kind).With("template", t.Name)
	}
	if p := postgres.TextProblem(t.Source); p != "" {
		return "", errs.E(errs.Invalid, "invalid_template", "template %q: the source %s", t.Name, p).With("template", t.Name)
	}
	if (t.Kind == TemplateLayout) != strings.HasPrefix(t.Name, layoutPrefix) {
		return "", errs.E(errs.Invalid, "invalid_template", "template %q: a layout is named %sNAME, and only a layout is", t.Name, layoutPrefix).With("template", t.Name)
	}
	if s.checker == nil {
		return "", nil
	}
	layout, err := s.checker.CheckTemplate(t.Name, t.Kind, t.Source)
	if layout == defaultLayout {
		layout = "" // built in: always there
	}
	return layout, err
}

// defaultLayout is the layout of email templates that name none (see
// render.DefaultLayoutName); built in until one is stored.
const defaultLayout = layoutPrefix + "default"

// missingLayout is the problem of a template asking for a layout that is
// neither stored nor given.
func missingLayout(template, layout string) string {
	return fmt.Sprintf("template %q asks for the layout %q, which is not stored: apply templates/%s.html with it, or PUT /v1/templates/%s",
		template, layout, layout, layout)
}

// layoutsStored returns which of names are stored layouts.
func layoutsStored(ctx context.Context, q postgres.Queryer, names []string) (map[string]bool, error) {
	var have []string
	if err := q.SelectContext(ctx, &have, `SELECT name FROM template WHERE kind = 'layout' AND name = ANY($1)`, pq.Array(names)); err != nil {
		return nil, fmt.Errorf("campaign: layouts: %w", err)
	}
	out := make(map[string]bool, len(have))
	for _, n := range have {
		out[n] = true
	}
	return out, nil
}

// PutTemplate stores one template after it parses and renders against a
// sample; an email template's layout must be stored already.
func (s *Store) PutTemplate(ctx context.Context, t TemplateInput) (Template, error) {
	layout, err := s.checkTemplate(t)
	if err != nil {
		return Template{}, err
	}
	if layout != "" {
		have, err := layoutsStored(ctx, s.db, []string{layout})
		if err != nil {
			return Template{}, err
		}
		if !have[layout] {
			return Template{}, errs.E(errs.Invalid, "invalid_template", "%s", missingLayout(t.Name, layout)).With("template", t.Name)
		}
	}
	var out Template
	err = s.db.GetContext(ctx, &out, `
		INSERT INTO template AS t (name, kind, source, hash, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $5)
		ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, source = EXCLUDED.source, hash = EXCLUDED.hash,
			updated_at = CASE WHEN t.hash = EXCLUDED.hash THEN t.updated_at ELSE EXCLUDED.updated_at END
		RETURNING name, kind, source, hash, updated_at`, t.Name, t.Kind, t.Source, t.hash(), s.clock.Now())
	if err != nil {
		return Template{}, fmt.Errorf("campaign: put template: %w", err)
	}
	return out, nil
}

// GetTemplate returns a stored template.
func (s *Store) GetTemplate(ctx context.Context, name string) (Template, error) {
	var t Template
	err := s.db.GetContext(ctx, &t, `SELECT name, kind, source, hash, updated_at FROM template WHERE name = $1`, name)
	if err != nil {
		return Template{}, postgres.NotFound(err, "campaign: get template", errs.E(errs.NotFound, "template_not_found", "no template named %q", name))
	}
	return t, nil
}

// Apply validates every template and campaign of the bundle, then (unless
// dryRun) stores them in one transaction: templates by content, campaigns as
// drafts when new, as a new version when their definition or any template
// they use changed. Nothing is stored when anything is invalid.
func (s *Store) Apply(ctx context.Context, b Bundle, dryRun bool) ([]Change, error) {
	var problems []Problem
	layouts := map[string][]int{} // a layout asked for → the templates asking
	given := map[string]bool{}
	for i, t := range b.Templates {
		layout, err := s.checkTemplate(t)
		if err != nil {
			problems = append(problems, Problem{Index: i, Field: "templates." + t.Name, Reason: messageOf(err)})
		}
		if layout != "" {
			layouts[layout] = append(layouts[layout], i)
		}
		if t.Kind == TemplateLayout {
			given[t.Name] = true
		}
	}
	var changes []Change
	err := postgres.InTx(ctx, s.db, func(tx *sqlx.Tx) error {
		// Serialise applies: two at once would race on versions.
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext('tend:campaign:apply'))`); err != nil {
			return fmt.Errorf("campaign: apply: %w", err)
		}
		lk, err := s.loadLookup(ctx, tx, b)
		if err != nil {
			return err
		}
		storedLayouts, err := layoutsStored(ctx, tx, slices.Collect(maps.Keys(layouts)))
		if err != nil {
			return err
		}
		for _, layout := range slices.Sorted(maps.Keys(layouts)) {
			for _, i := range layouts[layout] {
				if !given[layout] && !storedLayouts[layout] {
					problems = append(problems, Problem{Index: i, Field: "templates." + b.Templates[i].Name, Reason: missingLayout(b.Templates[i].Name, layout)})
				}
			}
		}
		seen := map[string]bool{}
		for i := range b.Campaigns {
			d := &b.Campaigns[i]
			if seen[d.Name] {
				problems = append(problems, Problem{Index: i, Field: "name", Reason: fmt.Sprintf("campaign %q is defined twice", d.Name)})
			}
			seen[d.Name] = true
			if err := Validate(d, lk, s.clock); err != nil {
				var e *errs.Error
				if !errors.As(err, &e) {
					return err
				}
				for _, p := range e.Details["problems"].([]Problem) {
					p.Index = i
					p.Field = d.Name + ": " + p.Field
					problems = append(problems, p)
				}
			}
		}
		if len(problems) > 0 {
			return errs.E(errs.Invalid, "invalid_campaign", "%d problem(s), nothing was applied: %s %s", len(problems), problems[0].Field, problems[0].Reason).With("problems", problems)
		}

		// Templates used by some campaign of the bundle, or given alone.
		used := map[string]bool{}
		for _, d := range b.Campaigns {
			for _, n := range d.templateNames() {
				used[n] = true
			}
		}
		var stored []Template
		names := make([]string, 0, len(b.Templates))
		for _, t := range b.Templates {
			names = append(names, t.Name)
		}
		if err := tx.SelectContext(ctx, &stored, `SELECT name, kind, source, hash, updated_at FROM template WHERE name = ANY($1)`, pq.Array(names)); err != nil {
			return fmt.Errorf("campaign: apply: %w", err)
		}
		have := map[string]string{}
		for _, t := range stored {
			have[t.Name] = t.Hash
		}
		for _, t := range b.Templates {
			action := "unchanged"
			switch h, ok := have[t.Name]; {
			case !ok:
				action = "create"
			case h != t.hash():
				action = "update"
			}
			changes = append(changes, Change{What: "template", Name: t.Name, Action: action})
			if action != "unchanged" && !dryRun {
				if _, err := tx.ExecContext(ctx, `
					INSERT INTO template (name, kind, source, hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)
					ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, source = EXCLUDED.source, hash = EXCLUDED.hash, updated_at = EXCLUDED.updated_at`,
					t.Name, t.Kind, t.Source, t.hash(), s.clock.Now()); err != nil {
					return fmt.Errorf("campaign: apply template %s: %w", t.Name, err)
				}
			}
		}
		for _, d := range b.Campaigns {
			c, err := s.saveVersion(ctx, tx, d, lk, dryRun)
			if err != nil {
				return err
			}
			changes = append(changes, c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return changes, nil
}

// saveVersion stores a validated definition: a new draft campaign, a new
// version of an existing one, or nothing when it is unchanged. Each version
// carries copies of the templates it uses.
func (s *Store) saveVersion(ctx context.Context, tx *sqlx.Tx, d Definition, lk lookup, dryRun bool) (Change, error) {
	def, err := canonical(d)
	if err != nil {
		return Change{}, fmt.Errorf("campaign: save: %w", err)
	}
	copies := map[string]TemplateInput{}
	for _, n := range d.templateNames() {
		copies[n] = lk.templates[n]
	}
	tpl, err := json.Marshal(copies) // map keys marshal sorted: stable
	if err != nil {
		return Change{}, fmt.Errorf("campaign: save: %w", err)
	}
	sum := sha256.Sum256(append(append(def, 0), tpl...))
	hash := hex.EncodeToString(sum[:])

	var cur struct {
		ID      int64  `db:"id"`
		Kind    string `db:"kind"`
		Status  string `db:"status"`
		Version int    `db:"current_version"`
		Hash    string `db:"hash"`
	}
	err = tx.GetContext(ctx, &cur, `
		SELECT c.id, c.kind, c.status, c.current_version, v.hash
		FROM campaign c JOIN campaign_version v ON v.campaign_id = c.id AND v.version = c.current_version
		WHERE c.name = $1 FOR UPDATE OF c`, d.Name)
	now := s.clock.Now()
	if errors.Is(err, sql.ErrNoRows) {
		// A new campaign: a draft.
		if dryRun {
			return Change{What: "campaign", Name: d.Name, Action: "create", Detail: "as a draft"}, nil
		}
		var id int64
		if err := tx.GetContext(ctx, &id, `
			INSERT INTO campaign (name, kind, topic, status, current_version, created_at, updated_at)
			VALUES ($1, $2, $3, 'draft', 1, $4, $4) RETURNING id`, d.Name, d.Kind, d.Topic, now); err != nil {
			return Change{}, fmt.Errorf("campaign: create %s: %w", d.Name, err)
		}
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO campaign_version (campaign_id, version, definition, templates, hash, created_at)
			VALUES ($1, 1, $2, $3, $4, $5)`, id, def, tpl, hash, now); err != nil {
			return Change{}, fmt.Errorf("campaign: create %s: %w", d.Name, err)
		}
		return Change{What: "campaign", Name: d.Name, Action: "create", Detail: "as a draft"}, nil
	}
	if err != nil {
		return Change{}, fmt.Errorf("campaign: save %s: %w", d.Name, err)
	}
	switch {
	case cur.Hash == hash:
		return Change{What: "campaign", Name: d.Name, Action: "unchanged", Detail: fmt.Sprintf("version %d, %s", cur.Version, cur.Status)}, nil
	case cur.Kind != d.Kind:
		return Change{}, errs.E(errs.Conflict, "kind_change", "campaign %q is a %s; its kind cannot change (archive it and use a new name)", d.Name, cur.Kind)
	case cur.Status == StatusArchived:
		return Change{}, errs.E(errs.Conflict, "campaign_archived", "campaign %q is archived and cannot be edited", d.Name)
	}
	next := cur.Version + 1
	if dryRun {
		return Change{What: "campaign", Name: d.Name, Action: "new version", Detail: fmt.Sprintf("version %d (running enrollments stay on theirs)", next)}, nil
	}
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO campaign_version (campaign_id, version, definition, templates, hash, created_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, cur.ID, next, def, tpl, hash, now); err != nil {
		return Change{}, fmt.Errorf("campaign: version %s: %w", d.Name, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE campaign SET current_version = $2, topic = $3, updated_at = $4 WHERE id = $1`, cur.ID, next, d.Topic, now); err != nil {
		return Change{}, fmt.Errorf("campaign: version %s: %w", d.Name, err)
	}
	return Change{What: "campaign", Name: d.Name, Action: "new version", Detail: fmt.Sprintf("version %d", next)}, nil
}

// Get returns a campaign with its current definition.
func (s *Store) Get(ctx context.Context, name string) (Campaign, error) {
	var c Campaign
	err := s.db.GetContext(ctx, &c, `
		SELECT c.id, c.name, c.kind, c.topic, c.status, c.current_version, v.definition, c.created_at, c.updated_at
		FROM campaign c JOIN campaign_version v ON v.campaign_id = c.id AND v.version = c.current_version
		WHERE c.name = $1`, name)
	if err != nil {
		return Campaign{}, postgres.NotFound(err, "campaign: get", notFound(name))
	}
	if err := json.Unmarshal(c.RawDefinition, &c.Definition); err != nil {
		return Campaign{}, fmt.Errorf("campaign: get %s: %w", name, err)
	}
	return c, nil
}

// List returns every campaign by name.
func (s *Store) List(ctx context.Context) ([]Campaign, error) {
	var out []Campaign
	err := s.db.SelectContext(ctx, &out, `
		SELECT c.id, c.name, c.kind, c.topic, c.status, c.current_version, v.definition, c.created_at, c.updated_at
		FROM campaign c JOIN campaign_version v ON v.campaign_id = c.id AND v.version = c.current_version
		ORDER BY c.name`)
	if err != nil {
		return nil, fmt.Errorf("campaign: list: %w", err)
	}
	for i := range out {
		if err := json.Unmarshal(out[i].RawDefinition, &out[i].Definition); err != nil {
			return nil, fmt.Errorf("campaign: list: %w", err)
		}
	}
	if out == nil {
		out = []Campaign{}
	}
	return out, nil
}

func notFound(name string) *errs.Error {
	return errs.E(errs.NotFound, "campaign_not_found", "no campaign named %q", name)
}

// transitions lists the statuses each action may start from.
var transitions = map[string]struct {
	to   string
	from []string
}{
	"activate": {StatusActive, []string{StatusDraft, StatusPaused, StatusActive}},
	"pause":    {StatusPaused, []string{StatusActive, StatusPaused}},
	"archive":  {StatusArchived, []string{StatusDraft, StatusActive, StatusPaused, StatusArchived}},
}

// SetStatus activates, pauses or archives a campaign. Repeating an action is
// a no-op (activate is idempotent); an action from a status it does not
// apply to is a conflict.
func (s *Store) SetStatus(ctx context.Context, name, action string) (Campaign, error) {
	t, ok := transitions[action]
	if !ok {
		return Campaign{}, fmt.Errorf("campaign: unknown action %q", action)
	}
	c, err := s.Get(ctx, name)
	if err != nil {
		return Campaign{}, err
	}
	allowed := false
	for _, f := range t.from {
		allowed = allowed || f == c.Status
	}
	if !allowed {
		return Campaign{}, errs.E(errs.Conflict, "invalid_transition", "campaign %q is %s; it cannot %s", name, c.Status, action)
	}
	// The status and, for an archive, the end of its enrollments and sends
	// commit together: an archived campaign never keeps running ones.
	err = postgres.InTx(ctx, s.db, func(tx *sqlx.Tx) error {
		now := s.clock.Now()
		res, err := tx.ExecContext(ctx, `
			UPDATE campaign SET status = $2, updated_at = $3,
				activated_at = CASE WHEN $2 = 'active' THEN coalesce(activated_at, $3) ELSE activated_at END
			WHERE id = $1 AND status = $4`, c.ID, t.to, now, c.Status)
		if err != nil {
			return fmt.Errorf("campaign: %s: %w", action, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errs.E(errs.Conflict, "concurrent_change", "campaign %q changed meanwhile; try again", name)
		}
		if t.to != StatusArchived || c.Status == StatusArchived {
			return nil
		}
		// Archiving ends running enrollments; their scheduled sends are skipped.
		var ended []int64
		if err := tx.SelectContext(ctx, &ended, `
			UPDATE enrollment SET status = 'exited', finished_at = $2, finish_reason = 'campaign archived'
			WHERE campaign_id = $1 AND status = 'active' RETURNING id`, c.ID, now); err != nil {
			return fmt.Errorf("campaign: archive: %w", err)
		}
		if err := skipScheduled(ctx, tx, ended, "exited: the campaign was archived", now); err != nil {
			return err
		}
		// A broadcast's messages belong to completed fan-out enrollments.
		if _, err := tx.ExecContext(ctx, `
			UPDATE message SET status = 'skipped', reason = 'the campaign was archived', updated_at = $2
			WHERE campaign_id = $1 AND status = 'scheduled' AND NOT test`, c.ID, now); err != nil {
			return fmt.Errorf("campaign: archive: %w", err)
		}
		return nil
	})
	if err != nil {
		return Campaign{}, err
	}
	return s.Get(ctx, name)
}

func messageOf(err error) string {
	var e *errs.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}
