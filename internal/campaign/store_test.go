package campaign_test

import (
	"context"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/testsvc"
)

var t0 = time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)

type fixture struct {
	db       *testsvc.DB
	clock    *clock.Manual
	store    *campaign.Store
	segments *segment.Store
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	t.Parallel()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(t0)
	f := &fixture{db: db, clock: clk, store: campaign.NewStore(db.DB, clk, nil), segments: segment.NewStore(db.DB, clk)}
	if _, err := f.segments.Create(context.Background(), segment.Input{Name: "at-risk", Predicate: `health_score < 40`}); err != nil {
		t.Fatal(err)
	}
	return f
}

func drip(checkinSource string) campaign.Bundle {
	return campaign.Bundle{
		Campaigns: []campaign.Definition{{
			Name: "at-risk-checkin", Kind: campaign.KindDrip, Segment: "at-risk", Exit: campaign.ExitLeavesSegment,
			Steps: []campaign.Step{
				{ID: "checkin", Wait: "0h", Channel: "email", Template: "at-risk/checkin"},
				{ID: "followup", Wait: "5d", Channel: "email", Template: "at-risk/followup", Unless: `opened("checkin")`},
			},
		}},
		Templates: []campaign.TemplateInput{
			{Name: "at-risk/checkin", Kind: "email", Source: checkinSource},
			{Name: "at-risk/followup", Kind: "email", Source: `{{define "subject"}}Following up{{end}}{{define "body"}}<p>Hi</p>{{end}}`},
		},
	}
}

const checkinV1 = `{{define "subject"}}Checking in{{end}}{{define "body"}}<p>How is it going?</p>{{end}}`

func TestApplyVersionsAndDiff(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()

	// Dry run: says what would happen, changes nothing.
	changes, err := f.store.Apply(ctx, drip(checkinV1), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 3 || changes[2].Action != "create" {
		t.Fatalf("diff = %+v", changes)
	}
	var n int
	f.db.Get(&n, `SELECT (SELECT count(*) FROM campaign) + (SELECT count(*) FROM template)`)
	if n != 0 {
		t.Fatalf("a dry run stored %d rows", n)
	}

	if _, err := f.store.Apply(ctx, drip(checkinV1), false); err != nil {
		t.Fatal(err)
	}
	c, err := f.store.Get(ctx, "at-risk-checkin")
	if err != nil || c.Status != campaign.StatusDraft || c.CurrentVersion != 1 || c.Topic != campaign.DefaultTopic {
		t.Fatalf("after apply: %+v %v", c, err)
	}
	// Applying the same again changes nothing.
	changes, _ = f.store.Apply(ctx, drip(checkinV1), false)
	for _, ch := range changes {
		if ch.Action != "unchanged" {
			t.Fatalf("re-apply changed %+v", ch)
		}
	}
	// Editing a template the campaign uses makes a new version that carries
	// its own copy; version 1 keeps the old text.
	if _, err := f.store.SetStatus(ctx, "at-risk-checkin", "activate"); err != nil {
		t.Fatal(err)
	}
	changes, err = f.store.Apply(ctx, drip(`{{define "subject"}}Checking in again{{end}}{{define "body"}}<p>v2</p>{{end}}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if changes[0].Action != "update" || changes[2].Action != "new version" {
		t.Fatalf("edit = %+v", changes)
	}
	var v1, v2 string
	f.db.Get(&v1, `SELECT templates->'at-risk/checkin'->>'source' FROM campaign_version WHERE version = 1`)
	f.db.Get(&v2, `SELECT templates->'at-risk/checkin'->>'source' FROM campaign_version WHERE version = 2`)
	if v1 != checkinV1 || v2 == checkinV1 {
		t.Fatalf("template copies: v1=%q v2=%q", v1, v2)
	}
	c, _ = f.store.Get(ctx, "at-risk-checkin")
	if c.CurrentVersion != 2 || c.Status != campaign.StatusActive {
		t.Fatalf("after edit: %+v", c)
	}
}

func TestApplyRefusesAnyProblemWhole(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := drip(checkinV1)
	b.Campaigns = append(b.Campaigns, campaign.Definition{Name: "broken", Kind: campaign.KindDrip, Segment: "nope",
		Steps: []campaign.Step{{ID: "a", Wait: "0h", Channel: "email", Template: "missing/template"}}})
	_, err := f.store.Apply(ctx, b, false)
	var e *errs.Error
	if err == nil || !errs.Is(err, errs.Invalid) {
		t.Fatalf("want invalid, got %v", err)
	}
	e = err.(*errs.Error)
	if len(e.Details["problems"].([]campaign.Problem)) != 2 {
		t.Fatalf("problems = %+v", e.Details["problems"])
	}
	var n int
	f.db.Get(&n, `SELECT (SELECT count(*) FROM campaign) + (SELECT count(*) FROM template)`)
	if n != 0 {
		t.Fatalf("a refused apply stored %d rows", n)
	}
}

func TestStatusTransitions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.store.Apply(ctx, drip(checkinV1), false); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		action, want string
		code         string
	}{
		{"pause", "", "invalid_transition"}, // a draft was never running
		{"activate", campaign.StatusActive, ""},
		{"activate", campaign.StatusActive, ""}, // idempotent
		{"pause", campaign.StatusPaused, ""},
		{"activate", campaign.StatusActive, ""},
		{"archive", campaign.StatusArchived, ""},
		{"activate", "", "invalid_transition"},
	}
	for _, s := range steps {
		c, err := f.store.SetStatus(ctx, "at-risk-checkin", s.action)
		if s.code != "" {
			if e, ok := err.(*errs.Error); !ok || e.Code != s.code {
				t.Fatalf("%s: want %s, got %v", s.action, s.code, err)
			}
			continue
		}
		if err != nil || c.Status != s.want {
			t.Fatalf("%s: %+v %v", s.action, c, err)
		}
	}
	// An archived campaign cannot be edited.
	_, err := f.store.Apply(ctx, drip(`{{define "subject"}}x{{end}}{{define "body"}}y{{end}}`), false)
	if e, ok := err.(*errs.Error); !ok || e.Code != "campaign_archived" {
		t.Fatalf("edit archived: %v", err)
	}
	if _, err := f.store.SetStatus(ctx, "ghost", "activate"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("unknown campaign: %v", err)
	}
}
