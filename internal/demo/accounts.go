package demo

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"
	_ "time/tzdata" // the accounts' zones, whatever the host has

	"github.com/tendhq/tend/internal/account"
)

// Random streams: each account draws its attributes and its usage from
// streams of its own, so that account i is the same whatever the number of
// accounts seeded, the chunking, or a change to how another part is drawn.
const (
	streamBlocks  = 1 << 40 // + block number: the persona shuffle
	streamAccount = 2 << 40 // + account number: attributes and contacts
	streamUsage   = 3 << 40 // + account number: events and metrics
)

// days is how many days of usage the seed makes, ending the day before the
// clock's day.
const days = 90

// Tiers, with the share of accounts in each (percent) and their range of seats.
var tiers = []struct {
	name  string
	share int
	seats [2]int
	plans []string // the plans this tier buys
	odds  []int    // and how often, relatively
}{
	{"smb", 60, [2]int{2, 12}, []string{"starter", "pro"}, []int{7, 3}},
	{"mid-market", 28, [2]int{10, 40}, []string{"pro", "enterprise"}, []int{8, 2}},
	{"enterprise", 12, [2]int{40, 150}, []string{"enterprise"}, []int{1}},
}

// pricePerSeat is each plan's monthly list price per seat, in dollars.
var pricePerSeat = map[string]float64{"starter": 15, "pro": 35, "enterprise": 60}

// Regions with their share (percent), time zones and the locales spoken there.
var regions = []struct {
	name  string
	share int
	zones []zone
}{
	{"north-america", 45, []zone{
		{"America/New_York", "en-US"}, {"America/Chicago", "en-US"}, {"America/Denver", "en-US"},
		{"America/Los_Angeles", "en-US"}, {"America/Toronto", "en-CA"},
	}},
	{"emea", 35, []zone{
		{"Europe/London", "en-GB"}, {"Europe/Paris", "fr-FR"}, {"Europe/Berlin", "de-DE"},
		{"Europe/Madrid", "es-ES"}, {"Europe/Amsterdam", "nl-NL"}, {"Europe/Stockholm", "sv-SE"},
	}},
	{"apac", 12, []zone{
		{"Australia/Sydney", "en-AU"}, {"Asia/Singapore", "en-SG"}, {"Asia/Tokyo", "ja-JP"}, {"Asia/Kolkata", "en-IN"},
	}},
	{"latam", 8, []zone{
		{"America/Sao_Paulo", "pt-BR"}, {"America/Mexico_City", "es-MX"}, {"America/Bogota", "es-CO"},
	}},
}

type zone struct{ tz, locale string }

var industries = []string{
	"software", "retail", "healthcare", "financial-services", "education", "manufacturing",
	"media", "logistics", "nonprofit", "real-estate", "hospitality", "professional-services",
}

