package campaign

import (
	"strings"
	"testing"
	"time"

	"github.com/expr-lang/expr/vm"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
)

// known is a Lookup over fixed names (validation is pure; the store's own
// Lookup is tested against PostgreSQL in store_test.go).
type known struct {
	segments  map[string]bool
	templates map[string]string
}

func (k known) SegmentExists(n string) bool { return k.segments[n] }
func (k known) TemplateKind(n string) (string, bool) {
	kind, ok := k.templates[n]
	return kind, ok
}

var lk = known{
	segments:  map[string]bool{"at-risk": true, "smb": true, "enterprise": true},
	templates: map[string]string{"at-risk/checkin": "email", "at-risk/followup": "email", "nudges/reports-tip": "nudge", "releases/smb": "email", "releases/ent": "email"},
}

const designExample = `
name: at-risk-checkin
kind: drip
segment: at-risk
audience: 'contact.role in ["admin", "champion"]'
sender: csm
exit: leaves_segment
goal: 'logins_7d >= 3'
window: {days: [mon, tue, wed, thu, fri], from: "09:00", to: "17:00"}
steps:
  - {id: checkin,  wait: 0h, channel: email,  template: at-risk/checkin}
  - {id: tip,      wait: 2d, channel: in_app, template: nudges/reports-tip}
  - {id: followup, wait: 5d, channel: email,  template: at-risk/followup, unless: 'opened("checkin")'}
---
name: release-2026-12
kind: broadcast
send_at: 2026-12-01T15:00:00Z
variants:
  - {segment: enterprise, template: releases/ent}
  - {segment: smb,        template: releases/smb}
`

func TestTheDesignExampleIsValid(t *testing.T) {
	defs, err := ParseYAML([]byte(designExample))
	if err != nil {
		t.Fatal(err)
	}
	if len(defs) != 2 {
		t.Fatalf("want 2 definitions, got %d", len(defs))
	}
	clk := clock.NewManual(time.Now())
	for i := range defs {
		if err := Validate(&defs[i], lk, clk); err != nil {
			t.Fatalf("%s: %v", defs[i].Name, err)
		}
	}
	if defs[0].Topic != DefaultTopic || defs[0].Steps[2].Unless == "" || defs[1].Variants[0].Channel != ChannelEmail {
		t.Fatalf("defaults not filled: %+v", defs)
	}
}

