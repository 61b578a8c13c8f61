// Package app wires Tend together by hand: it opens PostgreSQL and Redis,
// migrates, chooses the clock, builds the stores, the HTTP API and the worker,
// and runs them with a fixed shutdown order. cmd/tend and the end-to-end tests
// use the same wiring.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/jmoiron/sqlx"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/audit"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/config"
	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/engagement"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/health"
	"github.com/tendhq/tend/internal/httpapi"
	"github.com/tendhq/tend/internal/jobs"
	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/render"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/token"
)

// App is one Tend process's wiring.
type App struct {
	Cfg      config.Config
	Log      *slog.Logger
	DB       *sqlx.DB
	Redis    asynq.RedisConnOpt
	Clock    clock.Clock
	Accounts *account.Store
	Keys     *apikey.Store
	Audit    *audit.Log
	Registry *prometheus.Registry
	Segments *segment.Store
	Engine   *segment.Engine
	Jobs     *jobs.Client

	Campaigns    *campaign.Store
	Enroller     *campaign.Enroller
	Outbox       *delivery.Outbox
	Mailer       *delivery.Mailer
	Sender       *delivery.Sender
	Unsubscribes *delivery.Unsubscribes
	Tracker      *engagement.Tracker
	Health       *health.Service

	redis   *redis.Client
	shared  *clock.Shared
	metrics *jobs.Metrics
}

// Option changes how New wires the app.
type Option func(*App)

// WithClock replaces the clock (tests use a manual one).
func WithClock(c clock.Clock) Option { return func(a *App) { a.Clock = c } }

// New connects, migrates (when configured) and builds the stores.
func New(ctx context.Context, cfg config.Config, log *slog.Logger, opts ...Option) (*App, error) {
	a := &App{Cfg: cfg, Log: log}
	for _, o := range opts {
		o(a)
	}
	if cfg.MigrateOnStart {
		if _, err := postgres.EnsureDatabase(ctx, cfg.DatabaseURL); err != nil {
			return nil, err
		}
	}
	db, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	a.DB = db
	if cfg.MigrateOnStart {
		res, err := postgres.Migrate(ctx, db.DB)
		if err != nil {
			db.Close()
			return nil, err
		}
		for _, r := range res {
			log.Info("migrated", "version", r.Source.Version, "file", r.Source.Path, "took", r.Duration)
		}
	}
	redisOpt, err := asynq.ParseRedisURI(cfg.RedisURL)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("app: TEND_REDIS_URL: %w", err)
	}
	a.Redis = redisOpt
	ropt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("app: TEND_REDIS_URL: %w", err)
	}
	a.redis = redis.NewClient(ropt)

	if a.Clock == nil {
		if cfg.DemoClock {
			sc, err := clock.NewShared(ctx, db.DB)
			if err != nil {
				a.Close()
				return nil, err
			}
			a.Clock, a.shared = sc, sc
		} else {
			a.Clock = clock.System{}
		}
	}
	a.Registry = prometheus.NewRegistry()
	a.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.Accounts = account.NewStore(db, a.Clock, account.IngestConcurrency(a.Cfg.IngestConcurrency))
	a.Keys = apikey.NewStore(db, a.Clock)
	a.Audit = audit.NewLog(db)
	a.Segments = segment.NewStore(db, a.Clock)
	a.Health = health.NewService(db, a.Clock)
	a.Engine = segment.NewEngine(db, a.Clock, log)
	a.Engine.Health = a.Health
	a.Jobs = jobs.NewClient(a.Redis, log)
	if err := a.wireCampaigns(); err != nil {
		a.Close()
		return nil, err
	}
	a.metrics = jobs.NewMetrics(a.Registry)
	a.Registry.MustRegister(newPipeline(a.Outbox, a.Engine, log))
	return a, nil
}

