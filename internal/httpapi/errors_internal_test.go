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
