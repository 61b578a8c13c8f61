// Package httpapi is Tend's HTTP API on echo: routes, API-key authentication
// with per-route roles, per-key rate limits, the audit trail of mutations, and
// the one error handler that turns domain errors into JSON with a
// machine-readable code. It adapts HTTP to the domain packages and holds no
// business logic of its own.
package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/audit"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/engagement"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/health"
	"github.com/tendhq/tend/internal/segment"
)

// Signals tell the worker pool about changes so it acts at once. Each change
// is already durable in PostgreSQL; a lost signal only delays the work until
// the scheduler's sweep.
type Signals interface {
	// AccountsChanged: these accounts' data changed; re-evaluate their segments.
	AccountsChanged(ctx context.Context, ids []int64)
	// SegmentChanged: a segment was created or its predicate edited; build it.
	SegmentChanged(ctx context.Context, segmentID, generation int64)
	// SendMessages: these outbox messages are due; send them now.
	SendMessages(ctx context.Context, ids []int64) error
	// HealthModelChanged: a new health model was saved; rescore every account.
	HealthModelChanged(ctx context.Context, version int64)
}

// Deps are what the API serves.
type Deps struct {
	Accounts *account.Store
	Keys     *apikey.Store
	Audit    *audit.Log
	Clock    clock.Clock
	Log      *slog.Logger
	Segments *segment.Store
	Engine   *segment.Engine
	// Campaigns, Outbox, Sender and Unsubscribes serve campaigns and mail.
	Campaigns    *campaign.Store
	Enroller     *campaign.Enroller
	Outbox       *delivery.Outbox
	Sender       *delivery.Sender
	Unsubscribes *delivery.Unsubscribes
	Tracker      *engagement.Tracker
	Health       *health.Service
	// Monitor is the asynq queue monitor, served to admins (may be nil).
	Monitor http.Handler
	// WebhookSecret signs inbound webhooks (TEND_WEBHOOK_SECRET).
	WebhookSecret []byte
	Signals       Signals                         // may be nil
	Ready         func(ctx context.Context) error // readiness of PostgreSQL and Redis
	// Registry receives the API's metrics; nil makes a private one.
	Registry *prometheus.Registry
}

// Options tune the API.
type Options struct {
	BodyLimit int64   // bytes
	RateLimit float64 // requests per second per key
	RateBurst int
	// TrustedProxies are the networks whose X-Forwarded-For is believed
	// (see config.Config.TrustedProxies); none: the peer's address is the
	// client's.
	TrustedProxies []*net.IPNet
}

// Server is the HTTP API.
type Server struct {
	deps    Deps
	opts    Options
	echo    *echo.Echo
	limiter *keyLimiter
	metrics *httpMetrics
}

// New builds the API with every route registered.
func New(deps Deps, opts Options) *Server {
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
		deps.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s := &Server{deps: deps, opts: opts, limiter: newKeyLimiter(opts.RateLimit, opts.RateBurst), metrics: newHTTPMetrics(deps.Registry)}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	e.IPExtractor = ipExtractor(opts.TrustedProxies)
	// Accept a caller's id only when it looks like one.
	e.Use(dropOddRequestID, middleware.RequestIDWithConfig(middleware.RequestIDConfig{Generator: newRequestID}))
	e.Use(s.recoverPanic, s.observe)
	e.Use(middleware.Decompress())
	e.Use(middleware.BodyLimit(strconv.FormatInt(opts.BodyLimit, 10)))
	s.echo = e
	s.routes()
	return s
}

