package render

import (
	"errors"
	"strings"
	"testing"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/token"
)

func testRenderer() *Renderer {
	return &Renderer{
		Signer:        token.NewSigner([]byte("render-test-secret-0123")),
		PublicURL:     "https://tend.test/",
		PostalAddress: "Acme Sender Ltd, 1 Test Road, Testville",
	}
}

// email is an email template source with the given subject and body.
func email(subject, body string) string {
	return `{{define "subject"}}` + subject + `{{end}}` + "\n" + `{{define "body"}}` + body + `{{end}}`
}

func mustParse(t *testing.T, kind Kind, source string) *Template {
	t.Helper()
	tmpl, err := Parse("test/tmpl", kind, source)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return tmpl
}

// wantInvalid checks that err is an invalid_template error naming the
// template, with the given line (0: none) and field (""), and whose message
// contains msg.
func wantInvalid(t *testing.T, err error, line int, field, msg string) {
	t.Helper()
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not a domain error", err)
	}
	if e.Kind != errs.Invalid || e.Code != "invalid_template" {
		t.Fatalf("error %v: kind %v code %q, want invalid_template", err, e.Kind, e.Code)
	}
	if e.Details["template"] == nil {
		t.Errorf("error %v has no template detail", err)
	}
	if got, _ := e.Details["line"].(int); got != line {
		t.Errorf("error %v: line %v, want %d", err, e.Details["line"], line)
	}
	if got, _ := e.Details["field"].(string); got != field {
		t.Errorf("error %v: field %q, want %q", err, got, field)
	}
	if !strings.Contains(e.Message, msg) {
		t.Errorf("message %q does not contain %q", e.Message, msg)
	}
}

func TestEmailDataGroups(t *testing.T) {
	r := testRenderer()
	tests := []struct {
		name, subject, body string
		wantSubject         string
		wantHTML            []string
	}{
		{"contact", `Checking in, {{.Contact.FirstName}}`,
			`<p>{{.Contact.Name}} {{.Contact.Email}} {{.Contact.Role}} {{.Contact.Timezone}} {{.Contact.Locale}} {{.Contact.ID}}</p>`,
			"Checking in, Ada", []string{"Ada Lovelace ada@acme.example admin Europe/London en-GB u_42"}},
		{"account", `News for {{.Account.Name}}`,
			`<p>{{.Account.ID}} {{.Account.Plan}} {{.Account.Tier}} {{.Account.Stage}} {{.Account.Region}} {{.Account.MRR}} {{.Account.Seats}}</p>`,
			"News for Acme Corp", []string{"acme business enterprise customer emea 4200 120"}},
		{"csm", `From {{.CSM.FirstName}}`,
			`<p>{{.CSM.Name}} {{.CSM.Email}} {{.CSM.Title}} {{.CSM.Phone}}</p>`,
			"From Grace", []string{"Grace Hopper grace@tend.example Customer Success Manager +44 20 7946 0000"}},
		{"profile", `{{.Profile.HealthScore}} health`,
			`<p>{{.Profile.DaysSinceLastLogin}} days, {{.Profile.Logins30d}} logins, {{.Profile.ActiveUsers}} users, {{printf "%.0f" .Profile.MRR}}</p>`,
			"42 health", []string{"12 days, 9 logins, 64 users, 4200"}},
		{"campaign", `{{.Campaign.Name}}`, `<p>step {{.Campaign.Step}}</p>`,
			"at-risk-checkin", []string{"step checkin"}},
		{"traits with index", `Hi`, `<p>[{{index .Account.Traits "industry"}}] [{{index .Contact.Traits "nick" | default "friend"}}]</p>`,
			"Hi", []string{"[] [friend]"}},
		{"conditionals", `{{if gt .Profile.OpenTickets 0}}{{.Profile.OpenTickets}} open tickets{{else}}All clear{{end}}`,
			`{{range $i, $f := .Profile.Features}}{{$i}}{{end}}<p>{{with .CSM.CalendarURL}}<a href="{{.}}">book</a>{{end}}</p>`,
			"2 open tickets", []string{`>book</a>`}},
		{"entities in subject", `Tips &amp; tricks for {{.Account.Name}} & <you>`, `<p>x</p>`,
			"Tips & tricks for Acme Corp & <you>", nil},
		{"subject spacing", "\n   Hello   {{.Contact.FirstName}}  \n", `<p>x</p>`, "Hello Ada", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := mustParse(t, KindEmail, email(tt.subject, tt.body))
			e, err := r.Email(tmpl, SampleData(), 1, EmailOptions{})
			if err != nil {
				t.Fatal(err)
			}
			e.HTML = dom(t, e.HTML)
			if e.Subject != tt.wantSubject {
				t.Errorf("subject = %q, want %q", e.Subject, tt.wantSubject)
			}
			for _, w := range tt.wantHTML {
				if !strings.Contains(e.HTML, w) {
					t.Errorf("HTML does not contain %q:\n%s", w, e.HTML)
				}
			}
		})
	}
}

