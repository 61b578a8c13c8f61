package httpapi

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/audit"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

const ctxKey = "tend.key"

// keyOf returns the authenticated key of a request.
func keyOf(c echo.Context) (apikey.Key, bool) {
	k, ok := c.Get(ctxKey).(apikey.Key)
	return k, ok
}

// A credential extractor reads the API key from a request.
type credentials func(r *http.Request) (string, bool)

func bearerKey(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(token), true
}

// segmentWriteKey reads the key as Segment SDKs send it: HTTP Basic auth with
// the write key as the user name and an empty password.
func segmentWriteKey(r *http.Request) (string, bool) {
	user, _, ok := r.BasicAuth()
	if !ok || user == "" {
		return bearerKey(r)
	}
	return user, true
}

func (s *Server) authenticate(read credentials) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			token, ok := read(c.Request())
			if !ok || token == "" {
				return errs.E(errs.Unauthorized, "missing_key", "send an API key: Authorization: Bearer <key>")
			}
			k, err := s.deps.Keys.Authenticate(c.Request().Context(), token)
			if err != nil {
				return err
			}
			c.Set(ctxKey, k)
			return next(c)
		}
	}
}

// textParams refuses a request whose path parameters or query values are
// not text (%00, or bytes that are not UTF-8 such as %FF): PostgreSQL would
// refuse them, and nothing stored can be named by them.
func textParams(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		for i, name := range c.ParamNames() {
			if i < len(c.ParamValues()) {
				if p := postgres.TextProblem(c.ParamValues()[i]); p != "" {
					return badParameter("path", name, p)
				}
			}
		}
		query := c.QueryParams()
		for _, name := range slices.Sorted(maps.Keys(query)) {
			for _, v := range append([]string{name}, query[name]...) {
				if p := postgres.TextProblem(v); p != "" {
					return badParameter("query", name, p)
				}
			}
		}
		return next(c)
	}
}

func badParameter(in, name, problem string) error {
	what := fmt.Sprintf("query parameter %q", name)
	if in == "path" {
		what = "the path" // its parameters' names are the route's own
	}
	return errs.E(errs.Invalid, "invalid_parameter", "%s %s", what, problem).With("in", in).With("parameter", name)
}

func requireRole(allowed map[apikey.Role]bool) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			k, ok := keyOf(c)
			if !ok {
				return errs.E(errs.Unauthorized, "missing_key", "send an API key")
			}
			if !allowed[k.Role] {
				return errs.E(errs.Forbidden, "forbidden", "a %s key may not %s %s", k.Role, c.Request().Method, c.Path())
			}
			return next(c)
		}
	}
}

// keyLimiter is a token bucket per API key, in this process.
type keyLimiter struct {
	mu    sync.Mutex
	limit rate.Limit
	burst int
	byKey map[int64]*rate.Limiter
}

func newKeyLimiter(perSecond float64, burst int) *keyLimiter {
	if perSecond <= 0 {
		perSecond = math.Inf(1)
	}
	return &keyLimiter{limit: rate.Limit(perSecond), burst: burst, byKey: map[int64]*rate.Limiter{}}
}

func (l *keyLimiter) get(id int64) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.byKey[id]
	if !ok {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.byKey[id] = lim
	}
	return lim
}

func (s *Server) rateLimit(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		k, ok := keyOf(c)
		if !ok {
			return next(c)
		}
		r := s.limiter.get(k.ID).Reserve()
		if d := r.Delay(); d > 0 {
			r.Cancel()
			c.Response().Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
			return errs.E(errs.RateLimited, "rate_limited", "too many requests for this API key; retry in %s", d.Round(time.Millisecond))
		}
		return next(c)
	}
}

// auditMutations records every successful mutation: which key, what, on what, when.
func (s *Server) auditMutations(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := next(c)
		m := c.Request().Method
		if m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions {
			return err
		}
		status := c.Response().Status
		if err != nil || status >= 400 {
			return err
		}
		k, _ := keyOf(c)
		target := c.Get(auditTargetKey)
		e := audit.Entry{
			At: s.deps.Clock.Now(), APIKeyID: &k.ID, Actor: k.Name, Role: string(k.Role),
			Action: m + " " + c.Path(), Status: status,
			RequestID: c.Response().Header().Get(echo.HeaderXRequestID),
		}
		if t, ok := target.(string); ok {
			e.Target = t
		}
		if aerr := s.deps.Audit.Record(c.Request().Context(), e); aerr != nil {
			s.deps.Log.Error("audit: record failed", "err", aerr, "action", e.Action)
		}
		return nil
	}
}

const auditTargetKey = "tend.audit.target"

// auditTarget names what a mutation acted on, for the audit trail.
func auditTarget(c echo.Context, format string, args ...any) {
	c.Set(auditTargetKey, fmt.Sprintf(format, args...))
}

// maxRequestIDLen bounds a caller's X-Request-Id.
const maxRequestIDLen = 128

// dropOddRequestID removes a caller's X-Request-Id unless it looks like one
// (visible ASCII, not too long), so that the request gets one of ours: the
// id is logged, sent back, and written to the audit trail, whose insert
// would fail on text PostgreSQL refuses and leave the mutation unaudited.
func dropOddRequestID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Request().Header
		if rid := h.Get(echo.HeaderXRequestID); len(rid) > maxRequestIDLen || strings.ContainsFunc(rid, func(r rune) bool { return r <= ' ' || r > '~' }) {
			h.Del(echo.HeaderXRequestID)
		}
		return next(c)
	}
}

func newRequestID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Server) recoverPanic(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if r := recover(); r != nil {
				if r == http.ErrAbortHandler {
					panic(r)
				}
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return next(c)
	}
}

type httpMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tend_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tend_http_request_duration_seconds", Help: "HTTP request latency by route and method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}, []string{"route", "method"}),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

// observe logs each request with its id and records metrics. It runs the
// error handler itself so the logged status is the one sent.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		status := c.Response().Status
		d := time.Since(start)
		s.metrics.requests.WithLabelValues(route, c.Request().Method, strconv.Itoa(status)).Inc()
		s.metrics.latency.WithLabelValues(route, c.Request().Method).Observe(d.Seconds())
		attrs := []any{
			"request_id", c.Response().Header().Get(echo.HeaderXRequestID),
			"method", c.Request().Method, "route", route, "status", status,
			"duration_ms", float64(d.Microseconds()) / 1000,
		}
		if k, ok := keyOf(c); ok {
			attrs = append(attrs, "key", k.Name)
		}
		switch {
		case status >= 500:
			s.deps.Log.Error("http request", append(attrs, "err", err)...)
		case route == "/healthz" || route == "/readyz" || route == "/metrics" || strings.HasPrefix(route, "/t/"):
			// Probes and tracking hits (an open pixel per email read, at
			// thousands a second): counted in /metrics, logged at debug.
			s.deps.Log.Debug("http request", attrs...)
		default:
			s.deps.Log.Info("http request", attrs...)
		}
		return nil
	}
}
