package campaign_test

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/demo"
	"github.com/tendhq/tend/internal/render"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/testsvc"
	"github.com/tendhq/tend/internal/token"
)

// The repository's own example campaigns and templates, as `make run` applies them.
const (
	examplesDir  = "../../campaigns"
	templatesDir = "../../templates"
)

// wantExamples are the example campaigns and their kinds.
var wantExamples = map[string]string{
	"onboarding":       campaign.KindDrip,
	"at-risk-checkin":  campaign.KindDrip,
	"feature-adoption": campaign.KindDrip,
	"release-2026-12":  campaign.KindBroadcast,
	"advocate-ask":     campaign.KindDrip,
}

// TestExampleCampaigns applies campaigns/ and templates/ to a database holding
// the demo's segments, the way `tend campaigns apply campaigns/ --activate`
// does, then previews every step of every campaign for a contact whose account
// has a CSM and for one whose account has none.
func TestExampleCampaigns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	segments := segment.NewStore(db.DB, clk)
	for _, in := range demo.Segments {
		if _, err := segments.Create(ctx, in); err != nil {
			t.Fatalf("demo segment %s: %v", in.Name, err)
		}
	}

	b, err := campaign.LoadDir(examplesDir, templatesDir)
	if err != nil {
		t.Fatal(err)
	}
	checkBundle(t, b)

	// The store as the binary wires it: templates are parsed and rendered
	// against a sample before anything is stored.
	store := campaign.NewStore(db.DB, clk, render.Checker{})
	changes, err := store.Apply(ctx, b, false)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if len(changes) != len(b.Templates)+len(b.Campaigns) {
		t.Fatalf("apply made %d changes for %d templates and %d campaigns: %+v", len(changes), len(b.Templates), len(b.Campaigns), changes)
	}
	for _, c := range changes {
		if c.Action != "create" {
			t.Errorf("first apply: %s %s is %q, want create", c.What, c.Name, c.Action)
		}
	}
	for _, tpl := range b.Templates {
		stored, err := store.GetTemplate(ctx, tpl.Name)
		if err != nil || stored.Kind != tpl.Kind || stored.Source != tpl.Source {
			t.Errorf("template %s: stored %+v, %v", tpl.Name, stored, err)
		}
	}

	// `make run` applies and activates on every start: the second time
	// changes nothing.
	enroller := campaign.NewEnroller(db.DB, clk, log, time.UTC)
	activate := func() {
		t.Helper()
		for _, d := range b.Campaigns {
			c, err := store.Get(ctx, d.Name)
			if err != nil {
				t.Fatal(err)
			}
			if c.Status != campaign.StatusDraft && c.Status != campaign.StatusPaused {
				continue
			}
			if _, err := store.SetStatus(ctx, d.Name, "activate"); err != nil {
				t.Fatalf("activate %s: %v", d.Name, err)
			}
			if _, err := enroller.EnrollExisting(ctx, d.Name); err != nil {
				t.Fatalf("enroll existing in %s: %v", d.Name, err)
			}
		}
	}
	activate()
	again, err := campaign.LoadDir(examplesDir, templatesDir)
	if err != nil {
		t.Fatal(err)
	}
	changes, err = store.Apply(ctx, again, false)
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	for _, c := range changes {
		if c.Action != "unchanged" {
			t.Errorf("second apply: %s %s is %q, want unchanged", c.What, c.Name, c.Action)
		}
	}
	activate()
	for name, kind := range wantExamples {
		c, err := store.Get(ctx, name)
		if err != nil {
			t.Errorf("campaign %s: %v", name, err)
			continue
		}
		if c.Kind != kind || c.Status != campaign.StatusActive || c.CurrentVersion != 1 {
			t.Errorf("campaign %s: kind %s, status %s, version %d; want %s, active, version 1", name, c.Kind, c.Status, c.CurrentVersion, kind)
		}
	}

	previewAll(t, ctx, db, clk, log, enroller, store, b)
}

