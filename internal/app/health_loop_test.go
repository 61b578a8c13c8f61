package app_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// usage posts logins by users u0..u(users-1) and, optionally, use of the
// key features, on each of the given days (offsets from now, in days).
func (tn *tend) usage(account string, users int, features bool, days ...int) {
	tn.t.Helper()
	var events []any
	for _, d := range days {
		at := tn.clock.Now().AddDate(0, 0, d).Add(-time.Minute)
		for u := 0; u < users; u++ {
			events = append(events, map[string]any{"account_id": account, "contact_id": fmt.Sprintf("u%d", u), "name": "login", "timestamp": at})
		}
		if features {
			for _, f := range []string{"dashboards", "reports", "integrations", "alerts"} {
				events = append(events, map[string]any{"account_id": account, "contact_id": "u0", "name": "feature_used",
					"properties": map[string]any{"feature": f}, "timestamp": at})
			}
		}
	}
	tn.call(202, "POST", "/v1/events", map[string]any{"events": events})
}

func (tn *tend) health(account string) map[string]any {
	tn.t.Helper()
	return tn.call(200, "GET", "/v1/accounts/"+account+"/health", nil)
}

func engagementInputs(t *testing.T, h map[string]any) map[string]any {
	t.Helper()
	for _, c := range h["components"].([]any) {
		if c := c.(map[string]any); c["name"] == "engagement" {
			return c["inputs"].(map[string]any)
		}
	}
	t.Fatalf("no engagement component: %v", h)
	return nil
}

