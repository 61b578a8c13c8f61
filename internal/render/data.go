package render

import (
	"bytes"
	"encoding/json"
	"html/template"
	"strings"
	"time"

	"github.com/tendhq/tend/internal/account"
)

// Data is what a template sees as dot. Field names are the contract with
// template authors: add, never rename.
type Data struct {
	Account  AccountData
	Contact  ContactData
	CSM      CSMData // the zero value when the sender is a team address
	Profile  *account.Profile
	Campaign CampaignData
}

// AccountData is the account a message is about.
type AccountData struct {
	ID     string // the account's id in the customer's system
	Name   string
	Plan   string
	Tier   string
	Stage  string
	Region string
	MRR    float64
	Seats  int
	// Traits are the account's custom traits. Numbers are json.Number, so
	// they print as sent (1000000, not 1e+06). A trait may be absent: write
	// {{index .Account.Traits "industry"}}, which is empty when it is, rather
	// than {{.Account.Traits.industry}}, which fails.
	Traits map[string]any
}

// ContactData is the person a message is sent to.
type ContactData struct {
	ID        string // the contact's id in the customer's system
	Email     string
	Name      string
	FirstName string // the first word of Name, else the part of Email before @
	Role      string
	Timezone  string
	Locale    string
	Traits    map[string]any // as AccountData.Traits
}

// CSMData is the Customer Success Manager who signs a message.
type CSMData struct {
	Name          string
	FirstName     string
	Email         string
	Title         string
	Phone         string
	CalendarURL   string
	SignatureHTML template.HTML // trusted: it comes from the ingest API, not from end users
}

// CampaignData names the campaign and step a message belongs to.
type CampaignData struct {
	Name string
	Step string // the step's id, e.g. "checkin"
}

// AccountFrom returns the template view of an account.
func AccountFrom(a account.Account) AccountData {
	return AccountData{
		ID: a.ExternalID, Name: a.Name, Plan: a.Plan, Tier: a.Tier, Stage: a.Stage, Region: a.Region,
		MRR: a.MRR, Seats: a.Seats, Traits: traits(a.Traits),
	}
}

// ContactFrom returns the template view of a contact.
func ContactFrom(c account.Contact) ContactData {
	return ContactData{
		ID: c.ExternalID, Email: c.Email, Name: c.Name, FirstName: firstName(c.Name, c.Email),
		Role: c.Role, Timezone: c.Timezone, Locale: c.Locale, Traits: traits(c.Traits),
	}
}

// CSMFrom returns the template view of a CSM.
func CSMFrom(c account.CSM) CSMData {
	return CSMData{
		Name: c.Name, FirstName: firstName(c.Name, c.Email), Email: c.Email, Title: c.Title,
		Phone: c.Phone, CalendarURL: c.CalendarURL, SignatureHTML: template.HTML(c.SignatureHTML),
	}
}

// firstName is the first word of name, else the local part of email.
func firstName(name, email string) string {
	if f := strings.Fields(name); len(f) > 0 {
		return f[0]
	}
	local, _, _ := strings.Cut(email, "@")
	return local
}

// traits decodes stored traits (a JSON object, validated on ingest). Anything
// else reads as no traits: a template must not fail on a bad trait blob.
func traits(raw json.RawMessage) map[string]any {
	m := map[string]any{}
	if len(raw) == 0 {
		return m
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil || m == nil {
		return map[string]any{}
	}
	return m
}

// SampleData is a realistic, fully populated Data: templates are executed
// against it when they are parsed, and previews may show it. Its trait and
// usage maps are empty on purpose: a template that reads a trait with a dotted
// name (which fails for an account without it) is refused at parse time.
func SampleData() Data {
	signup := time.Date(2025, 3, 14, 9, 30, 0, 0, time.UTC)
	return Data{
		Account: AccountData{
			ID: "acme", Name: "Acme Corp", Plan: "business", Tier: "enterprise", Stage: "customer",
			Region: "emea", MRR: 4200, Seats: 120, Traits: map[string]any{},
		},
		Contact: ContactData{
			ID: "u_42", Email: "ada@acme.example", Name: "Ada Lovelace", FirstName: "Ada", Role: "admin",
			Timezone: "Europe/London", Locale: "en-GB", Traits: map[string]any{},
		},
		CSM: CSMData{
			Name: "Grace Hopper", FirstName: "Grace", Email: "grace@tend.example", Title: "Customer Success Manager",
			Phone: "+44 20 7946 0000", CalendarURL: "https://cal.example.com/grace",
			SignatureHTML: `<p>Grace Hopper<br>Customer Success Manager</p>`,
		},
		Profile: &account.Profile{
			Plan: "business", Stage: "customer", Tier: "enterprise", Region: "emea", CSM: "grace@tend.example",
			MRR: 4200, Seats: 120, ActiveUsers: 64, LicenseUtilization: 64.0 / 120,
			DaysSinceSignup: 420, DaysSinceLastLogin: 12, Logins7d: 1, Logins30d: 9,
			Features: map[string]int{}, Events: map[string]int{},
			HealthScore: 42, HealthChange30d: -11, NPS: 7, OpenTickets: 2,
			Emails30d: 3, Opens30d: 2, Clicks30d: 1,
			Traits:   map[string]any{},
			SignupAt: signup, LastLoginAt: signup.AddDate(1, 1, 0),
		},
		Campaign: CampaignData{Name: "at-risk-checkin", Step: "checkin"},
	}
}
