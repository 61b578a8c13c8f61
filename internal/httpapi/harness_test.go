package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/audit"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/engagement"
	"github.com/tendhq/tend/internal/health"
	"github.com/tendhq/tend/internal/httpapi"
	"github.com/tendhq/tend/internal/render"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/testsvc"
	"github.com/tendhq/tend/internal/token"
)

var t0 = time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)

// harness is a real API on a real, private PostgreSQL database, with one key
// per role and a manual clock.
type harness struct {
	t         *testing.T
	db        *testsvc.DB
	clock     *clock.Manual
	srv       *httptest.Server
	api       *httpapi.Server
	campaigns *campaign.Store
	keys      *apikey.Store
	accounts  *account.Store
	key       map[apikey.Role]string
}

type harnessOpt func(*httpapi.Options)

func newHarness(t *testing.T, opts ...harnessOpt) *harness {
	t.Helper()
	t.Parallel()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(t0)
	h := &harness{t: t, db: db, clock: clk, keys: apikey.NewStore(db.DB, clk), accounts: account.NewStore(db.DB, clk), key: map[apikey.Role]string{}}
	o := httpapi.Options{BodyLimit: 1 << 20, RateLimit: 1000, RateBurst: 1000}
	for _, f := range opts {
		f(&o)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	signer := token.NewSigner([]byte("harness-secret-0123456789"))
	enroller := campaign.NewEnroller(db.DB, clk, log, time.UTC)
	outbox := delivery.NewOutbox(db.DB, clk)
	// The API never sends itself (workers do); this mailer is never dialled.
	mailer, err := delivery.NewMailer("smtp://127.0.0.1:9", delivery.MailerOptions{Connections: 1})
	if err != nil {
		t.Fatal(err)
	}
	renderer := &render.Renderer{Signer: signer, PublicURL: "http://tend.test", PostalAddress: "1 Test Street"}
	h.campaigns = campaign.NewStore(db.DB, clk, render.Checker{})
	api := httpapi.New(httpapi.Deps{
		Accounts: h.accounts, Keys: h.keys, Audit: audit.NewLog(db.DB), Clock: clk,
		Segments: segment.NewStore(db.DB, clk), Engine: segment.NewEngine(db.DB, clk, log),
		Campaigns: h.campaigns, Enroller: enroller, Outbox: outbox, Tracker: engagement.NewTracker(db.DB, clk, signer), Unsubscribes: delivery.NewUnsubscribes(db.DB, clk, signer),
		Sender: delivery.NewSender(db.DB, clk, log, outbox, enroller, renderer, mailer, delivery.SenderOptions{
			TeamSender: "Success <success@tend.test>", MessageIDDomain: "tend.test"}),
		Health: health.NewService(db.DB, clk),
		Log:    log,
		Ready:  func(ctx context.Context) error { return db.PingContext(ctx) },
	}, o)
	h.api = api
	h.srv = httptest.NewServer(api.Handler())
	t.Cleanup(h.srv.Close)
	for _, r := range apikey.Roles {
		_, secret, err := h.keys.Create(context.Background(), string(r)+"-key", r)
		if err != nil {
			t.Fatal(err)
		}
		h.key[r] = secret
	}
	return h
}

// response is a decoded answer.
type response struct {
	Status int
	Body   map[string]any
	Raw    []byte
	Header http.Header
}

// do sends body (a string is sent as is, anything else as JSON) with the key.
func (h *harness) do(method, path, key string, body any) response {
	h.t.Helper()
	req := h.request(method, path, body)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return h.send(req)
}

// request builds a JSON request without credentials; body is as for do.
func (h *harness) request(method, path string, body any) *http.Request {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	case []byte:
		rd = bytes.NewBuffer(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewBuffer(j)
	}
	req, err := http.NewRequest(method, h.srv.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return req
}

// send sends a request and decodes the answer.
func (h *harness) send(req *http.Request) response {
	h.t.Helper()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := response{Status: res.StatusCode, Raw: raw, Header: res.Header}
	json.Unmarshal(raw, &r.Body)
	return r
}

// admin sends as the admin key and fails the test unless the status is want.
func (h *harness) must(want int, method, path string, body any) response {
	h.t.Helper()
	r := h.do(method, path, h.key[apikey.Admin], body)
	if r.Status != want {
		h.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.Status, want, r.Raw)
	}
	return r
}