// checkBundle checks what LoadDir read: the five examples, every template
// file used by some campaign, and at least three campaigns that send a
// CSM-signed email as soon as they are activated (what a newcomer to
// `make run` sees first).
func checkBundle(t *testing.T, b campaign.Bundle) {
	t.Helper()
	var names []string
	for _, d := range b.Campaigns {
		names = append(names, d.Name)
		if want, ok := wantExamples[d.Name]; !ok || d.Kind != want {
			t.Errorf("campaign %s (%s) is not one of the examples %v", d.Name, d.Kind, wantExamples)
		}
	}
	if len(b.Campaigns) != len(wantExamples) {
		t.Errorf("campaigns/ holds %v, want %d campaigns", names, len(wantExamples))
	}

	loaded := map[string]bool{}
	for _, tpl := range b.Templates {
		loaded[tpl.Name] = true
	}
	err := filepath.WalkDir(templatesDir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, err := filepath.Rel(templatesDir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == "templates.go" {
			return nil // the package that embeds layouts/default.html
		}
		name, ok := strings.CutSuffix(rel, ".nudge.yaml")
		if !ok {
			name, ok = strings.CutSuffix(rel, ".html")
		}
		switch {
		case !ok:
			t.Errorf("templates/%s is neither NAME.html nor NAME.nudge.yaml", rel)
		case !loaded[name]:
			t.Errorf("templates/%s is used by no campaign", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	var immediate []string
	for _, d := range b.Campaigns {
		if d.Kind != campaign.KindDrip || len(d.Steps) == 0 {
			continue
		}
		first := d.Steps[0]
		w, err := campaign.ParseWait(first.Wait)
		if err == nil && w == (campaign.Wait{}) && first.Channel == campaign.ChannelEmail && first.Unless == "" &&
			(d.Sender == "" || d.Sender == campaign.SenderCSM) && d.EnrollExisting && d.Window == nil {
			immediate = append(immediate, d.Name)
		}
	}
	if len(immediate) < 3 {
		t.Errorf("campaigns sending a CSM-signed email at activation (wait 0h, enroll_existing, no window): %v; want at least 3", immediate)
	}
}

// Sample people: names that appear in no template and in no render sample,
// so finding them in the output proves the template used them.
const (
	csmEmail     = "marcus.bell@tend.test"
	csmFirstName = "Marcus"
	csmSigMark   = "Senior Customer Success Manager, Northeast"
	teamSender   = "Customer Success <success@tend.test>"
	postal       = "Tend Test, 9 Example Road, Springfield"
)

type sampleContact struct {
	id, firstName, accountName string
	hasCSM                     bool
}

var samples = []sampleContact{
	{id: "priya", firstName: "Priya", accountName: "Northwind Logistics", hasCSM: true},
	{id: "tomas", firstName: "Tomás", accountName: "Bluebird & Co", hasCSM: false},
}

// emptyValue finds what a blank value leaves in text: "Hi , ..." or "I'm ."
// (a link's URL, which the text part writes as "text ( URL )", may be
// followed by punctuation: the bracket is not a letter).
var emptyValue = regexp.MustCompile(`[\p{L}\p{N}]\s+[,.;:!?]`)

// previewAll previews every email and nudge step of every example for each
// sample contact, through the preview that POST /v1/campaigns/{name}/preview
// serves.
func previewAll(t *testing.T, ctx context.Context, db *testsvc.DB, clk clock.Clock, log *slog.Logger,
	enroller *campaign.Enroller, store *campaign.Store, b campaign.Bundle) {
	t.Helper()
	accounts := account.NewStore(db.DB, clk)
	str := func(s string) *string { return &s }
	seats := 40
	if _, err := accounts.UpsertCSMs(ctx, []account.CSMInput{{
		Email: csmEmail, Name: str("Marcus Bell"), Title: str("Senior Customer Success Manager"),
		SignatureHTML: str("<p><strong>Marcus Bell</strong><br>" + csmSigMark + "</p>"),
		CalendarURL:   str("https://cal.example.com/marcus-bell"),
	}}); err != nil {
		t.Fatal(err)
	}
	signup := clk.Now().AddDate(0, -5, 0)
	if _, err := accounts.UpsertAccounts(ctx, []account.AccountInput{
		{ID: "northwind", Name: str("Northwind Logistics"), Plan: str("business"), Tier: str("enterprise"), Seats: &seats,
			SignupAt: &signup, CSMEmail: str(csmEmail), Timezone: str("America/New_York")},
		{ID: "bluebird", Name: str("Bluebird & Co"), Plan: str("starter"), Tier: str("smb"), Seats: &seats, SignupAt: &signup},
	}); err != nil {
		t.Fatal(err)
	}
	if err := accounts.UpsertContacts(ctx, []account.ContactInput{
		{ID: "priya", AccountID: "northwind", Email: str("priya@northwind.example"), Name: str("Priya Raman"), Role: str("admin")},
		{ID: "tomas", AccountID: "bluebird", Email: str("tomas@bluebird.example"), Name: str("Tomás Ortega"), Role: str("champion")},
	}); err != nil {
		t.Fatal(err)
	}

	renderer := &render.Renderer{Signer: token.NewSigner([]byte("examples-test-secret-0123456789")), PublicURL: "http://tend.test", PostalAddress: postal}
	// A preview never sends: no transport.
	sender := delivery.NewSender(db.DB, clk, log, delivery.NewOutbox(db.DB, clk), enroller, renderer, nil,
		delivery.SenderOptions{TeamSender: teamSender, MessageIDDomain: "tend.test"})

	sources := map[string]string{}
	for _, tpl := range b.Templates {
		sources[tpl.Name] = tpl.Source
	}
	names := make([]string, 0, len(wantExamples))
	for name := range wantExamples {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		c, err := store.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		def := c.Definition
		steps := def.Steps
		if def.Kind == campaign.KindBroadcast {
			steps = def.BroadcastSteps()
		}
		for _, step := range steps {
			src, ok := sources[step.Template]
			if !ok {
				t.Errorf("%s/%s: template %s was not loaded from templates/", name, step.ID, step.Template)
				continue
			}
			for _, who := range samples {
				where := name + "/" + step.ID + " for " + who.id
				out, err := sender.Preview(ctx, name, step.ID, who.id)
				if err != nil {
					t.Errorf("%s: preview: %v", where, err)
					continue
				}
				if testing.Verbose() { // go test -v shows every preview, for reading
					t.Logf("%s\nFrom: %s\nSubject: %s\n%s%+v", where, out.From, out.Subject, out.Text, out.Nudge)
				}
				signed := who.hasCSM && def.Sender == campaign.SenderCSM
				switch step.Channel {
				case campaign.ChannelEmail:
					checkEmail(t, where, src, out, who, signed)
				case campaign.ChannelInApp:
					checkNudge(t, where, src, out, who)
				default:
					t.Errorf("%s: channel %q", where, step.Channel)
				}
			}
		}
	}
}

func checkEmail(t *testing.T, where, src string, out delivery.Composed, who sampleContact, signed bool) {
	t.Helper()
	if out.Nudge != nil {
		t.Errorf("%s: an email step previewed as a nudge", where)
		return
	}
	subject := strings.TrimPrefix(out.Subject, "[TEST] ")
	if strings.TrimSpace(subject) == "" {
		t.Errorf("%s: empty subject", where)
	}
	for part, s := range map[string]string{"subject": out.Subject, "html": out.HTML, "text": out.Text} {
		if strings.Contains(s, "<no value>") || strings.Contains(s, "&lt;no value&gt;") || strings.Contains(s, "%!") {
			t.Errorf("%s: the %s holds a missing value: %q", where, part, s)
		}
	}
	for part, s := range map[string]string{"subject": subject, "text": out.Text} {
		if m := emptyValue.FindString(s); m != "" {
			t.Errorf("%s: the %s has a blank before %q, as a value that rendered empty leaves: %q", where, part, m, s)
		}
	}
	// Every example email greets its reader by name.
	if !strings.Contains(out.Text, who.firstName) {
		t.Errorf("%s: the contact's first name %q is not in the email:\n%s", where, who.firstName, out.Text)
	}
	if strings.Contains(src, ".Account.Name") && !strings.Contains(subject+"\n"+out.Text, who.accountName) {
		t.Errorf("%s: the template uses .Account.Name but %q is not in the email:\n%s", where, who.accountName, out.Text)
	}
	if out.UnsubscribeURL == "" || !strings.Contains(out.HTML, `href="`+out.UnsubscribeURL+`"`) || !strings.Contains(out.Text, out.UnsubscribeURL) {
		t.Errorf("%s: no unsubscribe link %q in the email", where, out.UnsubscribeURL)
	}
	if !strings.Contains(out.Text, postal) {
		t.Errorf("%s: no postal address in the email", where)
	}
	if signed {
		if !strings.Contains(out.From, csmEmail) {
			t.Errorf("%s: From %q, want the CSM %s", where, out.From, csmEmail)
		}
		if !strings.Contains(out.HTML, csmSigMark) {
			t.Errorf("%s: the CSM's signature is not in the email", where)
		}
		for _, field := range []string{".CSM.FirstName", ".CSM.Name"} {
			if strings.Contains(src, field) && !strings.Contains(out.Text, csmFirstName) {
				t.Errorf("%s: the template uses %s but %q is not in the email:\n%s", where, field, csmFirstName, out.Text)
			}
		}
		return
	}
	if out.From != teamSender {
		t.Errorf("%s: From %q, want the team sender %q", where, out.From, teamSender)
	}
	if strings.Contains(out.HTML, `class="signature"`) || strings.Contains(out.Text, csmFirstName) {
		t.Errorf("%s: signed by a CSM although the account has none:\n%s", where, out.Text)
	}
}

func checkNudge(t *testing.T, where, src string, out delivery.Composed, who sampleContact) {
	t.Helper()
	n := out.Nudge
	if n == nil {
		t.Errorf("%s: an in-app step previewed as an email", where)
		return
	}
	all := n.Title + "\n" + n.Body + "\n" + n.CTALabel + "\n" + n.CTAURL
	switch {
	case strings.TrimSpace(n.Title) == "" || strings.TrimSpace(n.Body) == "":
		t.Errorf("%s: empty title or body: %+v", where, n)
	case strings.Contains(all, "<no value>") || strings.Contains(all, "%!"):
		t.Errorf("%s: a missing value: %+v", where, n)
	case n.CTALabel == "" || !(strings.HasPrefix(n.CTAURL, "/") || strings.HasPrefix(n.CTAURL, "https://")):
		t.Errorf("%s: every example nudge has a call to action into the product: %+v", where, n)
	case emptyValue.MatchString(n.Title + "\n" + n.Body):
		t.Errorf("%s: a value rendered empty: %+v", where, n)
	}
	if strings.Contains(src, ".Contact.FirstName") && !strings.Contains(all, who.firstName) {
		t.Errorf("%s: the template uses .Contact.FirstName but %q is not in the nudge: %+v", where, who.firstName, n)
	}
	if strings.Contains(src, ".Account.Name") && !strings.Contains(all, who.accountName) {
		t.Errorf("%s: the template uses .Account.Name but %q is not in the nudge: %+v", where, who.accountName, n)
	}
}
