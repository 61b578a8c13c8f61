package delivery_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/render"
)

// brandLayout is a layout with a brand line and its own CSS.
func brandLayout(brand string) string {
	return `<!DOCTYPE html><html><head><style>.brand { color: #0a7d55; }</style></head><body>
<p class="brand">` + brand + `</p>
{{.Body}}
{{if .SignAsCSM}}<p>{{.CSM.Name}}</p>{{end}}
<p><a href="{{.UnsubscribeURL}}">Stop these emails</a> · {{.PostalAddress}}</p>
</body></html>`
}

// Email is wrapped in the layout stored as layouts/default, once one is, and
// in its latest version after an edit; the built-in one until then.
func TestEmailIsWrappedInTheStoredLayout(t *testing.T) {
	o := newOutbox(t, 1)
	ids := o.due(3)
	store := campaign.NewStore(o.db.DB, o.clock, render.Checker{})
	sendHTML := func(id int64) string {
		t.Helper()
		before := o.smtp.Count()
		if _, err := o.sender.SendBatch(t.Context(), []int64{id}); err != nil {
			t.Fatal(err)
		}
		msgs := o.smtp.Messages()
		if len(msgs) != before+1 {
			t.Fatalf("the server holds %d messages, want %d", len(msgs), before+1)
		}
		html, err := msgs[len(msgs)-1].Part("text/html")
		if err != nil {
			t.Fatal(err)
		}
		return html
	}
	put := func(brand string) {
		t.Helper()
		if _, err := store.PutTemplate(t.Context(), campaign.TemplateInput{Name: render.DefaultLayoutName, Kind: campaign.TemplateLayout, Source: brandLayout(brand)}); err != nil {
			t.Fatal(err)
		}
	}

	if html := sendHTML(ids[0]); strings.Contains(html, "Acme Brand") || !strings.Contains(html, "how is Globex getting on") {
		t.Fatalf("with no layout stored, the built-in one: %s", html)
	}
	put("Acme Brand One")
	html := sendHTML(ids[1])
	for _, want := range []string{"Acme Brand One", "how is Globex getting on", "Dana Reyes", "Stop these emails", "Acme, 1 Main St", "/t/o/", `style="color:#0a7d55"`} {
		if !strings.Contains(html, want) {
			t.Errorf("in the stored layout, the email lacks %q: %s", want, html)
		}
	}
	put("Acme Brand Two")
	if html := sendHTML(ids[2]); !strings.Contains(html, "Acme Brand Two") || strings.Contains(html, "Acme Brand One") {
		t.Errorf("after an edit of the layout: %s", html)
	}
}

// A layout is refused unless it is named layouts/NAME and outputs what every
// email needs; an email template cannot take a layout's name.
func TestLayoutsRefused(t *testing.T) {
	o := newOutbox(t, 1)
	store := campaign.NewStore(o.db.DB, o.clock, render.Checker{})
	noUnsubscribe := strings.Replace(brandLayout("x"), `<a href="{{.UnsubscribeURL}}">Stop these emails</a>`, "", 1)
	for name, in := range map[string]campaign.TemplateInput{
		"a layout outside layouts/":    {Name: "brand", Kind: campaign.TemplateLayout, Source: brandLayout("x")},
		"an email named as a layout":   {Name: "layouts/checkin", Kind: campaign.TemplateEmail, Source: checkin},
		"no unsubscribe link":          {Name: render.DefaultLayoutName, Kind: campaign.TemplateLayout, Source: noUnsubscribe},
		"a layout that does not parse": {Name: render.DefaultLayoutName, Kind: campaign.TemplateLayout, Source: "{{if .SignAsCSM}}"},
	} {
		_, err := store.PutTemplate(t.Context(), in)
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != "invalid_template" {
			t.Errorf("%s: %v, want invalid_template", name, err)
		}
	}
	var n int
	o.db.Get(&n, `SELECT count(*) FROM template WHERE kind = 'layout' OR name LIKE 'layouts/%'`)
	if n != 0 {
		t.Errorf("%d refused layouts were stored", n)
	}
	// A campaign step cannot send a layout.
	if _, err := store.PutTemplate(t.Context(), campaign.TemplateInput{Name: render.DefaultLayoutName, Kind: campaign.TemplateLayout, Source: brandLayout("x")}); err != nil {
		t.Fatal(err)
	}
	_, err := store.Apply(t.Context(), campaign.Bundle{Campaigns: []campaign.Definition{{Name: "wrong", Kind: "drip", Segment: "everyone",
		Steps: []campaign.Step{{ID: "one", Wait: "0h", Channel: "email", Template: render.DefaultLayoutName}}}}}, false)
	if err == nil || !strings.Contains(err.Error(), "layout template") {
		t.Errorf("a step sending a layout: %v, want it refused", err)
	}
}

// An email template asks for another stored layout with a "layout" block;
// one asking for a layout that is not stored is refused.
func TestATemplateChoosesItsLayout(t *testing.T) {
	o := newOutbox(t, 1)
	store := campaign.NewStore(o.db.DB, o.clock, render.Checker{})
	def := campaign.Definition{Name: "checkin", Kind: "drip", Segment: "everyone", Sender: "csm",
		Steps: []campaign.Step{{ID: "checkin", Wait: "0h", Channel: "email", Template: "checkin"}}}
	minimal := checkin + `{{define "layout"}}minimal{{end}}`
	_, err := store.Apply(t.Context(), campaign.Bundle{Campaigns: []campaign.Definition{def},
		Templates: []campaign.TemplateInput{{Name: "checkin", Kind: campaign.TemplateEmail, Source: minimal}}}, false)
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != "invalid_campaign" || !strings.Contains(err.Error(), `"layouts/minimal", which is not stored`) {
		t.Fatalf("a template asking for a layout not stored: %v", err)
	}
	if _, err := store.PutTemplate(t.Context(), campaign.TemplateInput{Name: "checkin", Kind: campaign.TemplateEmail, Source: minimal}); err == nil {
		t.Fatal("PUT of a template asking for a layout not stored: accepted")
	}
	// With the layout in the same bundle, the edit makes version 2 of the
	// campaign, whose email is wrapped in it.
	if _, err := store.Apply(t.Context(), campaign.Bundle{Campaigns: []campaign.Definition{def}, Templates: []campaign.TemplateInput{
		{Name: "checkin", Kind: campaign.TemplateEmail, Source: minimal},
		{Name: "layouts/minimal", Kind: campaign.TemplateLayout, Source: brandLayout("Acme Minimal")},
		{Name: render.DefaultLayoutName, Kind: campaign.TemplateLayout, Source: brandLayout("Acme Default")},
	}}, false); err != nil {
		t.Fatal(err)
	}
	ids := o.due(1)
	if _, err := o.sender.SendBatch(t.Context(), ids); err != nil {
		t.Fatal(err)
	}
	if o.smtp.Count() != 1 {
		t.Fatalf("the server holds %d messages, want 1", o.smtp.Count())
	}
	html, err := o.smtp.Messages()[0].Part("text/html")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(html, "Acme Minimal") || strings.Contains(html, "Acme Default") || !strings.Contains(html, "how is Globex getting on") {
		t.Errorf("the email asking for layouts/minimal: %s", html)
	}
}