// wireCampaigns builds campaigns, rendering and delivery.
func (a *App) wireCampaigns() error {
	cfg := a.Cfg
	tz, _ := time.LoadLocation(cfg.DefaultTimezone)
	signer := token.NewSigner([]byte(cfg.Secret))
	a.Campaigns = campaign.NewStore(a.DB, a.Clock, render.Checker{})
	a.Enroller = campaign.NewEnroller(a.DB, a.Clock, a.Log, tz)
	a.Outbox = delivery.NewOutbox(a.DB, a.Clock)
	a.Unsubscribes = delivery.NewUnsubscribes(a.DB, a.Clock, signer)
	a.Tracker = engagement.NewTracker(a.DB, a.Clock, signer)
	var dkim *delivery.DKIM
	if cfg.DKIMKeyFile != "" {
		keyPEM, err := os.ReadFile(cfg.DKIMKeyFile)
		if err != nil {
			return fmt.Errorf("app: TEND_DKIM_KEY_FILE: %w", err)
		}
		if dkim, err = delivery.NewDKIM(cfg.DKIMDomain, cfg.DKIMSelector, keyPEM); err != nil {
			return fmt.Errorf("app: TEND_DKIM_KEY_FILE %q: %w", cfg.DKIMKeyFile, err)
		}
		name, record := dkim.DNSRecord()
		a.Log.Info("signing campaign mail with DKIM", "domain", cfg.DKIMDomain, "selector", cfg.DKIMSelector,
			"algorithm", dkim.Algorithm(), "txt_name", name, "txt_record", record)
	}
	mailer, err := delivery.NewMailer(cfg.SMTPURL, delivery.MailerOptions{Connections: cfg.SMTPConnections, Timeout: cfg.SMTPTimeout})
	if err != nil {
		return fmt.Errorf("app: TEND_SMTP_URL: %w", err)
	}
	a.Mailer = mailer
	pub, _ := url.Parse(cfg.PublicURL)
	renderer := &render.Renderer{Signer: signer, PublicURL: strings.TrimRight(cfg.PublicURL, "/"), PostalAddress: cfg.PostalAddress}
	a.Sender = delivery.NewSender(a.DB, a.Clock, a.Log, a.Outbox, a.Enroller, renderer, mailer, delivery.SenderOptions{
		TeamSender: cfg.TeamSender, SendingDomain: cfg.SendingDomain, InboundDomain: cfg.InboundDomain,
		MessageIDDomain: pub.Hostname(),
		Caps:            delivery.Caps{PerContact: cfg.CapPerContact, PerAccount: cfg.CapPerAccount, Window: cfg.CapWindow, MaxDelay: cfg.MaxDelay},
		DKIM:            dkim,
	})
	return nil
}

// Ready reports whether PostgreSQL and Redis answer.
func (a *App) Ready(ctx context.Context) error {
	if err := a.DB.PingContext(ctx); err != nil {
		return &errs.Error{Kind: errs.Unavailable, Code: "not_ready", Message: "PostgreSQL is not reachable", Err: err}
	}
	if err := a.redis.Ping(ctx).Err(); err != nil {
		return &errs.Error{Kind: errs.Unavailable, Code: "not_ready", Message: "Redis is not reachable", Err: err}
	}
	return nil
}

// API builds the HTTP API.
func (a *App) API() *httpapi.Server {
	trusted, _ := a.Cfg.TrustedNets() // validated by config.Load
	return httpapi.New(httpapi.Deps{
		Accounts: a.Accounts, Keys: a.Keys, Audit: a.Audit, Clock: a.Clock, Log: a.Log,
		Segments: a.Segments, Engine: a.Engine, Signals: a.Jobs,
		Campaigns: a.Campaigns, Enroller: a.Enroller, Outbox: a.Outbox, Sender: a.Sender, Unsubscribes: a.Unsubscribes, Tracker: a.Tracker,
		Health: a.Health, WebhookSecret: []byte(a.Cfg.WebhookSecret),
		Monitor: asynqmon.New(asynqmon.Options{RootPath: httpapi.MonitorPath, RedisConnOpt: a.Redis, ReadOnly: true}),
		Ready:   a.Ready, Registry: a.Registry,
	}, httpapi.Options{BodyLimit: a.Cfg.BodyLimit, RateLimit: a.Cfg.RateLimit, RateBurst: a.Cfg.RateBurst,
		TrustedProxies: trusted})
}

// Worker builds the asynq worker with every handler.
func (a *App) Worker() *jobs.Worker {
	seg := &jobs.SegmentHandlers{Engine: a.Engine, Client: a.Jobs, Log: a.Log}
	camp := &jobs.CampaignHandlers{Enroller: a.Enroller, Sender: a.Sender, Client: a.Jobs, Metrics: a.metrics, Log: a.Log}
	return jobs.NewWorker(a.Redis, a.Log, jobs.WorkerOptions{
		Concurrency: a.Cfg.WorkerConcurrency, ShutdownTimeout: a.Cfg.ShutdownTimeout,
	}, func(mux *asynq.ServeMux) {
		seg.Register(mux)
		camp.Register(mux)
	})
}