func TestParseRefused(t *testing.T) {
	tests := []struct {
		name   string
		kind   Kind
		source string
		line   int
		field  string
		msg    string
	}{
		{"syntax error", KindEmail, "{{define \"subject\"}}Hi{{end}}\n{{define \"body\"}}\n<p>{{.Contact.Name</p>{{end}}", 3, "", "bad character"},
		{"unclosed block", KindEmail, "{{define \"subject\"}}Hi{{end}}\n{{define \"body\"}}<p>x</p>", 2, "", "unexpected EOF"},
		{"no subject", KindEmail, `{{define "body"}}<p>x</p>{{end}}`, 0, "", `no "subject" block`},
		{"no body", KindEmail, `{{define "subject"}}Hi{{end}}`, 0, "", `no "body" block`},
		{"no blocks", KindEmail, `<p>Hello</p>`, 0, "", `no "subject" block`},
		{"misspelt contact field", KindEmail, email("Hi", "\n\n<p>{{.Contact.Nmae}}</p>"), 4, "", "can't evaluate field Nmae"},
		{"misspelt field in subject", KindEmail, email("Hi {{.Account.Nmae}}", "<p>x</p>"), 1, "", "can't evaluate field Nmae"},
		{"unknown group", KindEmail, email("Hi", "<p>{{.Sender.Name}}</p>"), 2, "", "can't evaluate field Sender"},
		{"dotted absent trait", KindEmail, email("Hi", "<p>{{.Account.Traits.industry}}</p>"), 2, "",
			`{{index .Account.Traits "industry"}}`},
		{"unknown function", KindEmail, email("Hi", "<p>{{shout .Contact.Name}}</p>"), 2, "", `function "shout" not defined`},
		{"escaping error", KindEmail, email("Hi", `<a href="{{if .Contact.Name}}x">{{end}}</a>`), 2, "", "branches end in different contexts"},
		{"empty subject", KindEmail, email("{{if false}}x{{end}}  ", "<p>x</p>"), 0, "", "subject renders empty"},
		{"multiline subject", KindEmail, email("Hello\nthere", "<p>x</p>"), 0, "", "one line"},
		{"unknown kind", Kind("sms"), "hi", 0, "kind", `got "sms"`},
		{"empty kind", Kind(""), "hi", 0, "kind", `got ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := Parse("test/tmpl", tt.kind, tt.source)
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", tmpl)
			}
			wantInvalid(t, err, tt.line, tt.field, tt.msg)
		})
	}
}

func TestParseNeedsName(t *testing.T) {
	_, err := Parse(" ", KindEmail, email("Hi", "<p>x</p>"))
	if errs.KindOf(err) != errs.Invalid {
		t.Fatalf("a template without a name: %v", err)
	}
}

func TestChecker(t *testing.T) {
	var c Checker
	if layout, err := c.CheckTemplate("a/b", "email", email("Hi {{.Contact.FirstName}}", "<p>Hi</p>")); err != nil || layout != DefaultLayoutName {
		t.Fatalf("valid email: layout %q, %v", layout, err)
	}
	if _, err := c.CheckTemplate("a/b", "nudge", "title: Hi\nbody: There\n"); err != nil {
		t.Fatalf("valid nudge: %v", err)
	}
	if _, err := c.CheckTemplate("a/b", "email", email("Hi", "{{.Contact.Nmae}}")); errs.KindOf(err) != errs.Invalid {
		t.Fatalf("invalid email: %v", err)
	}
	// An email template asks for a layout with a "layout" block.
	minimal := email("Hi", "<p>Hi</p>") + `{{define "layout"}} minimal {{end}}`
	if layout, err := c.CheckTemplate("a/b", "email", minimal); err != nil || layout != "layouts/minimal" {
		t.Fatalf("an email in layouts/minimal: layout %q, %v", layout, err)
	}
	for _, block := range []string{`{{.Contact.Name}}`, `layouts/minimal`, `Minimal Layout`} {
		if _, err := c.CheckTemplate("a/b", "email", email("Hi", "<p>Hi</p>")+`{{define "layout"}}`+block+`{{end}}`); errs.KindOf(err) != errs.Invalid {
			t.Errorf("layout block %q: %v, want it refused", block, err)
		}
	}
}

func TestDefaultFunc(t *testing.T) {
	f := funcs["default"].(func(any, any) any)
	tests := []struct {
		value, want any
	}{
		{nil, "fb"}, {"", "fb"}, {0, "fb"}, {false, "fb"}, {map[string]any{}, "fb"}, {[]int{}, "fb"},
		{"x", "x"}, {3, 3}, {true, true},
	}
	for _, tt := range tests {
		got := f("fb", tt.value)
		if s, ok := got.(string); ok && s == "fb" {
			if tt.want != "fb" {
				t.Errorf("default(fb, %#v) = fb, want %#v", tt.value, tt.want)
			}
			continue
		}
		if tt.want == "fb" {
			t.Errorf("default(fb, %#v) = %#v, want fb", tt.value, got)
		}
	}
}

func TestSubjectText(t *testing.T) {
	tests := []struct {
		raw, want string
		multiline bool
	}{
		{"Hello", "Hello", false},
		{"  Hello  ", "Hello", false},
		{"Tom &amp; Jerry &lt;3", "Tom & Jerry <3", false},
		{"a\nb", "a b", true},
		{"a\r\n b", "a b", true},
		{"a\tb\x00c", "a b c", false},
		{"\n", "", false},
	}
	for _, tt := range tests {
		got, ml := subjectText(tt.raw)
		if got != tt.want || ml != tt.multiline {
			t.Errorf("subjectText(%q) = %q, %v; want %q, %v", tt.raw, got, ml, tt.want, tt.multiline)
		}
	}
}
