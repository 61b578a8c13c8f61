package render

import (
	"strings"
	"testing"
)

func TestNudge(t *testing.T) {
	r := testRenderer()
	tests := []struct {
		name, source string
		want         Nudge
	}{
		{"full", `title: "{{.Contact.FirstName}}, try scheduled reports"
body: |
  {{.Account.Name}} has {{.Profile.ActiveUsers}} active users.
  Reports keep them all informed.
cta_label: Set up a report
cta_url: https://app.example.com/reports/new?account={{.Account.ID}}
`, Nudge{Title: "Ada, try scheduled reports", Body: "Acme Corp has 64 active users.\nReports keep them all informed.",
			CTALabel: "Set up a report", CTAURL: "https://app.example.com/reports/new?account=acme"}},
		{"no call to action", "title: Tip\nbody: Press ? for shortcuts, {{.Contact.FirstName}}.\n",
			Nudge{Title: "Tip", Body: "Press ? for shortcuts, Ada."}},
		{"path in the product", "title: T\nbody: B\ncta_label: Go\ncta_url: /settings/sso\n",
			Nudge{Title: "T", Body: "B", CTALabel: "Go", CTAURL: "/settings/sso"}},
		{"not escaped: plain text", "title: <b>&</b>\nbody: \"{{.Account.Name}} & co\"\n",
			Nudge{Title: "<b>&</b>", Body: "Acme Corp & co"}},
		{"number as text", "title: 2026\nbody: ok\n", Nudge{Title: "2026", Body: "ok"}},
		{"default", `title: 'Hi {{index .Contact.Traits "nick" | default .Contact.FirstName}}'` + "\nbody: B\n",
			Nudge{Title: "Hi Ada", Body: "B"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := mustParse(t, KindNudge, tt.source)
			got, err := r.Nudge(tmpl, SampleData())
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestNudgeRefused(t *testing.T) {
	tests := []struct {
		name, source string
		line         int
		field, msg   string
	}{
		{"unknown key", "title: T\nbody: B\ncolor: red\n", 3, "color", `unknown key "color"`},
		{"no title", "body: B\n", 0, "title", "has no title"},
		{"no body", "title: T\n", 0, "body", "has no body"},
		{"label without url", "title: T\nbody: B\ncta_label: Go\n", 0, "cta_url", "go together"},
		{"url without label", "title: T\nbody: B\ncta_url: https://x.example\n", 0, "cta_url", "go together"},
		{"twice", "title: T\ntitle: U\nbody: B\n", 2, "title", "twice"},
		{"null", "title:\nbody: B\n", 1, "title", "must be text"},
		{"a list", "title: [a, b]\nbody: B\n", 1, "title", "must be text"},
		{"not a mapping", "- title\n- body\n", 1, "", "a mapping"},
		{"empty", "", 0, "", "is empty"},
		{"not YAML", "title: T\nbody: [unclosed\n", 1, "", "not YAML"}, // the line yaml.v3 reports
		{"template syntax", "title: T\nbody: |\n  line one\n  {{.Contact.Name\n", 4, "body", "unclosed action"},
		{"misspelt field", "title: T\nbody: B\ncta_label: Go\ncta_url: https://x.example/{{.Account.Nmae}}\n", 4, "cta_url", "can't evaluate field Nmae"},
		{"misspelt field in block", "title: T\nbody: |\n  one\n  two {{.Contact.Nmae}}\n", 4, "body", "can't evaluate field Nmae"},
		{"dotted absent trait", "title: '{{.Contact.Traits.nick}}'\nbody: B\n", 1, "title", `{{index .Contact.Traits "nick"}}`},
		{"empty title", "title: '{{if false}}x{{end}}'\nbody: B\n", 0, "title", "title renders empty"},
		{"javascript url", "title: T\nbody: B\ncta_label: Go\ncta_url: javascript:alert(1)\n", 0, "cta_url", "not an http(s) URL"},
		{"protocol-relative url", "title: T\nbody: B\ncta_label: Go\ncta_url: //evil.example/x\n", 0, "cta_url", "not an http(s) URL"},
		{"relative url", "title: T\nbody: B\ncta_label: Go\ncta_url: settings\n", 0, "cta_url", "not an http(s) URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := Parse("test/nudge", KindNudge, tt.source)
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", tmpl)
			}
			wantInvalid(t, err, tt.line, tt.field, tt.msg)
		})
	}
}

func TestNudgeRenderErrors(t *testing.T) {
	r := testRenderer()
	if _, err := r.Nudge(mustParse(t, KindEmail, email("Hi", "<p>x</p>")), SampleData()); err == nil {
		t.Error("an email rendered as a nudge")
	}
	// Data can make a field fail at send time; the error names the field and line.
	tmpl := mustParse(t, KindNudge, "title: T\nbody: |\n  {{if eq .Contact.Role \"x\"}}{{.Contact.Traits.k}}{{end}}B\n")
	d := SampleData()
	d.Contact.Role = "x"
	_, err := r.Nudge(tmpl, d)
	wantInvalid(t, err, 3, "body", "map has no entry")
	if !strings.Contains(err.Error(), "test/tmpl") {
		t.Errorf("error %v does not name the template", err)
	}
}