func TestValidationNamesEveryBadField(t *testing.T) {
	clk := clock.NewManual(time.Now())
	cases := []struct {
		yaml  string
		field string
	}{
		{`{name: x, kind: drip, segment: nope, steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}]}`, "segment"},
		{`{name: x, kind: drip, segment: at-risk, steps: []}`, "steps"},
		{`{name: x, kind: drip, segment: at-risk, steps: [{id: a, wait: 2 days, channel: email, template: at-risk/checkin}]}`, "steps[0].wait"},
		{`{name: x, kind: drip, segment: at-risk, steps: [{id: a, wait: 0h, channel: sms, template: at-risk/checkin}]}`, "steps[0].channel"},
		{`{name: x, kind: drip, segment: at-risk, steps: [{id: a, wait: 0h, channel: email, template: missing/one}]}`, "steps[0].template"},
		{`{name: x, kind: drip, segment: at-risk, steps: [{id: a, wait: 0h, channel: email, template: nudges/reports-tip}]}`, "steps[0].template"},
		{`{name: x, kind: drip, segment: at-risk, audience: 'contact.rol == "x"', steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}]}`, "audience"},
		{`{name: x, kind: drip, segment: at-risk, goal: 'logins_7d', steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}]}`, "goal"},
		{`{name: x, kind: drip, segment: at-risk, steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin, unless: 'opened("b")'}, {id: b, wait: 1d, channel: email, template: at-risk/followup}]}`, "steps[0].unless"},
		{`{name: x, kind: drip, segment: at-risk, steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}, {id: a, wait: 1d, channel: email, template: at-risk/followup}]}`, "steps[1].id"},
		{`{name: x, kind: drip, segment: at-risk, sender: "not an address", steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}]}`, "sender"},
		{`{name: x, kind: drip, segment: at-risk, exit: sometimes, steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}]}`, "exit"},
		{`{name: x, kind: drip, segment: at-risk, reenroll_after: soon, steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}]}`, "reenroll_after"},
		{`{name: x, kind: drip, segment: at-risk, window: {days: [mon], from: "17:00", to: "09:00"}, steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}]}`, "window"},
		{`{name: x, kind: drip, segment: at-risk, window: {days: [funday], from: "09:00", to: "17:00"}, steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}]}`, "window.days[0]"},
		{`{name: "Bad Name", kind: drip, segment: at-risk, steps: [{id: a, wait: 0h, channel: email, template: at-risk/checkin}]}`, "name"},
		{`{name: x, kind: newsletter}`, "kind"},
		{`{name: x, kind: broadcast, variants: [{segment: smb, template: releases/smb}]}`, "send_at"},
		{`{name: x, kind: broadcast, send_at: 2026-12-01T15:00:00Z, variants: [{segment: smb, template: releases/smb}, {segment: smb, template: releases/ent}]}`, "variants[1].segment"},
	}
	for _, c := range cases {
		defs, err := ParseYAML([]byte(c.yaml))
		if err != nil {
			t.Errorf("%s: parse: %v", c.yaml, err)
			continue
		}
		err = Validate(&defs[0], lk, clk)
		e, ok := err.(*errs.Error)
		if !ok || e.Code != "invalid_campaign" {
			t.Errorf("%s: want invalid_campaign, got %v", c.yaml, err)
			continue
		}
		found := false
		for _, p := range e.Details["problems"].([]Problem) {
			if p.Field == c.field {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no problem at %q in %v", c.yaml, c.field, e.Details["problems"])
		}
	}
}

func TestParseYAMLRefusesUnknownKeys(t *testing.T) {
	_, err := ParseYAML([]byte("name: x\nkind: drip\nsegmnt: at-risk\n"))
	if err == nil || !strings.Contains(err.Error(), "segmnt") {
		t.Fatalf("want an error naming the unknown key, got %v", err)
	}
}

func TestWaitsAreCalendarDaysInTheZone(t *testing.T) {
	paris, _ := time.LoadLocation("Europe/Paris")
	// 09:00 in Paris the day before the spring DST change, plus 2 calendar
	// days, is 09:00 in Paris again: 47 hours later, not 48.
	start := time.Date(2026, 3, 28, 9, 0, 0, 0, paris)
	w, err := ParseWait("2d")
	if err != nil {
		t.Fatal(err)
	}
	got := w.After(start, paris)
	if got.In(paris).Hour() != 9 || got.Sub(start) != 47*time.Hour {
		t.Fatalf("2d after %s = %s (%s later)", start, got.In(paris), got.Sub(start))
	}
	w, _ = ParseWait("1d12h")
	if w.Days != 1 || w.D != 12*time.Hour {
		t.Fatalf("1d12h = %+v", w)
	}
	for _, bad := range []string{"", "2 days", "-1d", "1w", "h"} {
		if _, err := ParseWait(bad); err == nil {
			t.Errorf("ParseWait(%q) must fail", bad)
		}
	}
}

func TestUnlessReadsTheStepState(t *testing.T) {
	clk := clock.NewManual(time.Now())
	prog, err := CompileUnless(`opened("checkin") || clicked("checkin") && plan == "pro"`, map[string]bool{"checkin": true}, clk)
	if err != nil {
		t.Fatal(err)
	}
	run := func(st *StepState, plan string) bool {
		out, err := vm.Run(prog, UnlessEnv{Profile: &account.Profile{Plan: plan}, State: st})
		if err != nil {
			t.Fatal(err)
		}
		return out.(bool)
	}
	if run(&StepState{}, "pro") {
		t.Fatal("nothing opened: unless is false")
	}
	if !run(&StepState{Opened: map[string]bool{"checkin": true}}, "free") {
		t.Fatal("opened: unless is true")
	}
	if !run(&StepState{Clicked: map[string]bool{"checkin": true}}, "pro") || run(&StepState{Clicked: map[string]bool{"checkin": true}}, "free") {
		t.Fatal("clicked && plan")
	}
}

func TestWindowsInTheContactsZone(t *testing.T) {
	paris, _ := time.LoadLocation("Europe/Paris")
	ny, _ := time.LoadLocation("America/New_York")
	w := &Window{Days: []string{"mon", "tue", "wed", "thu", "fri"}, From: "09:00", To: "17:00"}
	cases := []struct {
		name string
		at   time.Time
		loc  *time.Location
		want time.Time
	}{
		{"inside", time.Date(2026, 6, 17, 10, 30, 0, 0, paris), paris, time.Date(2026, 6, 17, 10, 30, 0, 0, paris)},
		{"before opening", time.Date(2026, 6, 17, 7, 0, 0, 0, paris), paris, time.Date(2026, 6, 17, 9, 0, 0, 0, paris)},
		{"after closing", time.Date(2026, 6, 17, 18, 0, 0, 0, paris), paris, time.Date(2026, 6, 18, 9, 0, 0, 0, paris)},
		{"closing time is outside", time.Date(2026, 6, 17, 17, 0, 0, 0, paris), paris, time.Date(2026, 6, 18, 9, 0, 0, 0, paris)},
		{"friday evening to monday", time.Date(2026, 6, 19, 20, 0, 0, 0, paris), paris, time.Date(2026, 6, 22, 9, 0, 0, 0, paris)},
		{"weekend", time.Date(2026, 6, 20, 12, 0, 0, 0, paris), paris, time.Date(2026, 6, 22, 9, 0, 0, 0, paris)},
		// The same instant is Friday 23:00 in Paris but 17:00 in New York.
		{"other zone", time.Date(2026, 6, 19, 21, 0, 0, 0, time.UTC), ny, time.Date(2026, 6, 22, 9, 0, 0, 0, ny)},
		// Across the spring DST change (Sunday 2026-03-29 in Paris): Monday 09:00 local, UTC+2.
		{"across DST", time.Date(2026, 3, 27, 18, 0, 0, 0, paris), paris, time.Date(2026, 3, 30, 9, 0, 0, 0, paris)},
	}
	for _, c := range cases {
		got := w.Next(c.at, c.loc)
		if !got.Equal(c.want) {
			t.Errorf("%s: Next(%s) = %s, want %s", c.name, c.at.In(c.loc), got.In(c.loc), c.want)
		}
	}
	if at := time.Date(2026, 6, 20, 3, 0, 0, 0, paris); !(*Window)(nil).Next(at, paris).Equal(at) {
		t.Error("no window: any time goes")
	}
}
