package jobs_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/jobs"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/testsvc"
)

var t0 = time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)

type pool struct {
	t        *testing.T
	db       *testsvc.DB
	redis    *testsvc.Redis
	clock    *clock.Manual
	accounts *account.Store
	segments *segment.Store
	client   *jobs.Client
}

// startPool runs a real worker and scheduler on private PostgreSQL and Redis
// databases until the test ends.
func startPool(t *testing.T) *pool {
	t.Helper()
	t.Parallel()
	db := testsvc.NewDB(t)
	rd := testsvc.NewRedis(t)
	clk := clock.NewManual(t0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ropt := asynq.RedisClientOpt{Addr: rd.Opt.Addr, DB: rd.Opt.DB}
	engine := segment.NewEngine(db.DB, clk, log)
	client := jobs.NewClient(ropt, log)
	h := &jobs.SegmentHandlers{Engine: engine, Client: client, Log: log}
	w := jobs.NewWorker(ropt, log, jobs.WorkerOptions{Concurrency: 4, ShutdownTimeout: 5 * time.Second}, h.Register)
	sch := &jobs.Scheduler{Client: client, Engine: engine, Clock: clk, Log: log, FullPass: time.Hour, Sweep: 200 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { w.Run(ctx); done <- struct{}{} }()
	go func() { sch.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() {
		cancel()
		<-done
		<-done
		client.Close()
	})
	return &pool{t: t, db: db, redis: rd, clock: clk, accounts: account.NewStore(db.DB, clk), segments: segment.NewStore(db.DB, clk), client: client}
}

// eventually polls cond until it holds or the deadline passes.
func (p *pool) eventually(what string, within time.Duration, cond func() bool) time.Duration {
	p.t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Fatalf("%s: not within %s", what, within)
	return 0
}

func (p *pool) member(seg, acc string) bool {
	var n int
	err := p.db.Get(&n, `
		SELECT count(*) FROM segment_membership m JOIN segment s ON s.id = m.segment_id JOIN account a ON a.id = m.account_id
		WHERE s.name = $1 AND a.external_id = $2 AND m.exited_at IS NULL`, seg, acc)
	if err != nil {
		p.t.Fatal(err)
	}
	return n == 1
}

func ptr[T any](v T) *T { return &v }

func TestThePoolKeepsMembershipRight(t *testing.T) {
	p := startPool(t)
	ctx := context.Background()
	signup := t0.AddDate(0, 0, -90)
	changed, err := p.accounts.UpsertAccounts(ctx, []account.AccountInput{
		{ID: "a", Plan: ptr("pro"), SignupAt: &signup},
		{ID: "b", Plan: ptr("pro"), SignupAt: &signup},
	})
	if err != nil {
		t.Fatal(err)
	}
	p.client.AccountsChanged(ctx, changed)

	// A new segment is built in the background and says when it is complete.
	seg, err := p.segments.Create(ctx, segment.Input{Name: "active", Predicate: `logins_7d >= 1`})
	if err != nil {
		t.Fatal(err)
	}
	p.client.SegmentChanged(ctx, seg.ID, seg.Generation)
	p.eventually("segment built", 10*time.Second, func() bool {
		s, _ := p.segments.Get(ctx, "active")
		return s.Status == segment.StatusReady
	})

	// On change: a login shows as a membership change within seconds.
	res, err := p.accounts.IngestEvents(ctx, []account.EventInput{{AccountID: "a", Name: "login", Timestamp: ptr(t0)}}, false)
	if err != nil {
		t.Fatal(err)
	}
	p.client.AccountsChanged(ctx, res.Changed)
	took := p.eventually("a enters on change", 5*time.Second, func() bool { return p.member("active", "a") })
	t.Logf("on-change membership latency: %s", took)

	// Redis loses everything, and a change's signal is lost with it: the
	// sweep finds the dirty account in PostgreSQL all the same.
	rc := redis.NewClient(p.redis.Opt)
	if err := rc.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if _, err := p.accounts.IngestEvents(ctx, []account.EventInput{{AccountID: "b", Name: "login", Timestamp: ptr(t0)}}, false); err != nil {
		t.Fatal(err)
	}
	p.eventually("b enters without a signal", 10*time.Second, func() bool { return p.member("active", "b") })

	// Time alone: eight days later nobody logged in this week. The next
	// full-pass bucket catches it and both exit with reason time.
	p.clock.Advance(8 * 24 * time.Hour)
	p.eventually("exits after time passes", 10*time.Second, func() bool { return !p.member("active", "a") && !p.member("active", "b") })
	var reasons []string
	p.db.Select(&reasons, `SELECT DISTINCT reason FROM segment_event WHERE kind = 'exit'`)
	if len(reasons) != 1 || reasons[0] != segment.ReasonTime {
		t.Fatalf("exit reasons = %v, want [time]", reasons)
	}
}