// Company names are a prefix and a noun; accountName picks distinct pairs.
var (
	namePrefixes = []string{
		"Northwind", "Bluebird", "Granite", "Lumen", "Harbor", "Cedar", "Summit", "Copper", "Meridian", "Atlas",
		"Brightwater", "Ironwood", "Juniper", "Kestrel", "Larkspur", "Maple", "Nimbus", "Orchard", "Pinecrest", "Quarry",
		"Redwood", "Silverline", "Tidewater", "Upland", "Vantage", "Willow", "Yellowstone", "Zephyr", "Anchor", "Beacon",
		"Canyon", "Driftwood", "Evergreen", "Fairview", "Glacier", "Highland", "Inlet", "Jasper", "Keystone", "Lakeshore",
		"Moonstone", "Northstar", "Oakridge", "Prairie", "Riverbend", "Sandstone", "Timber", "Union", "Valley", "Westfield",
	}
	nameNouns = []string{
		"Analytics", "Logistics", "Health", "Foods", "Labs", "Supply", "Partners", "Capital", "Media", "Learning",
		"Outfitters", "Systems", "Freight", "Clinics", "Goods", "Studios", "Energy", "Robotics", "Realty", "Travel",
		"Insurance", "Pharmacy", "Bakery", "Brewing", "Dental", "Fitness", "Motors", "Apparel", "Hotels", "Software",
		"Consulting", "Markets", "Farms", "Books", "Security", "Printing", "Water", "Events", "Legal", "Design",
	}
	firstNames = []string{
		"Olivia", "Liam", "Emma", "Noah", "Ava", "Mateo", "Sophia", "Lucas", "Isabella", "Ethan",
		"Mia", "Arjun", "Chloe", "Kenji", "Amelia", "Omar", "Harper", "Diego", "Aisha", "Jonas",
		"Elena", "Hugo", "Fatima", "Leo", "Grace", "Ravi", "Nora", "Felix", "Yuki", "Samuel",
		"Clara", "Tomas", "Zara", "Daniel", "Ingrid", "Kwame", "Lucia", "Pierre", "Hannah", "Wei",
		"Beatriz", "Connor", "Sakura", "Malik", "Freya", "Andrés", "Leila", "Oscar", "Priya", "Gabriel",
	}
	lastNames = []string{
		"Smith", "García", "Müller", "Nguyen", "Johnson", "Rossi", "Kim", "Dubois", "Okafor", "Patel",
		"Andersson", "Tanaka", "Brown", "Silva", "Novak", "Cohen", "Haddad", "Martin", "Jansen", "Kowalski",
		"López", "Schmidt", "Wilson", "Moreau", "Sato", "Fischer", "Costa", "Murphy", "Singh", "Larsen",
		"Walker", "Hernández", "Bianchi", "Mensah", "Ortiz", "Weber", "Clarke", "Ito", "Ramos", "Lindqvist",
	}
)

// csms are the demo's Customer Success Managers, each covering a region.
// Phone numbers are in ranges reserved for fiction; addresses and calendar
// links are on reserved domains.
var csms = []struct {
	name, slug, title, phone, region string
}{
	{"Dana Reyes", "dana.reyes", "Senior Customer Success Manager", "+1 202-555-0142", "north-america"},
	{"Marcus Chen", "marcus.chen", "Customer Success Manager", "+1 415-555-0178", "north-america"},
	{"Amara Okafor", "amara.okafor", "Customer Success Manager", "+44 20 7946 0321", "emea"},
	{"Luca Bianchi", "luca.bianchi", "Customer Success Manager", "+44 20 7946 0877", "emea"},
	{"Priya Raman", "priya.raman", "Customer Success Manager", "+61 2 5550 4417", "apac"},
	{"Sofía Herrera", "sofia.herrera", "Customer Success Manager", "+1 305-555-0119", "latam"},
}

// csmDomain is where the demo's CSMs have their mail (a reserved name, so
// nothing can be delivered anywhere).
const csmDomain = "tend-demo.example"

func csmEmail(slug string) string { return slug + "@" + csmDomain }

// csmInputs returns the demo's CSMs.
func csmInputs() []account.CSMInput {
	out := make([]account.CSMInput, len(csms))
	for i, c := range csms {
		email := csmEmail(c.slug)
		cal := "https://cal.example/" + strings.ReplaceAll(c.slug, ".", "-")
		sig := fmt.Sprintf(`<table role="presentation" style="font-family:Arial,sans-serif;font-size:13px;color:#333">`+
			`<tr><td><strong>%s</strong><br>%s, Tend Demo<br>`+
			`<a href="tel:%s" style="color:#333">%s</a> · <a href="mailto:%s">%s</a></td></tr></table>`,
			c.name, c.title, strings.NewReplacer(" ", "", "-", "").Replace(c.phone), c.phone, email, email)
		// The layout adds "Book a time with me" from CalendarURL.
		out[i] = account.CSMInput{
			Email: email, Name: ptr(c.name), Title: ptr(c.title), SignatureHTML: ptr(sig),
			ReplyTo: ptr(email), Phone: ptr(c.phone), CalendarURL: ptr(cal),
		}
	}
	return out
}

