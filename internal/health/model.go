// Package health scores accounts: a health model (weights, targets,
// thresholds and key features, kept as data), a score of 0–100 per account
// from weighted components whose contributions add up to the score, bands
// with hysteresis, the score history, explanations and the summary.
//
// Scores are computed by the segment engine's evaluation of an account (on
// change and in every full pass) just before the account is matched against
// segments, so a health change moves the account between segments in the
// same evaluation.
package health

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/errs"
)

// Model is the health model. Every field has a default (Default); PUT
// /v1/health/model replaces the whole model and validates it first.
type Model struct {
	// StartingScore is the score of an account never scored.
	StartingScore int `json:"starting_score"`
	// Weights of the components, relative to each other (they need not add
	// up to 100; a weight of 0 leaves a component out).
	Weights Weights `json:"weights"`
	// Bands: below AtRiskBelow is at risk; from HealthyFrom healthy; from
	// AdvocateFrom with an NPS of at least AdvocateMinNPS an advocate;
	// neutral between. An account stays in its band until its score is
	// Hysteresis points beyond the band's edge.
	Bands Bands `json:"bands"`
	// KeyFeatures are the features whose use counts as adoption.
	KeyFeatures []string        `json:"key_features"`
	Usage       UsageModel      `json:"usage"`
	Support     SupportModel    `json:"support"`
	Sentiment   SentimentModel  `json:"sentiment"`
	Engagement  EngagementModel `json:"engagement"`
}

// Weights of the five components.
type Weights struct {
	Usage      float64 `json:"usage"`
	Adoption   float64 `json:"adoption"`
	Support    float64 `json:"support"`
	Sentiment  float64 `json:"sentiment"`
	Engagement float64 `json:"engagement"`
}

// Bands are the thresholds between bands.
type Bands struct {
	AtRiskBelow    int `json:"at_risk_below"`
	HealthyFrom    int `json:"healthy_from"`
	AdvocateFrom   int `json:"advocate_from"`
	AdvocateMinNPS int `json:"advocate_min_nps"`
	Hysteresis     int `json:"hysteresis"`
}

// UsageModel scores logins per seat, license utilization and recency, equally.
type UsageModel struct {
	// LoginsPerSeat30d is the number of logins per seat in 30 days that
	// scores full marks.
	LoginsPerSeat30d float64 `json:"logins_per_seat_30d"`
	// Utilization is the license utilization that scores full marks.
	Utilization float64 `json:"utilization"`
	// RecentDays: a last login at most this many days ago scores full marks;
	// StaleDays or more scores none; linear between.
	RecentDays int `json:"recent_days"`
	StaleDays  int `json:"stale_days"`
}

// SupportModel scores open tickets: none is full marks, MaxOpenTickets or more none.
type SupportModel struct {
	MaxOpenTickets int `json:"max_open_tickets"`
}

// SentimentModel scores NPS as nps/10; an account that never answered scores
// NoAnswer.
type SentimentModel struct {
	NoAnswer float64 `json:"no_answer"`
}

// EngagementModel scores engagement with Tend's own messages over 30 days.
//
// Each message counts for its best human response: Reply, Click, Open (a
// reply beats a click beats an open), else 0 when ignored. The score is the
// average of those credits, smoothed towards Neutral by Prior messages' worth
// (so one message does not swing it), minus RunPenalty for each ignored
// message after the first in the run of most recent ones, minus
// DismissPenalty per nudge dismissed. A message counts as ignored only
// IgnoredAfter after it was sent. Messages sent while the account was at risk
// count only when answered: at-risk outreach that goes unanswered cannot by
// itself push an account further into at-risk drips.
type EngagementModel struct {
	Reply          float64  `json:"reply"`
	Click          float64  `json:"click"`
	Open           float64  `json:"open"`
	Neutral        float64  `json:"neutral"`
	Prior          float64  `json:"prior"`
	RunPenalty     float64  `json:"run_penalty"`
	DismissPenalty float64  `json:"dismiss_penalty"`
	IgnoredAfter   Duration `json:"ignored_after"`
}

// Duration is a time.Duration written as a Go duration string ("48h").
type Duration struct{ time.Duration }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as \"48h\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as \"48h\": %v", err)
	}
	d.Duration = v
	return nil
}

// Default is the model used until one is saved.
func Default() Model {
	return Model{
		StartingScore: account.StartingHealthScore,
		Weights:       Weights{Usage: 35, Adoption: 20, Support: 10, Sentiment: 15, Engagement: 20},
		Bands:         Bands{AtRiskBelow: 40, HealthyFrom: 70, AdvocateFrom: 85, AdvocateMinNPS: 9, Hysteresis: 5},
		KeyFeatures:   []string{"dashboards", "reports", "integrations", "alerts"},
		Usage:         UsageModel{LoginsPerSeat30d: 4, Utilization: 0.8, RecentDays: 3, StaleDays: 30},
		Support:       SupportModel{MaxOpenTickets: 5},
		Sentiment:     SentimentModel{NoAnswer: 0.5},
		Engagement: EngagementModel{Reply: 1, Click: 0.8, Open: 0.6, Neutral: 0.5, Prior: 2,
			RunPenalty: 0.1, DismissPenalty: 0.05, IgnoredAfter: Duration{48 * time.Hour}},
	}
}

var featureName = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)

// ParseModel decodes and validates a model. Unknown fields are refused (a
// typo would otherwise silently fall back to zero); every problem is listed.
func ParseModel(body []byte) (Model, error) {
	var m Model
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Model{}, errs.E(errs.Invalid, "invalid_model", "the health model is not valid JSON: %v", err)
	}
	if dec.More() {
		return Model{}, errs.E(errs.Invalid, "invalid_model", "the health model must be one JSON object")
	}
	return m, m.Validate()
}