// Scheduler builds the periodic scheduler and signal sweeper.
func (a *App) Scheduler() *jobs.Scheduler {
	sweep := &jobs.DeliverySweep{Outbox: a.Outbox, Enroller: a.Enroller, Client: a.Jobs, Log: a.Log,
		Lease: a.Cfg.SendLease, RequeueAfter: time.Minute, MaxDelay: a.Cfg.MaxDelay}
	stalled := &jobs.StalledDrips{Enroller: a.Enroller, Clock: a.Clock, Log: a.Log,
		Every: time.Minute, Batch: 1000, Budget: 500 * time.Millisecond}
	retention := &jobs.EventRetention{Accounts: a.Accounts, Clock: a.Clock, Log: a.Log,
		Retention: a.Cfg.EventRetention, Every: time.Hour, Batch: 10_000, Budget: time.Second}
	rollups := &jobs.RollupRetention{Accounts: a.Accounts, Clock: a.Clock, Log: a.Log,
		Retention: a.Cfg.RollupRetention, Every: 24 * time.Hour, Batch: 200, Rows: 10_000, Budget: time.Second}
	return &jobs.Scheduler{
		Client: a.Jobs, Engine: a.Engine, Clock: a.Clock, Log: a.Log,
		FullPass: a.Cfg.FullPassInterval, Sweep: a.Cfg.SweepInterval,
		Also: []func(context.Context) error{sweep.Run, stalled.Run, retention.Run, rollups.Run},
	}
}

// Modes of Run.
const (
	ModeServe  = "serve"
	ModeWorker = "worker"
	ModeAll    = "all"
)

// Run runs the API, the worker, or both, until ctx ends. Shutdown order: the
// HTTP server stops accepting and drains, the worker stops taking tasks and
// finishes running ones, then connections close (in Close).
func (a *App) Run(ctx context.Context, mode string) error {
	if mode != ModeServe && mode != ModeWorker && mode != ModeAll {
		return fmt.Errorf("app: unknown mode %q", mode)
	}
	g, gctx := errgroup.WithContext(ctx)
	if a.shared != nil {
		g.Go(func() error { a.shared.Follow(gctx, a.Log); return nil })
	}
	if mode == ModeServe || mode == ModeAll {
		api := a.API()
		g.Go(func() error { return api.Serve(gctx, a.Cfg.HTTPAddr, a.Cfg.ShutdownTimeout) })
	}
	if mode == ModeWorker && a.Cfg.MetricsAddr != "" {
		g.Go(func() error { return a.serveMetrics(gctx, a.Cfg.MetricsAddr) })
	}
	if mode == ModeWorker || mode == ModeAll {
		w := a.Worker()
		g.Go(func() error { return w.Run(gctx) })
		sch := a.Scheduler()
		g.Go(func() error { return sch.Run(gctx) })
	}
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// Close releases connections.
func (a *App) Close() error {
	var errs []error
	if a.Tracker != nil {
		errs = append(errs, a.Tracker.Close())
	}
	if a.Jobs != nil {
		errs = append(errs, a.Jobs.Close())
	}
	if a.Mailer != nil {
		errs = append(errs, a.Mailer.Close())
	}
	if a.redis != nil {
		errs = append(errs, a.redis.Close())
	}
	if a.DB != nil {
		errs = append(errs, a.DB.Close())
	}
	return errors.Join(errs...)
}

// DefaultGCPercent is the garbage collector's target for Tend's processes
// when GOGC is not set: twice the Go default. Their live heap is small (tens
// of megabytes: the worker streams, a batch at a time) and allocation-heavy
// (rendering, MIME), so at the default the collector took about a tenth of
// the send pipeline's CPU; the heap it lets grow is still small. GOGC (and
// GOMEMLIMIT) set in the environment win.
const DefaultGCPercent = 200

// TuneGC sets DefaultGCPercent unless GOGC is set, and returns what puts
// the previous setting back. The commands that run Tend's services call it,
// and so do the benchmarks, which measure what runs.
func TuneGC() (restore func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	prev := debug.SetGCPercent(DefaultGCPercent)
	return func() { debug.SetGCPercent(prev) }
}
