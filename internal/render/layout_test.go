package render

import (
	"strings"
	"testing"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/templates"
)

func TestDefaultLayout(t *testing.T) {
	first := DefaultLayout()
	if first == nil || DefaultLayout() != first {
		t.Fatal("DefaultLayout must parse, once")
	}
	if first.Name != DefaultLayoutName || first.source != templates.DefaultLayout {
		t.Errorf("the built-in layout is %q, not templates/layouts/default.html", first.Name)
	}
}

func TestParseLayoutRefused(t *testing.T) {
	tests := []struct {
		name, source, msg string
		line              int
	}{
		{"no body", `<p>{{.UnsubscribeURL}} {{.PostalAddress}}</p>`, "{{.Body}}", 0},
		{"no unsubscribe", `{{.Body}}<p>{{.PostalAddress}}</p>`, "{{.UnsubscribeURL}}", 0},
		{"no postal address", `{{.Body}}<a href="{{.UnsubscribeURL}}">u</a>`, "{{.PostalAddress}}", 0},
		{"body in a branch never taken", `{{if false}}{{.Body}}{{end}}<a href="{{.UnsubscribeURL}}">u</a>{{.PostalAddress}}`, "{{.Body}}", 0},
		{"unsubscribe only when signed", `{{.Body}}{{if .SignAsCSM}}<a href="{{.UnsubscribeURL}}">u</a>{{end}}{{.PostalAddress}}`, "{{.UnsubscribeURL}}", 0},
		{"no signature", `{{.Body}}<a href="{{.UnsubscribeURL}}">u</a>{{.PostalAddress}}`, "must sign the mail a CSM sends", 0},
		{"signature in a branch never taken", `{{.Body}}{{if not .SignAsCSM}}{{.CSM.Name}}{{end}}<a href="{{.UnsubscribeURL}}">u</a>{{.PostalAddress}}`, "must sign the mail a CSM sends", 0},
		{"parse error", "{{.Body}}\n{{.UnsubscribeURL", "unclosed action", 2},
		{"unknown field", "{{.Body}}{{.UnsubscribeURL}}{{.PostalAddress}}\n{{.Footer}}", "can't evaluate field Footer", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseLayout("custom", tt.source)
			if err == nil {
				t.Fatal("ParseLayout accepted it")
			}
			wantInvalid(t, err, tt.line, "", tt.msg)
		})
	}
}

func TestCustomLayout(t *testing.T) {
	l, err := ParseLayout("brand", `<html><head><style>.brand { color: #123456 }</style></head><body>
<div class="brand">Brand for {{.Contact.FirstName}}: {{.Subject}}</div>
{{.Body}}
{{if .SignAsCSM}}<p>-- {{.CSM.Name}}</p>{{end}}
<p><a href="{{.UnsubscribeURL}}">Stop</a> {{.PostalAddress}}</p>
</body></html>`)
	if err != nil {
		t.Fatal(err)
	}
	r := testRenderer()
	r.Layout = l
	tmpl := mustParse(t, KindEmail, email("Hello", `<p><a href="https://example.com">x</a></p>`))
	e, err := r.Email(tmpl, SampleData(), 3, EmailOptions{SignAsCSM: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{
		`<div style="color:#123456" class="brand">Brand for Ada: Hello</div>`,
		"<p>-- Grace Hopper</p>", `href="` + e.UnsubscribeURL + `">Stop</a>`, "Acme Sender Ltd",
		"https://tend.test/t/c/", "https://tend.test/t/o/",
	} {
		if !strings.Contains(e.HTML, w) {
			t.Errorf("HTML lacks %q:\n%s", w, e.HTML)
		}
	}
	if strings.Contains(e.HTML, "Book a time") {
		t.Error("the default layout was used")
	}
}

func TestLayoutExecutionErrorAtSend(t *testing.T) {
	// A layout that only fails for some data fails the send with a domain error.
	l, err := ParseLayout("fragile", `{{.Body}}{{.CSM.Name}}{{.UnsubscribeURL}}{{.PostalAddress}}{{if eq .Contact.Role "x"}}{{.Contact.Traits.k}}{{end}}`)
	if err != nil {
		t.Fatal(err)
	}
	r := testRenderer()
	r.Layout = l
	d := SampleData()
	d.Contact.Role = "x"
	_, err = r.Email(mustParse(t, KindEmail, email("Hi", "<p>x</p>")), d, 1, EmailOptions{})
	if errs.KindOf(err) != errs.Invalid {
		t.Fatalf("err = %v", err)
	}
}
