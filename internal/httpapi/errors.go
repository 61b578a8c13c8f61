package httpapi

import (
	"compress/gzip"
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

var statusOf = map[errs.Kind]int{
	errs.Invalid:      http.StatusUnprocessableEntity,
	errs.NotFound:     http.StatusNotFound,
	errs.Conflict:     http.StatusConflict,
	errs.Unauthorized: http.StatusUnauthorized,
	errs.Forbidden:    http.StatusForbidden,
	errs.TooLarge:     http.StatusRequestEntityTooLarge,
	errs.RateLimited:  http.StatusTooManyRequests,
	errs.Unavailable:  http.StatusServiceUnavailable,
}

// statusClientClosedRequest answers a request its client canceled (nginx's
// convention; the client never reads it, logs and metrics do).
const statusClientClosedRequest = 499

// badRequest is a request that could not be read at all (not JSON, wrong
// shape): 400, as opposed to readable but invalid content (422).
func badRequest(code, format string, args ...any) *echo.HTTPError {
	return &echo.HTTPError{Code: http.StatusBadRequest, Message: errs.E(errs.Invalid, code, format, args...)}
}

// handleError is the one place errors become responses:
// {"error": {"code": "...", "message": "...", ...details}}. An internal
// error's text is logged, never sent.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, body := s.describe(err, c)
	if c.Request().Method == http.MethodHead {
		c.NoContent(status)
		return
	}
	c.JSON(status, map[string]any{"error": body})
}

func (s *Server) describe(err error, c echo.Context) (int, map[string]any) {
	var he *echo.HTTPError
	if errors.As(err, &he) {
		if de, ok := he.Message.(*errs.Error); ok {
			return he.Code, errorBody(de)
		}
		code := map[int]string{
			http.StatusNotFound:              "route_not_found",
			http.StatusMethodNotAllowed:      "method_not_allowed",
			http.StatusRequestEntityTooLarge: "body_too_large",
			http.StatusUnsupportedMediaType:  "unsupported_media_type",
			http.StatusBadRequest:            "bad_request",
		}[he.Code]
		if code == "" {
			code = strings.ToLower(strings.ReplaceAll(http.StatusText(he.Code), " ", "_"))
		}
		msg := http.StatusText(he.Code)
		if he.Code == http.StatusRequestEntityTooLarge {
			msg = "the request body is larger than the limit (TEND_BODY_LIMIT)"
		}
		return he.Code, map[string]any{"code": code, "message": msg}
	}
	// echo's Decompress returns the gzip reader's error as is when a body
	// sent with Content-Encoding: gzip is not gzip: the client's mistake.
	if errors.Is(err, gzip.ErrHeader) {
		return http.StatusBadRequest, map[string]any{"code": "invalid_gzip", "message": "the body is sent with Content-Encoding: gzip but is not gzip"}
	}
	var de *errs.Error
	if errors.As(err, &de) && de.Kind != errs.Internal {
		return statusOf[de.Kind], errorBody(de)
	}
	rid := c.Response().Header().Get(echo.HeaderXRequestID)
	// A read sends no values but its parameters, checked before it runs: a
	// value refused there came from the database, and is ours.
	if m := c.Request().Method; m != http.MethodGet && m != http.MethodHead && s.valueRefused(err, rid, c.Path()) {
		return statusOf[errInvalidValue.Kind], errorBody(errInvalidValue)
	}
	if c.Request().Context().Err() != nil {
		// The client went away (or gave up waiting, say for an ingest
		// turn): nothing failed on our side, and nobody reads the answer.
		s.deps.Log.Info("request canceled by the client", "err", err, "request_id", rid, "route", c.Path())
		return statusClientClosedRequest, map[string]any{
			"code": "client_closed_request", "message": "the request was canceled before it finished",
		}
	}
	s.deps.Log.Error("internal error", "err", err, "request_id", rid, "route", c.Path())
	return http.StatusInternalServerError, map[string]any{
		"code": "internal", "message": "something went wrong on our side; quote request " + rid, "request_id": rid,
	}
}

// errInvalidValue answers a request with a value PostgreSQL refused.
var errInvalidValue = errs.E(errs.Invalid, "invalid_value",
	"a value in the request cannot be stored: text with a NUL character or invalid UTF-8, or a number or time out of range")

// valueRefused tells whether err is PostgreSQL refusing a value of the
// request (postgres.ValueRefused): the client's mistake, which a validator
// should have caught, so it is logged as a miss.
func (s *Server) valueRefused(err error, requestID, route string) bool {
	if !postgres.ValueRefused(err) {
		return false
	}
	s.deps.Log.Warn("PostgreSQL refused a value that no check caught", "err", err, "request_id", requestID, "route", route)
	return true
}

func errorBody(e *errs.Error) map[string]any {
	b := map[string]any{}
	for k, v := range e.Details {
		b[k] = v
	}
	b["code"], b["message"] = e.Code, e.Message
	return b
}