// Validate lists every problem with the model.
func (m Model) Validate() error {
	var bad []map[string]string
	add := func(field, format string, args ...any) {
		bad = append(bad, map[string]string{"field": field, "reason": fmt.Sprintf(format, args...)})
	}
	between := func(field string, v, lo, hi float64) {
		if v < lo || v > hi {
			add(field, "must be between %g and %g", lo, hi)
		}
	}
	between("starting_score", float64(m.StartingScore), 0, 100)
	w := m.Weights
	for _, c := range []struct {
		name string
		v    float64
	}{{"usage", w.Usage}, {"adoption", w.Adoption}, {"support", w.Support}, {"sentiment", w.Sentiment}, {"engagement", w.Engagement}} {
		between("weights."+c.name, c.v, 0, 1000)
	}
	if w.Usage+w.Adoption+w.Support+w.Sentiment+w.Engagement <= 0 {
		add("weights", "at least one weight must be above 0")
	}
	b := m.Bands
	if !(0 < b.AtRiskBelow && b.AtRiskBelow < b.HealthyFrom && b.HealthyFrom < b.AdvocateFrom && b.AdvocateFrom <= 100) {
		add("bands", "need 0 < at_risk_below < healthy_from < advocate_from <= 100")
	}
	between("bands.advocate_min_nps", float64(b.AdvocateMinNPS), 0, 10)
	// Bounded before doubling: twice a huge value overflows to a small one.
	if b.Hysteresis < 0 || b.Hysteresis > 50 || 2*b.Hysteresis > min(b.HealthyFrom-b.AtRiskBelow, b.AdvocateFrom-b.HealthyFrom) {
		add("bands.hysteresis", "must be at least 0 and at most half the narrowest band")
	}
	if len(m.KeyFeatures) == 0 && w.Adoption > 0 {
		add("key_features", "must name at least one feature while weights.adoption is above 0")
	}
	if len(m.KeyFeatures) > 100 {
		add("key_features", "at most 100 features")
	}
	seen := map[string]bool{}
	for i, f := range m.KeyFeatures {
		if !featureName.MatchString(f) {
			add(fmt.Sprintf("key_features[%d]", i), "must be 1–128 letters, digits or _.:-")
		}
		if seen[f] {
			add(fmt.Sprintf("key_features[%d]", i), "%q is listed twice", f)
		}
		seen[f] = true
	}
	if m.Usage.LoginsPerSeat30d <= 0 {
		add("usage.logins_per_seat_30d", "must be above 0")
	}
	if m.Usage.Utilization <= 0 || m.Usage.Utilization > 1 {
		add("usage.utilization", "must be above 0 and at most 1")
	}
	if m.Usage.RecentDays < 0 || m.Usage.StaleDays <= m.Usage.RecentDays || m.Usage.StaleDays > 365 {
		add("usage.stale_days", "need 0 <= recent_days < stale_days <= 365")
	}
	if m.Support.MaxOpenTickets < 1 {
		add("support.max_open_tickets", "must be at least 1")
	}
	between("sentiment.no_answer", m.Sentiment.NoAnswer, 0, 1)
	e := m.Engagement
	if !(0 <= e.Open && e.Open < e.Click && e.Click < e.Reply && e.Reply <= 1) {
		add("engagement", "need 0 <= open < click < reply <= 1 (a reply counts for more than a click, a click more than an open)")
	}
	between("engagement.neutral", e.Neutral, 0, 1)
	between("engagement.prior", e.Prior, 0, 100)
	between("engagement.run_penalty", e.RunPenalty, 0, 1)
	between("engagement.dismiss_penalty", e.DismissPenalty, 0, 1)
	if e.IgnoredAfter.Duration < 0 || e.IgnoredAfter.Duration > 30*24*time.Hour {
		add("engagement.ignored_after", "must be between 0 and 720h")
	}
	if len(bad) > 0 {
		return errs.E(errs.Invalid, "invalid_model", "the health model has %d problems; nothing was changed", len(bad)).With("problems", bad)
	}
	return nil
}

// rawBand is the band a score falls in, without hysteresis.
func (m Model) rawBand(score, nps int) string {
	b := m.Bands
	switch {
	case score < b.AtRiskBelow:
		return account.BandAtRisk
	case score < b.HealthyFrom:
		return account.BandNeutral
	case score >= b.AdvocateFrom && nps >= b.AdvocateMinNPS:
		return account.BandAdvocate
	default:
		return account.BandHealthy
	}
}

// Band is the band of a score given the account's previous band: the account
// keeps its band while the score stays within Hysteresis points of it, so a
// score moving around a threshold does not flap between bands. An advocate
// whose NPS falls below the minimum is no longer one.
func (m Model) Band(score, nps int, prev string) string {
	raw := m.rawBand(score, nps)
	if prev == "" || raw == prev {
		return raw
	}
	b, h := m.Bands, m.Bands.Hysteresis
	lo, hi := -1<<31, 1<<31-1
	switch prev {
	case account.BandAtRisk:
		hi = b.AtRiskBelow
	case account.BandNeutral:
		lo, hi = b.AtRiskBelow, b.HealthyFrom
	case account.BandHealthy:
		lo = b.HealthyFrom
		if raw == account.BandAdvocate {
			hi = b.AdvocateFrom
		}
	case account.BandAdvocate:
		if nps < b.AdvocateMinNPS {
			return raw
		}
		lo = b.AdvocateFrom
	default:
		return raw
	}
	if score >= lo-h && score < hi+h {
		return prev
	}
	return raw
}