// accountSpec is everything the seed decides about one account.
type accountSpec struct {
	index   int
	id      string
	persona Persona
	shape   shape

	name, domain       string
	plan, tier, region string
	zone               zone
	loc                *time.Location
	industry           string
	seats, employees   int
	mrr                float64
	signup             time.Time
	signupDaysAgo      int // days from signing up to the seed's day
	csm                string
	leadSource         string

	contacts []account.ContactInput
	users    []user

	quietFrom    int // disengaging: the trickle starts this many days ago
	lastLoginAgo int // at risk: the last login was this many days ago
}

// user is one person using the product: a contact, or a teammate Tend only
// knows by the user id in events.
type user struct {
	key    string  // the events' contact_id
	weight float64 // how much of the persona's activity this user has
}

// accountID names account number i (from 0).
func accountID(i int) string { return fmt.Sprintf("acct-%05d", i+1) }

// newAccount draws account number i. day is the start of the seed's UTC day.
func newAccount(seed uint64, i int, day time.Time) *accountSpec {
	rng := rand.New(rand.NewPCG(seed, streamAccount+uint64(i)))
	a := &accountSpec{index: i, id: accountID(i), persona: personaOf(seed, i)}
	a.shape = shapes[a.persona]
	a.name = accountName(seed, i)
	a.domain = slug(a.name) + ".example"
	a.industry = pick(rng, industries)

	t := choose(rng, len(tiers), func(t int) int { return tiers[t].share })
	a.tier = tiers[t].name
	a.plan = tiers[t].plans[choose(rng, len(tiers[t].plans), func(p int) int { return tiers[t].odds[p] })]
	lo, hi := tiers[t].seats[0], tiers[t].seats[1]
	if a.persona == Advocate {
		lo = min(hi, max(lo, 5)) // a handful of users at least, to be loud about it
	}
	// Seats skew to the low end of the tier's range.
	a.seats = lo + int(math.Round(float64(hi-lo)*rng.Float64()*rng.Float64()))
	a.employees = a.seats * (3 + rng.IntN(12))
	discount := []float64{1, 1, 0.95, 0.9, 0.85}[rng.IntN(5)]
	a.mrr = math.Round(float64(a.seats) * pricePerSeat[a.plan] * discount)
	a.leadSource = "self-serve"
	if a.tier != "smb" || rng.IntN(4) == 0 {
		a.leadSource = "sales"
	}

	r := choose(rng, len(regions), func(r int) int { return regions[r].share })
	a.region = regions[r].name
	a.zone = pick(rng, regions[r].zones)
	a.loc, _ = time.LoadLocation(a.zone.tz) // cannot fail: the zones above are in time/tzdata
	var regional []int
	for c := range csms {
		if csms[c].region == a.region {
			regional = append(regional, c)
		}
	}
	a.csm = csmEmail(csms[pick(rng, regional)].slug)

	if a.persona == Onboarding {
		a.signupDaysAgo = 2 + rng.IntN(28) // 2 to 29 days: within 30 all day long
	} else {
		a.signupDaysAgo = days + 1 + rng.IntN(4*365-days)
	}
	// In office hours, where they are.
	y, m, d := day.AddDate(0, 0, -a.signupDaysAgo).Date()
	a.signup = time.Date(y, m, d, 8+rng.IntN(10), rng.IntN(60), 0, 0, a.loc).UTC()
	a.quietFrom = 14 + rng.IntN(8)     // 2 to 3 weeks
	a.lastLoginAgo = 10 + rng.IntN(36) // 10 to 45 days

	a.drawPeople(rng)
	return a
}

