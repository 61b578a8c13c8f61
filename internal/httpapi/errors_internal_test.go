package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/errs"
)

// An error from a request its client canceled is not an internal error: it
// answers 499 and is logged at info, not as a failure.
func TestCanceledRequestIsNotAnInternalError(t *testing.T) {
	var logs bytes.Buffer
	s := New(Deps{Log: slog.New(slog.NewTextHandler(&logs, nil))}, Options{RateLimit: 1, RateBurst: 1})
	answer := func(ctx context.Context) (int, map[string]any) {
		req := httptest.NewRequest(http.MethodPost, "/v1/events", nil).WithContext(ctx)
		rec := httptest.NewRecorder()
		s.handleError(fmt.Errorf("account: ingest: waiting for a turn: %w", context.Canceled), echo.New().NewContext(req, rec))
		var body struct{ Error map[string]any }
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%d %s: %v", rec.Code, rec.Body, err)
		}
		return rec.Code, body.Error
	}

	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if code, e := answer(canceled); code != 499 || e["code"] != "client_closed_request" {
		t.Fatalf("canceled request: %d %v", code, e)
	}
	if strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "request canceled by the client") {
		t.Fatalf("canceled request logged as:\n%s", logs.String())
	}

	// The same error with the client still there is ours.
	logs.Reset()
	if code, e := answer(context.Background()); code != http.StatusInternalServerError || e["code"] != "internal" {
		t.Fatalf("live request: %d %v", code, e)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("an internal error was not logged as one:\n%s", logs.String())
	}
}

// A value PostgreSQL refused, when no check caught it first, is the client's:
// 422 invalid_value, without the driver's text, logged as a miss. Other
// database errors stay internal.
func TestRefusedValueIsInvalid(t *testing.T) {
	var logs bytes.Buffer
	s := New(Deps{Log: slog.New(slog.NewTextHandler(&logs, nil))}, Options{RateLimit: 1, RateBurst: 1})
	method := http.MethodPost
	answer := func(err error) (int, map[string]any) {
		req := httptest.NewRequest(method, "/v1/accounts", nil)
		rec := httptest.NewRecorder()
		s.handleError(err, echo.New().NewContext(req, rec))
		var body struct{ Error map[string]any }
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%d %s: %v", rec.Code, rec.Body, err)
		}
		return rec.Code, body.Error
	}
	for _, pe := range []*pq.Error{{Code: "22021"}, {Code: "22P05"}, {Code: "22008"}, {Code: "22003"}, {Code: "22P02"}} {
		logs.Reset()
		pe.Message = "secret driver text"
		status, e := answer(fmt.Errorf("account: upsert: %w", pe))
		if status != http.StatusUnprocessableEntity || e["code"] != "invalid_value" || strings.Contains(fmt.Sprint(e), "secret") {
			t.Errorf("SQLSTATE %s: %d %v", pe.Code, status, e)
		}
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "secret driver text") {
			t.Errorf("SQLSTATE %s was not logged as a miss:\n%s", pe.Code, logs.String())
		}
	}
	if status, e := answer(fmt.Errorf("x: %w", &pq.Error{Code: "23505", Message: "duplicate"})); status != http.StatusInternalServerError || e["code"] != "internal" {
		t.Errorf("a unique violation: %d %v", status, e)
	}
	// A read's only values are its parameters, checked before it runs: a
	// refusal there is about stored data, not the request.
	method = http.MethodGet
	if status, e := answer(fmt.Errorf("x: %w", &pq.Error{Code: "22003"})); status != http.StatusInternalServerError || e["code"] != "internal" {
		t.Errorf("a GET: %d %v", status, e)
	}

	// In a Segment batch, the item is rejected, as an invalid one.
	c := echo.New().NewContext(httptest.NewRequest(http.MethodPost, "/segment/v1/batch", nil), httptest.NewRecorder())
	var rejected errs.Items
	if !s.rejectItem(c, &rejected, 3, fmt.Errorf("x: %w", &pq.Error{Code: "22021"})) || len(rejected) != 1 || rejected[0].Index != 3 {
		t.Errorf("a refused value in a Segment item: %v", rejected)
	}
	if s.rejectItem(c, &rejected, 4, fmt.Errorf("x: %w", &pq.Error{Code: "23505"})) {
		t.Error("a unique violation rejected a Segment item")
	}
}
