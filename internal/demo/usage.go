package demo

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tendhq/tend/internal/account"
)

// ExtraFeatures are features the demo's usage has besides KeyFeatures.
var ExtraFeatures = []string{"exports", "api", "invite_teammates"}

// features lists every feature the demo's usage has.
func features() []string { return append(append([]string{}, KeyFeatures...), ExtraFeatures...) }

// featureWeights says how often each feature is used, relatively, by an
// account that uses it (1 for a feature not named).
var featureWeights = map[string]int{
	"dashboards": 10, "reports": 6, "integrations": 3, "alerts": 4, "exports": 3, "api": 2, "invite_teammates": 1,
}

// featureProps are the properties of each feature's feature_used events.
var featureProps = func() map[string]json.RawMessage {
	m := map[string]json.RawMessage{}
	for _, f := range features() {
		m[f] = json.RawMessage(fmt.Sprintf(`{"feature":%q}`, f))
	}
	return m
}()

// feature is a feature an account uses.
type feature struct {
	name    string
	weight  int
	fromAgo int // in use from this many days ago (onboarding accounts adopt as they go)
}

// weekendActivity is how much less people work at weekends.
const weekendActivity = 0.1

// usage draws the account's 90 days of usage, calling emit for each event,
// oldest day first, and returns its metric snapshots. day is the start of the
// seed's UTC day; every event is before it. Message ids name the account, the
// day (counted back from the seed's day), the user and the event, so that
// seeding again counts nothing twice.
func (a *accountSpec) usage(seed uint64, day time.Time, emit func(account.EventInput)) []account.MetricInput {
	rng := rand.New(rand.NewPCG(seed, streamUsage+uint64(a.index)))
	sh := a.shape
	metrics := a.metrics(rng, day)

	// Which features the account uses, and since when.
	var used []feature
	total := 0
	for i, name := range features() {
		chance, ok := sh.keyAdoption[name]
		if !ok {
			chance = sh.extraAdoption
		}
		if rng.Float64() >= chance {
			continue
		}
		from := days
		if a.persona == Onboarding && i > 0 { // the first from day one, the rest as they find them
			from = a.signupDaysAgo - rng.IntN(a.signupDaysAgo)
		}
		w := max(1, featureWeights[name])
		used = append(used, feature{name: name, weight: w, fromAgo: from})
		total += w
	}
	// When each user started: at signup, or for the teammates of an
	// onboarding account as they are invited over the first weeks.
	start := make([]int, len(a.users))
	for u := range a.users {
		start[u] = min(days, a.signupDaysAgo)
		if a.persona == Onboarding && u > 0 {
			start[u] -= rng.IntN(min(a.signupDaysAgo, 14))
		}
	}

	oldest := day.AddDate(0, 0, -days)
	for ago := days; ago >= 1; ago-- {
		y, m, d := day.AddDate(0, 0, -ago).Date()
		local := time.Date(y, m, d, 0, 0, 0, 0, a.loc)
		chance := sh.loginChance * a.activity(ago)
		if wd := local.Weekday(); wd == time.Saturday || wd == time.Sunday {
			chance *= weekendActivity
		}
		for u, usr := range a.users {
			if ago > start[u] {
				continue
			}
			login := rng.Float64() < chance*usr.weight
			at := local.Add(time.Duration(8*3600+rng.IntN(10*3600)) * time.Second).UTC()
			switch {
			case a.persona == AtRisk && ago == a.lastLoginAgo && u == 0:
				login = true // the last login there was
			case a.persona == Onboarding && ago == a.signupDaysAgo && u == 0:
				login, at = true, a.signup.Add(time.Duration(1+rng.IntN(30))*time.Minute) // the admin signed up
			}
			if !login {
				continue
			}
			if at.Before(oldest) || !at.Before(day) || at.Before(a.signup) {
				continue // across the edge of the 90 days in UTC, or before they signed up
			}
			prefix := fmt.Sprintf("tend-demo:%s:d%d:u%d", a.id, ago, u+1)
			emit(account.EventInput{AccountID: a.id, ContactID: usr.key, Name: account.EventLogin,
				Timestamp: ptr(at), MessageID: prefix + ":login"})
			n := int(sh.featuresPerLogin + rng.Float64())
			for k := range n {
				f, ok := pickFeature(rng, used, total, ago)
				if !ok {
					continue
				}
				fat := at.Add(time.Duration(1+rng.IntN(50)) * time.Minute)
				if !fat.Before(day) {
					break
				}
				emit(account.EventInput{AccountID: a.id, ContactID: usr.key, Name: account.EventFeatureUsed,
					Properties: featureProps[f], Timestamp: ptr(fat), MessageID: fmt.Sprintf("%s:f%d", prefix, k+1)})
			}
		}
	}
	return metrics
}

// pickFeature picks one of the account's features by weight, and says
// whether the account used it yet ago days ago.
func pickFeature(rng *rand.Rand, features []feature, total, ago int) (string, bool) {
	if total == 0 {
		return "", false
	}
	r := rng.IntN(total)
	for _, f := range features {
		if r -= f.weight; r < 0 {
			return f.name, ago <= f.fromAgo
		}
	}
	return "", false
}

// metrics draws the account's NPS answer (for about half the accounts) and
// its open support tickets.
func (a *accountSpec) metrics(rng *rand.Rand, day time.Time) []account.MetricInput {
	sh := a.shape
	tickets := 0
	switch r := rng.Float64(); {
	case r < sh.tickets[0]:
	case r < sh.tickets[0]+sh.tickets[1]:
		tickets = 1 + rng.IntN(2)
	default:
		tickets = 3 + rng.IntN(3)
	}
	out := []account.MetricInput{{
		AccountID: a.id, At: ptr(day.Add(-time.Duration(1+rng.IntN(12)) * time.Hour)),
		Values: map[string]float64{account.MetricOpenTickets: float64(tickets)},
	}}
	// Drawn whether or not the account answered, so that the draws after
	// these do not depend on it: the answer, and when it came (in the last
	// 60 days, after signing up).
	answered := rng.Float64() < sh.npsRate
	nps := sh.nps[0] + rng.IntN(sh.nps[1]-sh.nps[0]+1)
	ago := 1 + rng.IntN(min(60, max(1, a.signupDaysAgo-1)))
	if answered {
		out = append(out, account.MetricInput{
			AccountID: a.id, At: ptr(day.AddDate(0, 0, -ago).Add(time.Duration(9+rng.IntN(8)) * time.Hour)),
			Values: map[string]float64{account.MetricNPS: float64(nps)},
		})
	}
	return out
}