// ipExtractor finds a request's client address: the peer's, or, from a
// trusted proxy, the last address in X-Forwarded-For that is not a trusted
// proxy's. echo's default believes the header from anyone.
func ipExtractor(trusted []*net.IPNet) echo.IPExtractor {
	if len(trusted) == 0 {
		return echo.ExtractIPDirect()
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, n := range trusted {
		opts = append(opts, echo.TrustIPRange(n))
	}
	return echo.ExtractIPFromXFFHeader(opts...)
}

// Handler returns the API as an http.Handler.
func (s *Server) Handler() http.Handler { return s.echo }

// Echo exposes the router, for mounting more routes in later wiring.
func (s *Server) Echo() *echo.Echo { return s.echo }

func (s *Server) routes() {
	e := s.echo
	e.GET("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.deps.Registry, promhttp.HandlerOpts{})))

	v1 := e.Group("/v1", s.authenticate(bearerKey), s.rateLimit, s.auditMutations)
	const (
		ingest    = apikey.Ingest
		marketing = apikey.Marketing
		csm       = apikey.CSM
		product   = apikey.Product
	)
	s.handle(v1, http.MethodPost, "/accounts", s.postAccounts, ingest)
	s.handle(v1, http.MethodGet, "/accounts/:id", s.getAccount, marketing, csm)
	s.handle(v1, http.MethodPost, "/contacts", s.postContacts, ingest)
	s.handle(v1, http.MethodGet, "/contacts/:id", s.getContact, marketing, csm)
	s.handle(v1, http.MethodPost, "/csms", s.postCSMs, ingest)
	s.handle(v1, http.MethodPost, "/events", s.postEvents, ingest)
	s.handle(v1, http.MethodPost, "/metrics", s.postMetrics, ingest)
	s.handle(v1, http.MethodGet, "/accounts/:id/segments", s.accountSegments, marketing, csm)
	s.handle(v1, http.MethodGet, "/accounts/:id/health", s.accountHealth, marketing, csm)
	s.handle(v1, http.MethodGet, "/health/model", s.getHealthModel, marketing, csm)
	s.handle(v1, http.MethodPut, "/health/model", s.putHealthModel)
	s.handle(v1, http.MethodGet, "/health/summary", s.healthSummary, marketing, csm)
	s.handle(v1, http.MethodGet, "/segments", s.listSegments, marketing, product)
	s.handle(v1, http.MethodPost, "/segments", s.createSegment, marketing)
	s.handle(v1, http.MethodPost, "/segments/preview", s.previewSegment, marketing, product)
	s.handle(v1, http.MethodGet, "/segments/:name", s.getSegment, marketing, product)
	s.handle(v1, http.MethodPut, "/segments/:name", s.updateSegment, marketing)
	s.handle(v1, http.MethodDelete, "/segments/:name", s.deleteSegment, marketing)
	s.handle(v1, http.MethodGet, "/segments/:name/members", s.segmentMembers, marketing, product)
	s.handle(v1, http.MethodGet, "/campaigns", s.listCampaigns, marketing, csm, product)
	s.handle(v1, http.MethodPost, "/campaigns", s.postCampaign, marketing, product)
	s.handle(v1, http.MethodGet, "/campaigns/:name", s.getCampaign, marketing, csm, product)
	for _, action := range []string{"activate", "pause", "archive"} {
		s.handle(v1, http.MethodPost, "/campaigns/:name/"+action, s.campaignAction(action), marketing, product)
	}
	s.handle(v1, http.MethodPost, "/campaigns/:name/preview", s.previewCampaign, marketing, csm, product)
	s.handle(v1, http.MethodPost, "/campaigns/:name/test", s.testCampaign, marketing, csm, product)
	s.handle(v1, http.MethodGet, "/campaigns/:name/stats", s.campaignStats, marketing, csm, product)
	s.handle(v1, http.MethodPut, "/templates/*", s.putTemplate, marketing, product)
	s.handle(v1, http.MethodGet, "/templates/*", s.getTemplate, marketing, csm, product)
	s.handle(v1, http.MethodGet, "/messages", s.listMessages, marketing)
	s.handle(v1, http.MethodPost, "/messages/:id/resolve", s.resolveMessage)
	s.handle(v1, http.MethodGet, "/contacts/:id/messages", s.contactMessages, marketing, csm)
	s.handle(v1, http.MethodPost, "/accounts/:id/hold", s.placeHold, csm)
	s.handle(v1, http.MethodDelete, "/accounts/:id/hold", s.releaseHold, csm)
	s.handle(v1, http.MethodGet, "/sending", s.getSendSwitch, marketing, csm, product)
	s.handle(v1, http.MethodPut, "/sending", s.putSendSwitch)
	s.handle(v1, http.MethodGet, "/nudges", s.listNudges, product)
	s.handle(v1, http.MethodPost, "/nudges/:id/events", s.nudgeEvent, product)
	s.handle(v1, http.MethodGet, "/audit", s.getAudit)
	s.handle(v1, http.MethodGet, "/keys", s.listKeys)
	s.handle(v1, http.MethodPost, "/keys", s.createKey)
	s.handle(v1, http.MethodDelete, "/keys/:id", s.revokeKey)

	// Tracking and unsubscribe links: no key, the signed token is the authority.
	e.GET("/t/o/:token", s.trackOpen)
	e.GET("/t/c/:token", s.trackClick)
	if s.deps.Monitor != nil {
		e.Any(MonitorPath, s.monitor())
		e.Any(MonitorPath+"/*", s.monitor())
	}
	// Inbound webhooks: the X-Tend-Signature HMAC is the authority.
	e.POST("/v1/webhooks/reply", s.replyWebhook)
	e.POST("/v1/webhooks/bounce", s.bounceWebhook)
	e.GET("/u/:token", s.unsubscribeGet)
	e.POST("/u/:token", s.unsubscribePost)

	seg := e.Group("/segment/v1", s.authenticate(segmentWriteKey), s.rateLimit, s.auditMutations)
	s.handle(seg, http.MethodPost, "/batch", s.segmentBatch, ingest)
	for _, typ := range []string{"identify", "group", "track"} {
		s.handle(seg, http.MethodPost, "/"+typ, s.segmentOne(typ), ingest)
	}

	// A group's middleware (the key check) runs for paths it does not route
	// too, through a catch-all; that catch-all would also answer a known
	// path asked with the wrong method, as not found.
	for _, g := range []*echo.Group{v1, seg} {
		g.RouteNotFound("", s.notRouted)
		g.RouteNotFound("/*", s.notRouted)
	}
}

// notRouted answers a request no route of its method matched: 405 with the
// methods that path has (Allow; OPTIONS answers them), or 404 when it has
// none.
func (s *Server) notRouted(c echo.Context) error {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if m == c.Request().Method {
			continue
		}
		probe := s.echo.NewContext(c.Request(), nil)
		s.echo.Router().Find(m, echo.GetPath(c.Request()), probe)
		// Another method finds a route of its own, not this catch-all.
		if p := probe.Path(); p != "" && p != c.Path() {
			allow = append(allow, m)
		}
	}
	if len(allow) == 0 {
		return echo.ErrNotFound
	}
	// As echo answers for the paths it routes itself.
	c.Response().Header().Set(echo.HeaderAllow, "OPTIONS, "+strings.Join(allow, ", "))
	if c.Request().Method == http.MethodOptions {
		return c.NoContent(http.StatusNoContent)
	}
	return echo.ErrMethodNotAllowed
}

// handle registers a route that the given roles (and admin, always) may use,
// with parameters that are text.
func (s *Server) handle(g *echo.Group, method, path string, h echo.HandlerFunc, roles ...apikey.Role) {
	allowed := map[apikey.Role]bool{apikey.Admin: true}
	for _, r := range roles {
		allowed[r] = true
	}
	g.Add(method, path, h, requireRole(allowed), textParams)
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	if s.deps.Ready == nil {
		return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
	}
	if err := s.deps.Ready(ctx); err != nil {
		s.deps.Log.Warn("not ready", "err", err)
		// Say which dependency is down (when the domain error names it),
		// never the driver's text.
		msg := "a dependency (PostgreSQL or Redis) is not reachable; see the server log"
		var de *errs.Error
		if errors.As(err, &de) {
			msg = de.Message
		}
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "error": map[string]string{"code": "not_ready", "message": msg}})
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

// Serve listens on addr until ctx ends, then shuts down gracefully within timeout.
func (s *Server) Serve(ctx context.Context, addr string, timeout time.Duration) error {
	return ListenAndServe(ctx, addr, s.echo, timeout, s.deps.Log)
}

// ListenAndServe serves h on addr until ctx ends, then shuts down
// gracefully: it stops accepting and waits up to timeout for requests in
// flight. The API and a worker's metrics listener both run this way.
func ListenAndServe(ctx context.Context, addr string, h http.Handler, timeout time.Duration, log *slog.Logger) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("http: listening", "addr", addr)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *Server) changed(ctx context.Context, ids []int64) {
	if s.deps.Signals != nil && len(ids) > 0 {
		s.deps.Signals.AccountsChanged(ctx, ids)
	}
}
