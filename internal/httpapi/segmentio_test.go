package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/tendhq/tend/internal/apikey"
)

// sdkResult is what the Segment SDK reported for one message.
type sdkResult struct {
	msg analytics.Message
	err error
}

// sdkCallback collects the SDK's reports.
type sdkCallback chan sdkResult

func (c sdkCallback) Success(m analytics.Message)            { c <- sdkResult{msg: m} }
func (c sdkCallback) Failure(m analytics.Message, err error) { c <- sdkResult{msg: m, err: err} }

type sdkLogger struct{ t *testing.T }

func (l sdkLogger) Logf(format string, args ...any) { l.t.Logf("analytics-go: "+format, args...) }
func (l sdkLogger) Errorf(format string, args ...any) {
	l.t.Logf("analytics-go error: "+format, args...)
}

// segmentClient is an unmodified Segment SDK sending to the harness with the
// ingest key as write key. Messages go out one per request when batchSize is
// 1, else only when the client is closed.
func (h *harness) segmentClient(batchSize int) (analytics.Client, sdkCallback) {
	h.t.Helper()
	done := make(sdkCallback, 100)
	c, err := analytics.NewWithConfig(h.key[apikey.Ingest], analytics.Config{
		Endpoint:   h.srv.URL + "/segment",
		BatchSize:  batchSize,
		Interval:   time.Hour, // never flush on a timer
		Callback:   done,
		Logger:     sdkLogger{h.t},
		RetryAfter: func(int) time.Duration { return 10 * time.Millisecond },
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return c, done
}

// wantDelivered waits for the SDK's report on n messages and fails on any failure.
func wantDelivered(t *testing.T, done sdkCallback, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatalf("the SDK could not deliver %T: %v", r.msg, r.err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the SDK reported %d of %d messages", i, n)
		}
	}
}

func TestSegmentSDK(t *testing.T) {
	h := newHarness(t)
	now := h.clock.Now()

	// One request per message, each waited for: the identify and tracks find
	// their account through the earlier group call alone.
	client, done := h.segmentClient(1)
	send := func(m analytics.Message) {
		t.Helper()
		if err := client.Enqueue(m); err != nil {
			t.Fatal(err)
		}
		wantDelivered(t, done, 1)
	}
	send(analytics.Group{
		GroupId: "acme", UserId: "u1", Timestamp: now,
		Traits: analytics.NewTraits().SetName("Acme Inc").SetCreatedAt(now.AddDate(0, 0, -40)).
			Set("plan", "pro").Set("seats", 10).Set("industry", "retail"),
	})
	send(analytics.Identify{
		UserId: "u1", Timestamp: now,
		Traits: analytics.NewTraits().SetEmail("Ann@Acme.example").SetFirstName("Ann").SetLastName("Lee").SetTitle("VP Ops"),
	})
	send(analytics.Track{UserId: "u1", Event: "login", Timestamp: now.Add(-time.Hour)})
	send(analytics.Track{UserId: "u1", Event: "feature_used", Timestamp: now, Properties: analytics.NewProperties().Set("feature", "reports")})
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}

	a := h.getAccount("acme")
	if a["name"] != "Acme Inc" || a["plan"] != "pro" || a["seats"] != 10.0 || obj(t, a, "traits")["industry"] != "retail" {
		t.Fatalf("account from the group call: %v", a)
	}
	p := obj(t, a, "profile")
	for k, want := range map[string]any{"days_since_signup": 40.0, "logins_7d": 1.0, "logins_30d": 1.0, "active_users": 1.0, "days_since_last_login": 0.0} {
		if p[k] != want {
			t.Errorf("profile.%s = %v, want %v", k, p[k], want)
		}
	}
	if f := obj(t, p, "features"); f["reports"] != 1.0 {
		t.Errorf("features %v, want reports 1", f)
	}
	var contact struct{ Account, Email, Name, Role string }
	err := h.db.GetContext(context.Background(), &contact, `
		SELECT a.external_id AS account, c.email, c.name, c.role
		FROM contact c JOIN account a ON a.id = c.account_id WHERE c.external_id = 'u1'`)
	if err != nil {
		t.Fatalf("contact u1: %v", err)
	}
	if contact.Account != "acme" || contact.Email != "ann@acme.example" || contact.Name != "Ann Lee" || contact.Role != "VP Ops" {
		t.Fatalf("contact u1 = %+v", contact)
	}
	// The SDK's messageIds are kept for de-duplication.
	if n := h.count(`SELECT count(*) FROM usage_event WHERE message_id IS NOT NULL`); n != 2 {
		t.Fatalf("%d events with a message id, want 2", n)
	}

	// Several messages in one batch, flushed by Close: an identify that names
	// its account in context.groupId, and its user's track.
	client, done = h.segmentClient(100)
	for _, m := range []analytics.Message{
		analytics.Identify{UserId: "u2", Timestamp: now, Context: &analytics.Context{GroupID: "acme", Locale: "fr-FR", Timezone: "Europe/Paris"}, Traits: analytics.NewTraits().SetEmail("bo@acme.example")},
		analytics.Track{UserId: "u2", Event: "login", Timestamp: now, Context: &analytics.Context{GroupID: "acme"}},
	} {
		if err := client.Enqueue(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	wantDelivered(t, done, 2)

	a = h.getAccount("acme")
	if a["contacts"] != 2.0 {
		t.Fatalf("contacts %v, want 2", a["contacts"])
	}
	if p := obj(t, a, "profile"); p["logins_30d"] != 2.0 || p["active_users"] != 2.0 {
		t.Fatalf("after the batch: logins_30d %v, active_users %v; want 2 and 2", p["logins_30d"], p["active_users"])
	}
	c := h.do("GET", "/v1/contacts/u2", h.key[apikey.CSM], nil)
	if c.Body["account_id"] != "acme" || c.Body["locale"] != "fr-FR" || c.Body["timezone"] != "Europe/Paris" {
		t.Fatalf("contact u2: %s", c.Raw)
	}

	// Every delivery is in the audit trail as the ingest key.
	entries, _ := h.auditEntries("")
	if len(entries) != 5 {
		t.Fatalf("%d audit entries, want 5 (four single sends and a batch)", len(entries))
	}
	for _, e := range entries {
		if e["action"] != "POST /segment/v1/batch" || e["actor"] != "ingest-key" {
			t.Fatalf("audit entry %v", e)
		}
	}
}

// segmentReply checks a Segment answer: 200, success, accepted, and the
// indexes and fields of the rejected items.
func segmentReply(t *testing.T, r response, accepted int, rejected ...itemWant) {
	t.Helper()
	wantStatus(t, r, http.StatusOK)
	if r.Body["success"] != true || num(t, r.Body, "accepted") != float64(accepted) {
		t.Fatalf("want success and %d accepted: %s", accepted, r.Raw)
	}
	var items []map[string]any
	if raw, ok := r.Body["rejected"].([]any); ok {
		for _, it := range raw {
			item := it.(map[string]any)
			if reason := fmt.Sprint(item["reason"]); strings.Contains(reason, "httpapi.") || strings.Contains(reason, "account.") {
				t.Fatalf("a reason names a Go type: %s", reason)
			}
			items = append(items, item)
		}
	}
	wantItems(t, items, rejected...)
}

func TestSegmentHTTP(t *testing.T) {
	h := newHarness(t)
	ingest := h.key[apikey.Ingest]
	segmentReply(t, h.segment("/group", ingest, map[string]any{
		"groupId": "acme", "userId": "u1", "traits": map[string]any{"name": "Acme", "mrr": 99.5, "csm_email": "nobody"},
	}), 0, itemWant{0, "csm_email"})
	segmentReply(t, h.segment("/group", ingest, map[string]any{
		"groupId": "acme", "userId": "u1", "traits": map[string]any{"name": "Acme", "mrr": 99.5},
	}), 1)
	if a := h.getAccount("acme"); a["mrr"] != 99.5 {
		t.Fatalf("account acme: %v", a)
	}

	t.Run("good and bad items", func(t *testing.T) {
		segmentReply(t, h.segment("/batch", ingest, map[string]any{"batch": []any{
			map[string]any{"type": "track", "userId": "u1", "event": "login"},
			map[string]any{"type": "track", "userId": "u9", "event": "login", "context": map[string]any{"groupId": "no-such-account"}},
			map[string]any{"type": "track", "userId": "stranger", "event": "login"},
			map[string]any{"type": "page", "userId": "u1", "name": "Home"},
			42,
			map[string]any{"type": "group", "userId": "u1"},
			map[string]any{"type": "identify", "traits": map[string]any{"email": "x@acme.example"}},
			map[string]any{"type": "track", "userId": "u1", "event": "login", "timestamp": t0.Add(time.Hour)},
		}}), 1, itemWant{1, "account_id"}, itemWant{2, "account_id"}, itemWant{3, "type"}, itemWant{4, ""}, itemWant{5, ""}, itemWant{6, ""}, itemWant{7, "timestamp"})
		if p := h.profile("acme"); p["logins_30d"] != 1.0 {
			t.Fatalf("logins_30d %v, want 1: the good item kept, the bad ones not", p["logins_30d"])
		}
		if n := h.count(`SELECT count(*) FROM account`); n != 1 {
			t.Fatalf("%d accounts: a track created one", n)
		}
	})

	t.Run("identify before group", func(t *testing.T) {
		// In one batch the group comes after the identify, yet links it.
		segmentReply(t, h.segment("/batch", ingest, map[string]any{"batch": []any{
			map[string]any{"type": "identify", "userId": "u2", "traits": map[string]any{"email": "u2@globex.example", "name": "Uma"}},
			map[string]any{"type": "track", "userId": "u2", "event": "login"},
			map[string]any{"type": "group", "userId": "u2", "groupId": "globex", "traits": map[string]any{"name": "Globex"}},
		}}), 3)
		c := h.do("GET", "/v1/contacts/u2", h.key[apikey.Marketing], nil)
		if c.Body["account_id"] != "globex" || c.Body["email"] != "u2@globex.example" || c.Body["name"] != "Uma" {
			t.Fatalf("contact u2: %s", c.Raw)
		}
		if p := h.profile("globex"); p["logins_30d"] != 1.0 {
			t.Fatalf("globex logins_30d %v, want 1", p["logins_30d"])
		}

		// An account made by /v1/accounts, never grouped: context.groupId links.
		h.ingest(http.StatusOK, "/v1/accounts", map[string]any{"id": "initech"})
		segmentReply(t, h.segment("/identify", ingest, map[string]any{
			"userId": "u3", "context": map[string]any{"groupId": "initech"}, "traits": map[string]any{"email": "u3@initech.example"},
		}), 1)
		if c := h.do("GET", "/v1/contacts/u3", h.key[apikey.Marketing], nil); c.Body["account_id"] != "initech" {
			t.Fatalf("contact u3: %s", c.Raw)
		}
		// Without any way to its account, an identify is rejected.
		segmentReply(t, h.segment("/identify", ingest, map[string]any{"userId": "u4", "traits": map[string]any{"email": "u4@x.example"}}), 0, itemWant{0, ""})
		wantStatus(t, h.do("GET", "/v1/contacts/u4", h.key[apikey.Marketing], nil), http.StatusNotFound)
	})

	t.Run("numeric user id", func(t *testing.T) {
		segmentReply(t, h.segment("/group", ingest, map[string]any{"groupId": 7001, "userId": 42}), 1)
		segmentReply(t, h.segment("/track", ingest, map[string]any{"userId": 42, "event": "login"}), 1)
		if p := h.profile("7001"); p["logins_30d"] != 1.0 {
			t.Fatalf("account 7001 logins_30d %v", p["logins_30d"])
		}
	})

	t.Run("gzip", func(t *testing.T) {
		req := h.request("POST", "/segment/v1/batch", gzipJSON(t, map[string]any{"batch": []any{
			map[string]any{"type": "track", "userId": "u1", "event": "report_viewed"},
		}}))
		req.Header.Set("Content-Encoding", "gzip")
		req.SetBasicAuth(ingest, "")
		segmentReply(t, h.send(req), 1)
		if e := obj(t, h.profile("acme"), "events"); e["report_viewed"] != 1.0 {
			t.Fatalf("events %v, want report_viewed 1", e)
		}
	})

	t.Run("messageId counts once", func(t *testing.T) {
		dup := map[string]any{"type": "track", "userId": "u1", "event": "exported", "messageId": "msg-dup-1"}
		segmentReply(t, h.segment("/batch", ingest, map[string]any{"batch": []any{dup, dup}}), 2)
		segmentReply(t, h.segment("/track", ingest, dup), 1)
		if e := obj(t, h.profile("acme"), "events"); e["exported"] != 1.0 {
			t.Fatalf("events %v, want exported 1", e)
		}
		if n := h.count(`SELECT count(*) FROM usage_event WHERE message_id = 'msg-dup-1'`); n != 1 {
			t.Fatalf("%d events stored for one messageId", n)
		}
	})

	t.Run("unreadable", func(t *testing.T) {
		wantError(t, h.segment("/batch", ingest, `{"batch": [`), http.StatusBadRequest, "invalid_json")
		wantError(t, h.segment("/batch", ingest, `{"batch": {}}`), http.StatusBadRequest, "invalid_json")
		// A single message that is not JSON is a rejected item, as in a batch.
		segmentReply(t, h.segment("/track", ingest, `not json`), 0, itemWant{0, ""})
	})
}
