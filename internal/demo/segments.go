// Package demo generates Tend's demo data: CSMs, accounts across plans and
// tiers with contacts, and 90 days of usage shaped like a real SaaS customer
// base (healthy adopters, new accounts onboarding, slowly disengaging
// accounts, a few advocates), deterministic for a given seed. The segments
// it creates are the ones the example campaigns in campaigns/ target.
package demo

import "github.com/tendhq/tend/internal/segment"

// KeyFeatures are the features the default health model counts as adoption;
// the demo's usage uses them, along with a few others.
var KeyFeatures = []string{"dashboards", "reports", "integrations", "alerts"}

// Segments are the demo's segments, which the example campaigns target.
var Segments = []segment.Input{
	{Name: "new-accounts", Description: ptr("Signed up in the last 30 days"),
		Predicate: `days_since_signup <= 30`},
	{Name: "at-risk", Description: ptr("Health in the at-risk band (with hysteresis, so accounts near the line do not flap)"),
		Predicate: `health_band == "at_risk"`},
	{Name: "low-adoption", Description: ptr("Established accounts, not at risk, missing a key feature"),
		Predicate: `days_since_signup > 30 && health_band != "at_risk" && (features["integrations"] == 0 || features["alerts"] == 0)`},
	{Name: "advocates", Description: ptr("High health and an NPS of 9 or 10"),
		Predicate: `health_band == "advocate"`},
	{Name: "smb", Description: ptr("Small-business tier"), Predicate: `tier == "smb"`},
	{Name: "enterprise", Description: ptr("Enterprise tier"), Predicate: `tier == "enterprise"`},
}

func ptr[T any](v T) *T { return &v }