// TestTheLoop is the whole loop under a controlled clock: an account's logins
// stop and it ignores two CSM emails → its health falls → it enters the
// at-risk segment → the at-risk drip sends a CSM-signed check-in that the
// SMTP server receives → a reply arrives by webhook and logins resume →
// health rises → it leaves the segment and the drip exits.
func TestTheLoop(t *testing.T) {
	tn := start(t)
	tn.call(200, "POST", "/v1/csms", map[string]any{"email": "dana@acme-analytics.example", "name": "Dana Reyes",
		"title": "Customer Success Manager", "reply_to": "dana.reyes@acme-analytics.example"})
	tn.call(201, "POST", "/v1/segments", map[string]any{"name": "customers", "predicate": `plan == "pro"`})
	tn.call(201, "POST", "/v1/segments", map[string]any{"name": "at-risk", "predicate": `health_band == "at_risk"`})
	for name, src := range map[string]string{
		"tips/one":         `{{define "subject"}}A tip for {{.Account.Name}}{{end}}{{define "body"}}<p>Hi {{.Contact.FirstName}}, try <a href="https://docs.acme-analytics.example/alerts">alerts</a>.</p>{{end}}`,
		"tips/two":         `{{define "subject"}}Another tip{{end}}{{define "body"}}<p>Hi {{.Contact.FirstName}}, dashboards can be shared.</p>{{end}}`,
		"at-risk/checkin":  checkin,
		"at-risk/followup": followup,
	} {
		tn.call(200, "PUT", "/v1/templates/"+name, map[string]any{"kind": "email", "source": src})
	}
	tn.call(201, "POST", "/v1/campaigns", map[string]any{
		"name": "tips", "kind": "drip", "segment": "customers", "sender": "csm",
		"steps": []any{
			map[string]any{"id": "one", "wait": "0h", "channel": "email", "template": "tips/one"},
			map[string]any{"id": "two", "wait": "1d", "channel": "email", "template": "tips/two"},
		},
	})
	tn.call(201, "POST", "/v1/campaigns", map[string]any{
		"name": "at-risk-checkin", "kind": "drip", "segment": "at-risk", "sender": "csm", "exit": "leaves_segment",
		"steps": []any{
			map[string]any{"id": "checkin", "wait": "0h", "channel": "email", "template": "at-risk/checkin"},
			map[string]any{"id": "followup", "wait": "3d", "channel": "email", "template": "at-risk/followup"},
		},
	})
	for _, c := range []string{"tips", "at-risk-checkin"} {
		tn.call(200, "POST", "/v1/campaigns/"+c+"/activate", nil)
	}
	for _, s := range []string{"customers", "at-risk"} {
		tn.eventually("segment "+s+" built", 30*time.Second, func() bool {
			return tn.call(200, "GET", "/v1/segments/"+s, nil)["status"] == "ready"
		})
	}

	// A healthy customer: two users in every day for a month, every key
	// feature in use until yesterday, a passive NPS.
	tn.call(200, "POST", "/v1/accounts", map[string]any{"id": "globex", "name": "Globex", "plan": "pro", "seats": 10,
		"mrr": 2400, "csm_email": "dana@acme-analytics.example", "signup_at": tn.clock.Now().AddDate(-1, 0, 0)})
	tn.call(200, "POST", "/v1/contacts", map[string]any{"id": "hank", "account_id": "globex", "email": "hank@globex.example",
		"name": "Hank Scorpio", "role": "admin"})
	var month []int
	for d := -29; d <= -1; d++ {
		month = append(month, d)
	}
	tn.usage("globex", 2, true, month...)
	tn.usage("globex", 2, false, 0)
	tn.call(202, "POST", "/v1/metrics", map[string]any{"metrics": []any{
		map[string]any{"account_id": "globex", "values": map[string]any{"nps": 8, "open_tickets": 0}}}})
	tn.eventually("globex scored healthy", 30*time.Second, func() bool { return tn.health("globex")["band"] == "healthy" })
	before := tn.health("globex")

	// Two CSM emails arrive, a day apart; Hank opens neither.
	if !tn.smtp.WaitFor(1, 30*time.Second) {
		t.Fatal("the first tip was not sent")
	}
	tn.eventually("the first tip recorded as sent", 30*time.Second, func() bool { return tn.status("hank", "one") == "sent" })
	tn.clock.Advance(24*time.Hour + time.Hour)
	if !tn.smtp.WaitFor(2, 30*time.Second) {
		t.Fatalf("the second tip was not sent: %v", tn.messages("hank"))
	}
	tn.eventually("the second tip recorded as sent", 30*time.Second, func() bool { return tn.status("hank", "two") == "sent" })
	for _, m := range tn.smtp.Messages() {
		if m.Header.Get("From") != `"Dana Reyes" <dana@acme-analytics.example>` {
			t.Fatalf("a tip not signed by the CSM: From %q", m.Header.Get("From"))
		}
	}

	// Four weeks without a login: the full pass that the clock's move starts
	// rescores the account (time, not data) into the at-risk band.
	tn.clock.Advance(28 * 24 * time.Hour)
	tn.eventually("globex at risk", 30*time.Second, func() bool { return tn.health("globex")["band"] == "at_risk" })
	fallen := tn.health("globex")
	if fallen["score"].(float64) >= before["score"].(float64) || fallen["change_30d"].(float64) >= 0 {
		t.Fatalf("health did not fall: before %v, after %v", before["score"], fallen)
	}
	if in := engagementInputs(t, fallen); in["ignored"] != 2.0 || in["ignored_in_a_row"] != 2.0 {
		t.Fatalf("the two ignored emails should count against: %v\nmessages: %v", in, tn.messages("hank"))
	}
	// Health is written just before the memberships it moves, in the same
	// evaluation.
	tn.eventually("globex in the at-risk segment", 30*time.Second, func() bool {
		segs := fmt.Sprint(tn.call(200, "GET", "/v1/accounts/globex", nil)["segments"])
		return segs == "[at-risk customers]" || segs == "[customers at-risk]"
	})

	// The at-risk drip's check-in, signed by the CSM.
	if !tn.smtp.WaitFor(3, 30*time.Second) {
		t.Fatalf("no at-risk check-in; messages %v", tn.messages("hank"))
	}
	check := tn.smtp.Messages()[2]
	if check.Header.Get("From") != `"Dana Reyes" <dana@acme-analytics.example>` || !strings.Contains(check.Header.Get("Subject"), "Checking in on Globex") {
		t.Fatalf("check-in: From %q, Subject %q", check.Header.Get("From"), check.Header.Get("Subject"))
	}

	// Hank replies, and the team is back: logins from six people today and
	// every key feature.
	tn.signed(200, "/v1/webhooks/reply", map[string]any{"to": []string{"dana@acme-analytics.example"},
		"from": "Hank Scorpio <hank@globex.example>", "subject": "Re: Checking in", "text": "We had a reorg; back now. Thanks Dana!",
		"message_id": "<r1@globex.example>", "in_reply_to": check.Header.Get("Message-Id")}, "tend-development-webhook-secret")
	tn.usage("globex", 6, true, 0)
	tn.eventually("globex recovered", 30*time.Second, func() bool { return tn.health("globex")["band"] != "at_risk" })
	risen := tn.health("globex")
	if risen["score"].(float64) <= fallen["score"].(float64) {
		t.Fatalf("health did not rise: %v → %v", fallen["score"], risen["score"])
	}
	if in := engagementInputs(t, risen); in["replies"] != 1.0 || in["ignored_in_a_row"] != 0.0 {
		t.Fatalf("the reply should count: %v", in)
	}
	prev := risen["previous"].(map[string]any)
	if prev["band"] != "at_risk" || len(risen["changes"].([]any)) == 0 {
		t.Fatalf("the explanation should say what changed since the at-risk score: %v", risen)
	}

	// Out of the segment; the drip exits and its follow-up never goes.
	tn.eventually("drip exits", 30*time.Second, func() bool { return tn.status("hank", "followup") == "skipped" })
	if r := tn.reason("hank", "followup"); !strings.HasPrefix(r, "exited") {
		t.Fatalf("follow-up skipped because %q, want exited", r)
	}
	tn.clock.Advance(4 * 24 * time.Hour)
	time.Sleep(600 * time.Millisecond)
	var followups int
	for _, m := range tn.smtp.Messages() {
		if strings.Contains(m.Header.Get("Subject"), "Following up") {
			followups++
		}
	}
	if followups != 0 {
		t.Fatalf("%d follow-ups sent after the drip exited", followups)
	}
	sum := tn.call(200, "GET", "/v1/health/summary", nil)
	if sum["accounts"] != 1.0 || sum["at_risk"].(map[string]any)["accounts"] != 0.0 {
		t.Fatalf("summary after recovery: %v", sum)
	}
}