// drawPeople draws the account's contacts (1 to 4: an admin, a champion,
// users) and the users behind its usage, contacts first.
func (a *accountSpec) drawPeople(rng *rand.Rand) {
	n := 1 + rng.IntN(2)
	if a.tier != "smb" {
		n = 2 + rng.IntN(3)
	}
	n = min(n, a.seats)
	roles := []string{"admin", "champion", "user", "user"}
	taken := map[string]bool{}
	for c := range n {
		first, last := pick(rng, firstNames), pick(rng, lastNames)
		local := emailLocal(first) + "." + emailLocal(last)
		for k := 2; taken[local]; k++ {
			local = fmt.Sprintf("%s.%s%d", emailLocal(first), emailLocal(last), k)
		}
		taken[local] = true
		z := a.zone
		if rng.IntN(5) == 0 { // someone on the team works from another office
			z = pick(rng, regions[rng.IntN(len(regions))].zones)
		}
		a.contacts = append(a.contacts, account.ContactInput{
			ID: fmt.Sprintf("%s-c%d", a.id, c+1), AccountID: a.id,
			Email: ptr(local + "@" + a.domain), Name: ptr(first + " " + last), Role: ptr(roles[c]),
			Timezone: ptr(z.tz), Locale: ptr(z.locale),
			Traits: json.RawMessage(fmt.Sprintf(`{"title":%q}`, titleFor(roles[c], rng))),
		})
	}

	sh := a.shape
	util := sh.utilization[0] + (sh.utilization[1]-sh.utilization[0])*rng.Float64()
	users := min(a.seats, max(n, sh.minUsers, int(math.Round(float64(a.seats)*util))))
	for u := range users {
		key := fmt.Sprintf("%s-u%d", a.id, u+1)
		if u < n {
			key = a.contacts[u].ID
		}
		w := 0.3 + 0.7*rng.Float64()
		if u < 2 { // the admin and the champion use it most
			w = 0.85 + 0.15*rng.Float64()
		}
		a.users = append(a.users, user{key: key, weight: w})
	}
}

func titleFor(role string, rng *rand.Rand) string {
	switch role {
	case "admin":
		return pick(rng, []string{"IT Manager", "Operations Manager", "Head of Operations", "Systems Administrator"})
	case "champion":
		return pick(rng, []string{"Head of Analytics", "Director of Marketing", "VP Operations", "Data Lead"})
	default:
		return pick(rng, []string{"Analyst", "Account Executive", "Marketing Specialist", "Project Manager", "Engineer"})
	}
}

// input is the account as upserted.
func (a *accountSpec) input() account.AccountInput {
	stage := "customer"
	if a.persona == Onboarding {
		stage = "onboarding"
	}
	traits, _ := json.Marshal(map[string]any{
		"industry": a.industry, "employees": a.employees, "domain": a.domain,
		"lead_source": a.leadSource, "demo": true,
	})
	return account.AccountInput{
		ID: a.id, Name: ptr(a.name), Plan: ptr(a.plan), MRR: ptr(a.mrr), Seats: ptr(a.seats),
		SignupAt: ptr(a.signup), Stage: ptr(stage), Tier: ptr(a.tier), Region: ptr(a.region),
		CSMEmail: ptr(a.csm), Timezone: ptr(a.zone.tz), Traits: traits,
	}
}

// accountName gives account i a company name no other account below
// len(namePrefixes)*len(nameNouns) shares: i is mapped through a bijection of
// that range (a multiplier prime to it), offset by the seed.
func accountName(seed uint64, i int) string {
	n := len(namePrefixes) * len(nameNouns)
	k := (i*7919 + int(seed%uint64(n))*104729) % n
	name := namePrefixes[k/len(nameNouns)] + " " + nameNouns[k%len(nameNouns)]
	if i >= n {
		name += fmt.Sprintf(" %d", i/n+1)
	}
	return name
}

// slug makes a company name into a domain label.
func slug(name string) string {
	return strings.ReplaceAll(strings.ToLower(name), " ", "-")
}

// emailLocal makes a name ASCII for an email address.
func emailLocal(name string) string {
	return strings.ToLower(strings.NewReplacer("á", "a", "é", "e", "í", "i", "ó", "o", "ú", "u", "ü", "u", "ñ", "n").Replace(name))
}

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

// choose picks one of n choices, each as likely as its weight.
func choose(rng *rand.Rand, n int, weight func(int) int) int {
	total := 0
	for i := range n {
		total += weight(i)
	}
	r := rng.IntN(total)
	for i := range n {
		if r -= weight(i); r < 0 {
			return i
		}
	}
	return n - 1
}
