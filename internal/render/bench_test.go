package render

import (
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/tendhq/tend/internal/token"
)

// benchSource is a personalised email of about 4 KB once rendered in the
// default layout, with 5 links in its body.
var benchSource = `{{define "subject"}}{{.Contact.FirstName}}, a few ideas for {{.Account.Name}}{{end}}
{{define "body"}}
<h1>Hi {{.Contact.FirstName}},</h1>
<p>I noticed that {{.Account.Name}} has {{.Profile.ActiveUsers}} active users out of {{.Account.Seats}} seats on the {{.Account.Plan}} plan, and that nobody has logged in for {{.Profile.DaysSinceLastLogin}} days.</p>
<p>Teams like yours usually get the most out of these three things:</p>
<ul>
<li><a href="https://example.com/guides/reports?utm_source=tend&amp;utm_campaign={{.Campaign.Name}}">Scheduled reports</a>, so that your {{.Contact.Role}}s get the numbers every Monday.</li>
<li><a href="https://example.com/guides/sso">Single sign-on</a>, to bring the other {{.Account.Seats}} seats on board.</li>
<li><a href="https://example.com/guides/alerts">Alerts</a> on the metrics that matter to {{.Account.Name}}.</li>
</ul>
<p>Our <a href="https://example.com/webinars/{{.Account.Tier}}">weekly webinar</a> walks through all three in 30 minutes.</p>
{{if .CSM.CalendarURL}}<p>If a call is easier, <a href="{{.CSM.CalendarURL}}">pick a time that suits you</a>.</p>{{end}}
<p>Have a great week,</p>
{{end}}`

func BenchmarkRenderEmail(b *testing.B) {
	tmpl, err := Parse("bench", KindEmail, benchSource)
	if err != nil {
		b.Fatal(err)
	}
	r := &Renderer{Signer: token.NewSigner([]byte("bench-secret-0123456789")), PublicURL: "https://tend.example.com", PostalAddress: "Tend Inc., 1 Main Street, Springfield"}
	d := SampleData()
	e, err := r.Email(tmpl, d, 1, EmailOptions{SignAsCSM: true})
	if err != nil {
		b.Fatal(err)
	}
	if n := strings.Count(e.HTML, "/t/c/"); n != 6 {
		b.Fatalf("%d tracked links, want 6 (5 in the body, 1 in the signature)", n)
	}
	if n := len(e.HTML); n < 3500 || n > 4500 {
		b.Fatalf("the email is %d bytes, want about 4 KB", n)
	}
	b.ReportAllocs()
	id := int64(1000)
	for b.Loop() {
		id++
		if _, err := r.Email(tmpl, d, id, EmailOptions{SignAsCSM: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRenderEmailParallel is the throughput of all cores rendering.
func BenchmarkRenderEmailParallel(b *testing.B) {
	tmpl, err := Parse("bench", KindEmail, benchSource)
	if err != nil {
		b.Fatal(err)
	}
	r := &Renderer{Signer: token.NewSigner([]byte("bench-secret-0123456789")), PublicURL: "https://tend.example.com", PostalAddress: "Tend Inc., 1 Main Street, Springfield"}
	d := SampleData()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.Email(tmpl, d, 1, EmailOptions{SignAsCSM: true}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkTextPart is the text part's share of a render: html2text
// over the parsed email of BenchmarkRenderEmail.
func BenchmarkTextPart(b *testing.B) {
	tmpl, err := Parse("bench", KindEmail, benchSource)
	if err != nil {
		b.Fatal(err)
	}
	r := &Renderer{Signer: token.NewSigner([]byte("bench-secret-0123456789")), PublicURL: "https://tend.example.com", PostalAddress: "Tend Inc., 1 Main Street, Springfield"}
	e, err := r.Email(tmpl, SampleData(), 1, EmailOptions{SignAsCSM: true})
	if err != nil {
		b.Fatal(err)
	}
	doc, err := html.Parse(strings.NewReader(e.HTML))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if textPart(doc) == "" {
			b.Fatal("no text")
		}
	}
}
