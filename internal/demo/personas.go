package demo

import "math/rand/v2"

// Persona is the shape of a demo account's usage over the 90 days seeded.
type Persona string

// The personas, after the customer-success writing in the design's seeds: most
// accounts adopt, some are still onboarding, a long tail slowly disengages, a
// few are at risk, and a few love the product.
const (
	Healthy     Persona = "healthy"     // frequent logins, most key features
	Onboarding  Persona = "onboarding"  // signed up in the last 30 days, still ramping up
	Disengaging Persona = "disengaging" // logins decline over the 90 days, little lately
	AtRisk      Persona = "at-risk"     // almost no recent logins, open tickets, low NPS
	Advocate    Persona = "advocate"    // heavy use of every key feature, NPS 9 or 10
)

// Personas lists the personas in the order summaries print them.
var Personas = []Persona{Healthy, Onboarding, Disengaging, AtRisk, Advocate}

// personaBlock is how many of every blockSize accounts get each persona
// (45%, 15%, 25%, 10%, 5%). Accounts are dealt out in blocks, shuffled within
// the block, so every persona appears in any 20 consecutive accounts and the
// mix is exact rather than merely likely.
var personaBlock = []struct {
	persona Persona
	n       int
}{{Healthy, 9}, {Onboarding, 3}, {Disengaging, 5}, {AtRisk, 2}, {Advocate, 1}}

const blockSize = 20

// personaOf returns the persona of account number i (from 0) for a seed.
func personaOf(seed uint64, i int) Persona {
	block := make([]Persona, 0, blockSize)
	for _, b := range personaBlock {
		for range b.n {
			block = append(block, b.persona)
		}
	}
	rng := rand.New(rand.NewPCG(seed, streamBlocks+uint64(i/blockSize)))
	rng.Shuffle(len(block), func(a, b int) { block[a], block[b] = block[b], block[a] })
	return block[i%blockSize]
}

// shape holds the numbers that make a persona's usage look the way it does.
type shape struct {
	utilization      [2]float64 // share of seats that are users, a range
	minUsers         int        // at least this many users, seats permitting
	loginChance      float64    // chance that a user logs in on a working day, at full activity
	featuresPerLogin float64    // mean feature_used events per login
	// keyAdoption is the chance of using each key feature at all
	// (extraAdoption for a feature not named).
	keyAdoption   map[string]float64
	extraAdoption float64    // the chance of using each of the other features
	npsRate       float64    // the share of accounts that answered the NPS survey
	nps           [2]int     // the range of their answers
	tickets       [2]float64 // chances of 0 open tickets and of 1 or 2; otherwise 3 to 5
}

var shapes = map[Persona]shape{
	Healthy: {
		utilization: [2]float64{0.55, 0.85}, minUsers: 2, loginChance: 0.5, featuresPerLogin: 0.9,
		keyAdoption: adoption(1, 0.95, 0.7, 0.7), extraAdoption: 0.5,
		npsRate: 0.45, nps: [2]int{7, 10}, tickets: [2]float64{0.7, 0.3},
	},
	Onboarding: {
		utilization: [2]float64{0.3, 0.6}, minUsers: 1, loginChance: 0.55, featuresPerLogin: 0.8,
		keyAdoption: adoption(1, 0.5, 0.4, 0.5), extraAdoption: 0.4,
		npsRate: 0.25, nps: [2]int{6, 10}, tickets: [2]float64{0.6, 0.4},
	},
	Disengaging: {
		utilization: [2]float64{0.4, 0.7}, minUsers: 2, loginChance: 0.45, featuresPerLogin: 0.6,
		keyAdoption: adoption(1, 0.7, 0.35, 0.35), extraAdoption: 0.3,
		npsRate: 0.4, nps: [2]int{4, 8}, tickets: [2]float64{0.5, 0.45},
	},
	AtRisk: {
		utilization: [2]float64{0.15, 0.35}, minUsers: 1, loginChance: 0.35, featuresPerLogin: 0.4,
		keyAdoption: adoption(1, 0.4, 0.1, 0.1), extraAdoption: 0.15,
		npsRate: 0.7, nps: [2]int{0, 6}, tickets: [2]float64{0, 0.35},
	},
	Advocate: {
		utilization: [2]float64{0.8, 0.95}, minUsers: 4, loginChance: 0.8, featuresPerLogin: 1.6,
		keyAdoption: adoption(1, 1, 1, 1), extraAdoption: 0.9,
		npsRate: 1, nps: [2]int{9, 10}, tickets: [2]float64{0.9, 0.1},
	},
}

// adoption gives the chances of using dashboards, reports, integrations and
// alerts (KeyFeatures).
func adoption(dashboards, reports, integrations, alerts float64) map[string]float64 {
	return map[string]float64{"dashboards": dashboards, "reports": reports, "integrations": integrations, "alerts": alerts}
}

// activity is how active an account of this persona is daysAgo days before
// the seed's day, from 0 (no one logs in) to 1 (the persona's full rate).
func (a *accountSpec) activity(daysAgo int) float64 {
	switch a.persona {
	case Onboarding:
		// Nothing before signing up, then a ramp over the first two weeks.
		since := a.signupDaysAgo - daysAgo
		if since < 0 {
			return 0
		}
		return min(1, 0.4+0.6*float64(since)/14)
	case Disengaging:
		// Declines from full use 90 days ago to a trickle after quietFrom.
		if daysAgo < a.quietFrom {
			return 0.03
		}
		return 0.15 + 0.85*float64(daysAgo-a.quietFrom)/float64(days-a.quietFrom)
	case AtRisk:
		// Light use that fades out; nothing after the last login.
		if daysAgo < a.lastLoginAgo {
			return 0
		}
		return 0.1 + 0.25*float64(daysAgo-a.lastLoginAgo)/float64(days-a.lastLoginAgo)
	default:
		return 1
	}
}
