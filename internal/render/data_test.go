package render

import (
	"encoding/json"
	"html/template"
	"testing"

	"github.com/tendhq/tend/internal/account"
)

func TestFirstName(t *testing.T) {
	tests := []struct{ name, email, want string }{
		{"Ada Lovelace", "ada@x.example", "Ada"},
		{"  Grace   Brewster Hopper ", "g@x.example", "Grace"},
		{"Cher", "cher@x.example", "Cher"},
		{"", "jsmith@x.example", "jsmith"},
		{"   ", "first.last@x.example", "first.last"},
		{"", "", ""},
	}
	for _, tt := range tests {
		if got := firstName(tt.name, tt.email); got != tt.want {
			t.Errorf("firstName(%q, %q) = %q, want %q", tt.name, tt.email, got, tt.want)
		}
	}
}

func TestFrom(t *testing.T) {
	a := AccountFrom(account.Account{
		ID: 7, ExternalID: "acme", Name: "Acme", Plan: "pro", Tier: "smb", Stage: "trial", Region: "us",
		MRR: 99.5, Seats: 10, Traits: json.RawMessage(`{"employees": 1000000, "industry": "retail"}`),
	})
	if a.ID != "acme" || a.Name != "Acme" || a.Plan != "pro" || a.Tier != "smb" || a.Stage != "trial" ||
		a.Region != "us" || a.MRR != 99.5 || a.Seats != 10 {
		t.Errorf("AccountFrom = %+v", a)
	}
	// Numbers print as sent, not as 1e+06.
	if n, ok := a.Traits["employees"].(json.Number); !ok || n.String() != "1000000" || a.Traits["industry"] != "retail" {
		t.Errorf("account traits = %#v", a.Traits)
	}

	c := ContactFrom(account.Contact{
		ExternalID: "u1", Email: "bob@acme.example", Name: "", Role: "admin", Timezone: "Europe/Paris",
		Locale: "fr-FR", Traits: json.RawMessage(`not json`),
	})
	if c.ID != "u1" || c.Email != "bob@acme.example" || c.FirstName != "bob" || c.Role != "admin" ||
		c.Timezone != "Europe/Paris" || c.Locale != "fr-FR" {
		t.Errorf("ContactFrom = %+v", c)
	}
	if c.Traits == nil || len(c.Traits) != 0 {
		t.Errorf("bad traits must read as none, got %#v", c.Traits)
	}
	if c := ContactFrom(account.Contact{Traits: json.RawMessage(`null`)}); c.Traits == nil {
		t.Error("null traits must read as an empty map")
	}

	m := CSMFrom(account.CSM{
		Email: "grace@x.example", Name: "Grace Hopper", Title: "CSM", Phone: "+1", CalendarURL: "https://cal.example/g",
		SignatureHTML: "<b>G</b>", ReplyTo: "r@x.example",
	})
	want := CSMData{Name: "Grace Hopper", FirstName: "Grace", Email: "grace@x.example", Title: "CSM", Phone: "+1",
		CalendarURL: "https://cal.example/g", SignatureHTML: template.HTML("<b>G</b>")}
	if m != want {
		t.Errorf("CSMFrom = %+v, want %+v", m, want)
	}
}

func TestSampleDataIsComplete(t *testing.T) {
	d := SampleData()
	if d.Profile == nil || d.Account.Traits == nil || d.Contact.Traits == nil || d.Profile.Features == nil {
		t.Fatal("SampleData must fill every pointer and map")
	}
	if d.CSM == (CSMData{}) || d.Campaign == (CampaignData{}) {
		t.Fatal("SampleData must have a CSM and a campaign")
	}
	// Each call is a fresh copy.
	d.Account.Traits["x"] = 1
	if _, ok := SampleData().Account.Traits["x"]; ok {
		t.Fatal("SampleData shares its maps between calls")
	}
}
