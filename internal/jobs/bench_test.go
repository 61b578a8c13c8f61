package jobs_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jmoiron/sqlx"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/app"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/health"
	"github.com/tendhq/tend/internal/jobs"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/testsvc"
)

// Shape of the full-pass benchmark. TEND_BENCH_ACCOUNTS and
// TEND_BENCH_CONCURRENCY override the first two. The engine scores health in
// every evaluation, as app.New wires it in production; TEND_BENCH_HEALTH=0
// runs without. TEND_BENCH_CPUPROFILE=DIR writes a CPU profile of the worker
// pool per pass (DIR/<pass>.pprof).
const (
	benchDefaultAccounts    = 1_000_000
	benchDefaultConcurrency = 4 // asynq workers; 4 beat 2 on a 2-core machine (see BenchmarkSegmentFullPass)
	benchPassTimeout        = 10 * time.Minute
	benchOnChangeSamples    = 100
)

// benchSegments are 20 segments of the kinds customers write: plain columns,
// usage windows, days since, utilisation, feature and event maps, traits,
// metrics and the health score.
var benchSegments = []segment.Input{
	{Name: "enterprise-high-mrr", Predicate: `plan == "enterprise" && mrr >= 10000`},
	{Name: "paid-pro-up", Predicate: `plan in ["pro", "enterprise"]`},
	{Name: "smb-small", Predicate: `tier == "smb" && seats <= 5`},
	{Name: "eu-enterprise", Predicate: `region == "eu" && tier == "enterprise"`},
	{Name: "active-7d", Predicate: `logins_7d >= 3`},
	{Name: "dormant-30d", Predicate: `logins_30d == 0`},
	{Name: "paid-going-quiet", Predicate: `plan != "free" && days_since_last_login >= 14`},
	{Name: "churn-risk", Predicate: `mrr > 0 && days_since(last_login_at) >= 60`},
	{Name: "low-utilization", Predicate: `seats >= 10 && license_utilization < 0.3`},
	{Name: "upsell-full-seats", Predicate: `plan in ["starter", "pro"] && license_utilization >= 0.9`},
	{Name: "no-reports", Predicate: `plan in ["pro", "enterprise"] && features["reports"] == 0`},
	{Name: "power-exporters", Predicate: `features["exports"] >= 5`},
	{Name: "inviters", Predicate: `events["invite_sent"] >= 1 && logins_30d >= 2`},
	{Name: "retail", Predicate: `traits.industry == "retail"`},
	{Name: "large-companies", Predicate: `traits.employees > 1000 && plan != "enterprise"`},
	{Name: "detractors", Predicate: `nps >= 0 && nps <= 6`},
	{Name: "promoters", Predicate: `nps >= 9 && open_tickets == 0`},
	{Name: "support-heavy", Predicate: `open_tickets >= 3`},
	{Name: "unhealthy-paying", Predicate: `health_score < 60 && mrr >= 1000`},
	{Name: "trial-ending", Predicate: `plan == "free" && days_since_signup >= 12 && days_since_signup <= 14`},
}

// warnings collects what the worker pool logs at warn and above (a failed
// task, say): a pass that needed retries is not a pass to report.
type warnings struct {
	mu    sync.Mutex
	lines []string
}

func (w *warnings) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, strings.TrimSpace(string(p)))
	return len(p), nil
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.lines
	w.lines = nil
	return out
}

// memKB reads VmRSS and VmHWM (peak RSS) of this process, in kB.
func memKB() (rss, hwm int64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		for _, k := range []string{"VmRSS:", "VmHWM:"} {
			if strings.HasPrefix(line, k) {
				n, _ := strconv.ParseInt(strings.Fields(line[len(k):])[0], 10, 64)
				if k == "VmRSS:" {
					rss = n
				} else {
					hwm = n
				}
			}
		}
	}
	return rss, hwm
}

// resetPeakRSS resets VmHWM to the current RSS (Linux >= 4.0), so each pass
// gets its own peak; it reports whether that worked.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

func mb(kb int64) float64 { return float64(kb) / 1024 }

type passResult struct {
	name     string
	wall     time.Duration
	peakKB   int64 // VmHWM after the pass (since the reset before it, if resetOK)
	resetOK  bool
	enters   int64 // segment_event rows the pass wrote
	exits    int64
	accounts int
	goCPU    time.Duration // user+system CPU of this process (the worker pool) during the pass
	pgCPU    time.Duration // CPU of this database's PostgreSQL backends during the pass; -1 if unreadable
}

func (r passResult) rate() float64 { return float64(r.accounts) / r.wall.Seconds() }

// benchRig is a worker pool on a private database and Redis.
type benchRig struct {
	b        *testing.B
	db       *testsvc.DB
	clock    *clock.Manual
	client   *jobs.Client
	inspect  *asynq.Inspector
	engine   *segment.Engine
	accounts *account.Store
	segments *segment.Store
	warn     *warnings
	n        int
}

// BenchmarkSegmentFullPass seeds TEND_BENCH_ACCOUNTS accounts (default 1M)
// with usage, metrics and 20 segments, and times full passes through the real
// worker pool (asynq on Redis, jobs.SegmentHandlers):
//
//   - build: the first pass, at noon on day D-1, which builds every
//     segment's membership (millions of entries) from a cold profile cache;
//   - eve:   the last pass of day D-1, at 23:55 (the default interval
//     before midnight): the health scores whose recency moved since noon
//     (a last login's whole days ticked over) are rescored;
//   - cold:  the first pass of day D, at midnight, five minutes later: the
//     cached profiles whose windows lost a data point overnight are
//     recomputed, with their scores, and their accounts re-evaluated; the
//     rest hold;
//   - warm:  a later pass the same day at the same clock (timed as ns/op):
//     every profile comes from account_profile, and nothing changed;
//   - hour:  a pass an hour later the same day, catching up with an hour
//     in which the whole days since signup or last login of some accounts
//     ticked over (and their scores' recency moved);
//   - next:  the pass after that at the default interval, five minutes
//     later: the steady state a deployment runs in.
//
// It reports wall time and accounts/s per pass, the test process's RSS
// (baseline and peak per pass; PostgreSQL's memory is separate and not
// counted), and the on-change latency (ingest a login + signal, until the
// membership row closes) at p50/p95 with the pool idle. Member counts are
// checked against direct SQL and engine.Preview so a broken pass cannot look
// fast.
func BenchmarkSegmentFullPass(b *testing.B) {
	n := testsvc.EnvInt(b, "TEND_BENCH_ACCOUNTS", benchDefaultAccounts)
	conc := testsvc.EnvInt(b, "TEND_BENCH_CONCURRENCY", benchDefaultConcurrency)
	withHealth := os.Getenv("TEND_BENCH_HEALTH") != "0"
	defer app.TuneGC()() // as the tend command runs
	ctx := context.Background()
	day := t0.Truncate(24 * time.Hour) // midnight: cold and warm passes are on the same UTC day

	db := testsvc.NewDB(b)
	rd := testsvc.NewRedis(b)
	start := time.Now()
	seedBench(b, db.DB, n, day)
	seeded := time.Since(start)

	clk := clock.NewManual(day.Add(-12 * time.Hour))
	warn := &warnings{}
	log := slog.New(slog.NewTextHandler(warn, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ropt := asynq.RedisClientOpt{Addr: rd.Opt.Addr, DB: rd.Opt.DB}
	engine := segment.NewEngine(db.DB, clk, log)
	if withHealth {
		// As app.New wires it: production scores health in every evaluation.
		engine.Health = health.NewService(db.DB, clk)
	}
	client := jobs.NewClient(ropt, log)
	h := &jobs.SegmentHandlers{Engine: engine, Client: client, Log: log}
	w := jobs.NewWorker(ropt, log, jobs.WorkerOptions{Concurrency: conc, ShutdownTimeout: 10 * time.Second}, func(mux *asynq.ServeMux) {
		h.Register(mux)
		// The segment handlers also signal other work (campaign enrollment
		// when they write entries and exits); there are no campaigns here,
		// so those tasks are acknowledged and dropped.
		mux.Use(func(next asynq.Handler) asynq.Handler {
			return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
				if !strings.HasPrefix(t.Type(), "segment:") {
					return nil
				}
				return next.ProcessTask(ctx, t)
			})
		})
	})
	rig := &benchRig{b: b, db: db, clock: clk, client: client, inspect: asynq.NewInspector(ropt), engine: engine,
		accounts: account.NewStore(db.DB, clk), segments: segment.NewStore(db.DB, clk), warn: warn, n: n}
	for _, in := range benchSegments {
		if _, err := rig.segments.Create(ctx, in); err != nil {
			b.Fatal(err)
		}
	}

	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { w.Run(wctx); close(done) }()
	b.Cleanup(func() {
		stop()
		<-done
		client.Close()
		rig.inspect.Close()
	})
	rig.waitIdle()
	baseRSS, baseHWM := memKB()

	// Build: a full pass on the day before, which also marks every segment
	// built and every account evaluated.
	build := rig.pass("build", "bench:build")
	rig.vacuum()
	// Eve: the last pass of the day, catching up with the scores whose
	// recency moved since noon.
	clk.Set(day.Add(-5 * time.Minute))
	eve := rig.pass("eve", "bench:eve")
	rig.vacuum()
	// Cold: the first pass of the next day recomputes the profiles and
	// scores whose validity ran out at midnight (a window lost a data
	// point) or in the five minutes since, and re-evaluates those accounts.
	clk.Set(day)
	cold := rig.pass("cold", "bench:cold")
	var recomputed, rescored int
	if err := db.GetContext(ctx, &recomputed, `SELECT count(*) FROM account_profile WHERE day = $1::date`, day); err != nil {
		b.Fatal(err)
	}
	if err := db.GetContext(ctx, &rescored, `SELECT count(*) FROM account_health WHERE day = $1::date`, day); err != nil {
		b.Fatal(err)
	}
	rig.vacuum()
	// Warm: the steady state, timed as the benchmark's ns/op.
	var warm passResult
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		warm = rig.pass("warm", fmt.Sprintf("bench:warm:%d", i))
	}
	b.StopTimer()
	if warm.enters+warm.exits != 0 {
		b.Fatalf("warm pass: %d entries and %d exits on an unchanged day, want none", warm.enters, warm.exits)
	}
	// Hour: the next hourly pass, an hour later the same UTC day. Accounts
	// whose whole days since signup or last login ticked over meanwhile
	// move between the segments that read them (time entries and exits).
	clk.Set(day.Add(time.Hour))
	hour := rig.pass("hour", "bench:hour")
	var renewed int
	if err := db.GetContext(ctx, &renewed, `SELECT count(*) FROM segment_stamp WHERE evaluated_at = $1`, clk.Now()); err != nil {
		b.Fatal(err)
	}
	// Next: the pass after, at the default interval (TEND_FULL_PASS_INTERVAL,
	// 5 minutes): the steady state a deployment runs in.
	clk.Set(day.Add(time.Hour + 5*time.Minute))
	next := rig.pass("next", "bench:next")
	var renewedNext int
	if err := db.GetContext(ctx, &renewedNext, `SELECT count(*) FROM segment_stamp WHERE evaluated_at = $1`, clk.Now()); err != nil {
		b.Fatal(err)
	}
	rig.check(day)
	p50, p95, worst := rig.onChange(benchOnChangeSamples)

	b.ReportMetric(build.wall.Seconds(), "build_s")
	b.ReportMetric(eve.wall.Seconds(), "eve_s")
	b.ReportMetric(cold.wall.Seconds(), "cold_s")
	b.ReportMetric(cold.rate(), "cold_accounts/s")
	b.ReportMetric(warm.wall.Seconds(), "warm_s")
	b.ReportMetric(warm.rate(), "warm_accounts/s")
	b.ReportMetric(hour.wall.Seconds(), "hour_s")
	b.ReportMetric(next.wall.Seconds(), "next_s")
	b.ReportMetric(warm.goCPU.Seconds(), "warm_pool_cpu_s")
	if warm.pgCPU >= 0 {
		b.ReportMetric(warm.pgCPU.Seconds(), "warm_pg_cpu_s")
	}
	b.ReportMetric(mb(baseRSS), "rss_base_MB")
	b.ReportMetric(mb(max(build.peakKB, eve.peakKB, cold.peakKB, warm.peakKB, hour.peakKB, next.peakKB)), "rss_peak_MB")
	b.ReportMetric(float64(p50.Microseconds())/1000, "onchange_p50_ms")
	b.ReportMetric(float64(p95.Microseconds())/1000, "onchange_p95_ms")

	var sb strings.Builder
	fmt.Fprintf(&sb, "full pass over %d accounts x %d segments, health scoring %v, worker concurrency %d, batch %d, shard %d (seeded in %s)\n",
		n, len(benchSegments), withHealth, conc, engine.BatchSize, engine.ShardSize, seeded.Round(time.Second))
	for _, r := range []passResult{build, eve, cold, warm, hour, next} {
		peak := "peak RSS (cumulative, reset unsupported)"
		if r.resetOK {
			peak = "peak RSS"
		}
		pg := "n/a"
		if r.pgCPU >= 0 {
			pg = fmt.Sprintf("%.1f s", r.pgCPU.Seconds())
		}
		fmt.Fprintf(&sb, "  %-5s pass: %8.2f s  %9.0f accounts/s  %s %6.1f MB  CPU: pool %.1f s, PostgreSQL %s  (%d entries, %d exits)\n",
			r.name, r.wall.Seconds(), r.rate(), peak, mb(r.peakKB), r.goCPU.Seconds(), pg, r.enters, r.exits)
	}
	fmt.Fprintf(&sb, "  cold pass: %d profiles recomputed and %d health scores rescored (validity ran out at midnight or since the eve pass) of %d accounts\n", recomputed, rescored, n)
	fmt.Fprintf(&sb, "  hour pass: %d of %d accounts evaluated (stamps renewed: whole days since signup or last login ticked over); next pass: %d\n", renewed, n, renewedNext)
	fmt.Fprintf(&sb, "  RSS baseline before the passes: %.1f MB (VmHWM so far %.1f MB); test process only, PostgreSQL and Redis not counted\n", mb(baseRSS), mb(baseHWM))
	fmt.Fprintf(&sb, "  on-change latency (ingest a login + AccountsChanged -> membership closed), %d samples, pool idle: p50 %s  p95 %s  max %s\n",
		benchOnChangeSamples, p50.Round(time.Millisecond/10), p95.Round(time.Millisecond/10), worst.Round(time.Millisecond/10))
	fmt.Fprintf(&sb, "  target: every pass after the build <= 3 s and RSS < 300 MB: eve %s, cold (the day's first) %s, warm %s, hour %s, next %s, RSS %s",
		verdict(eve.wall <= 3*time.Second), verdict(cold.wall <= 3*time.Second),
		verdict(warm.wall <= 3*time.Second), verdict(hour.wall <= 3*time.Second), verdict(next.wall <= 3*time.Second),
		verdict(max(build.peakKB, eve.peakKB, cold.peakKB, warm.peakKB, hour.peakKB, next.peakKB) < 300*1024))
	b.Logf("%s", sb.String())
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// pass runs one full pass through the pool and waits for it to finish.
func (r *benchRig) pass(name, key string) passResult {
	r.b.Helper()
	ctx := context.Background()
	before := r.eventCounts()
	res := passResult{name: name, accounts: r.n}
	res.resetOK = resetPeakRSS()
	if dir := os.Getenv("TEND_BENCH_CPUPROFILE"); dir != "" {
		// One CPU profile of the worker pool per pass: DIR/<name>.pprof.
		f, err := os.Create(filepath.Join(dir, name+".pprof"))
		if err != nil {
			r.b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			r.b.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	cpu0, pg0 := processCPU(), r.pgCPU()
	start := time.Now()
	if err := r.client.StartFullPass(ctx, key); err != nil {
		r.b.Fatal(err)
	}
	for {
		var finished bool
		err := r.db.GetContext(ctx, &finished, `SELECT finished_at IS NOT NULL FROM segment_pass WHERE key = $1`, key)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			r.b.Fatal(err)
		}
		if finished {
			break
		}
		if lines := r.warn.take(); len(lines) > 0 {
			r.b.Fatalf("%s pass: the pool reported problems:\n%s", name, strings.Join(lines, "\n"))
		}
		if time.Since(start) > benchPassTimeout {
			r.b.Fatalf("%s pass did not finish within %s", name, benchPassTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.wall = time.Since(start)
	_, res.peakKB = memKB()
	res.goCPU = processCPU() - cpu0
	if pg1 := r.pgCPU(); pg0 >= 0 && pg1 >= 0 {
		res.pgCPU = pg1 - pg0
	} else {
		res.pgCPU = -1
	}
	r.waitIdle()
	if lines := r.warn.take(); len(lines) > 0 {
		r.b.Fatalf("%s pass: the pool reported problems:\n%s", name, strings.Join(lines, "\n"))
	}
	var open int
	if err := r.db.GetContext(ctx, &open, `
		SELECT count(*) FROM segment_pass_shard s JOIN segment_pass p ON p.id = s.pass_id
		WHERE p.key = $1 AND s.done_at IS NULL`, key); err != nil || open != 0 {
		r.b.Fatalf("%s pass finished with %d open shards (err %v)", name, open, err)
	}
	after := r.eventCounts()
	res.enters, res.exits = after[0]-before[0], after[1]-before[1]
	return res
}

// processCPU is this process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pgCPU sums the CPU time of the PostgreSQL backends connected to the test
// database, read from /proc (so only for a server on this machine); -1 when
// that is not possible. The pool keeps its connections open, so differences
// across a pass are the pass's database work.
func (r *benchRig) pgCPU() time.Duration {
	var pids []int
	if err := r.db.Select(&pids, `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`); err != nil || len(pids) == 0 {
		return -1
	}
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return -1
		}
		// Fields after the command name: state is the 1st, utime the 12th, stime the 13th.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			return -1
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

func (r *benchRig) eventCounts() [2]int64 {
	var c struct {
		Enters int64 `db:"enters"`
		Exits  int64 `db:"exits"`
	}
	if err := r.db.Get(&c, `
		SELECT count(*) FILTER (WHERE kind = 'enter') AS enters, count(*) FILTER (WHERE kind = 'exit') AS exits
		FROM segment_event`); err != nil {
		r.b.Fatal(err)
	}
	return [2]int64{c.Enters, c.Exits}
}

// waitIdle waits until no task is pending or running in any queue.
func (r *benchRig) waitIdle() {
	r.b.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		busy := false
		for _, q := range []string{jobs.QueueCritical, jobs.QueueDefault, jobs.QueueBulk} {
			info, err := r.inspect.GetQueueInfo(q)
			if err != nil {
				continue // the queue was never used
			}
			if info.Pending+info.Active+info.Scheduled+info.Retry > 0 {
				busy = true
			}
		}
		if !busy {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.b.Fatal("the worker pool did not go idle within a minute")
}

// vacuum stands in for autovacuum between hourly passes: a pass rewrites
// many rows (memberships, account_profile), and timing the next pass against
// a table full of dead tuples would measure the vacuum schedule, not Tend.
func (r *benchRig) vacuum() {
	if _, err := r.db.Exec(`VACUUM ANALYZE`); err != nil {
		r.b.Fatal(err)
	}
}

// check compares member counts with evaluations that do not go through the
// pass: direct SQL over the raw tables (independent of the profile cache and
// of expr) and engine.Preview (expr over the cache, no writes).
func (r *benchRig) check(day time.Time) {
	r.b.Helper()
	ctx := context.Background()
	members := func(name string) int {
		s, err := r.segments.Get(ctx, name)
		if err != nil {
			r.b.Fatal(err)
		}
		if s.Status != segment.StatusReady {
			r.b.Fatalf("segment %s is %s after full passes", name, s.Status)
		}
		return int(s.Members)
	}
	start30 := day.Truncate(24*time.Hour).AddDate(0, 0, -29)
	direct := []struct {
		name, query string
		args        []any
	}{
		{"enterprise-high-mrr", `SELECT count(*) FROM account WHERE plan = 'enterprise' AND mrr >= 10000`, nil},
		{"retail", `SELECT count(*) FROM account WHERE traits->>'industry' = 'retail'`, nil},
		{"dormant-30d", `
			SELECT count(*) FROM account a WHERE NOT EXISTS (
				SELECT 1 FROM usage_daily u WHERE u.account_id = a.id AND u.kind = 'e' AND u.key = 'login'
				AND u.day >= $1::date AND u.day <= $2::date)`, []any{start30, day}},
	}
	var report []string
	for _, d := range direct {
		var want int
		if err := r.db.GetContext(ctx, &want, d.query, d.args...); err != nil {
			r.b.Fatal(err)
		}
		got := members(d.name)
		if got != want || want == 0 {
			r.b.Fatalf("segment %s: %d members after the pass, direct SQL says %d", d.name, got, want)
		}
		report = append(report, fmt.Sprintf("%s=%d", d.name, got))
	}
	pv := segment.NewEngine(r.db.DB, r.clock, slog.New(slog.DiscardHandler))
	for _, name := range []string{"no-reports", "paid-going-quiet", "promoters", "churn-risk", "trial-ending"} {
		i := slices.IndexFunc(benchSegments, func(s segment.Input) bool { return s.Name == name })
		want, _, rtErrs, err := pv.Preview(ctx, benchSegments[i].Predicate, 0)
		if err != nil {
			r.b.Fatal(err)
		}
		got := members(name)
		if got != want || want == 0 || rtErrs != 0 {
			r.b.Fatalf("segment %s: %d members after the pass, Preview says %d (%d runtime errors)", name, got, want, rtErrs)
		}
		report = append(report, fmt.Sprintf("%s=%d", name, got))
	}
	var errCount int64
	if err := r.db.GetContext(ctx, &errCount, `SELECT coalesce(sum(error_count), 0) FROM segment`); err != nil || errCount != 0 {
		r.b.Fatalf("segments recorded %d runtime errors (err %v)", errCount, err)
	}
	var profiles int
	if err := r.db.GetContext(ctx, &profiles, `SELECT count(*) FROM account_profile WHERE day <= $1::date AND valid_until > $2`,
		day, r.clock.Now()); err != nil || profiles != r.n {
		r.b.Fatalf("%d cached profiles valid now, want %d (err %v)", profiles, r.n, err)
	}
	r.b.Logf("member counts agree with direct SQL and Preview: %s", strings.Join(report, " "))
}

// onChange measures, with the pool idle, how long a change takes to show in
// membership: a member of dormant-30d logs in (IngestEvents +
// AccountsChanged), and the clock runs until its membership row is closed.
func (r *benchRig) onChange(samples int) (p50, p95, worst time.Duration) {
	r.b.Helper()
	ctx := context.Background()
	seg, err := r.segments.Get(ctx, "dormant-30d")
	if err != nil {
		r.b.Fatal(err)
	}
	var picks []struct {
		ID         int64  `db:"id"`
		ExternalID string `db:"external_id"`
	}
	if err := r.db.SelectContext(ctx, &picks, `
		SELECT a.id, a.external_id FROM segment_membership m JOIN account a ON a.id = m.account_id
		WHERE m.segment_id = $1 AND m.exited_at IS NULL ORDER BY random() LIMIT $2`, seg.ID, samples); err != nil {
		r.b.Fatal(err)
	}
	if len(picks) < samples {
		r.b.Fatalf("only %d members of dormant-30d to sample", len(picks))
	}
	stmt, err := r.db.PreparexContext(ctx, `
		SELECT EXISTS (SELECT 1 FROM segment_membership WHERE segment_id = $1 AND account_id = $2 AND exited_at IS NULL)`)
	if err != nil {
		r.b.Fatal(err)
	}
	defer stmt.Close()
	now := r.clock.Now()
	took := make([]time.Duration, 0, samples)
	for i, p := range picks {
		r.waitIdle()
		start := time.Now()
		res, err := r.accounts.IngestEvents(ctx, []account.EventInput{{AccountID: p.ExternalID, ContactID: "u1", Name: account.EventLogin, Timestamp: &now}}, false)
		if err != nil {
			r.b.Fatal(err)
		}
		r.client.AccountsChanged(ctx, res.Changed)
		for {
			var in bool
			if err := stmt.GetContext(ctx, &in, seg.ID, p.ID); err != nil {
				r.b.Fatal(err)
			}
			if !in {
				break
			}
			if time.Since(start) > 30*time.Second {
				r.b.Fatalf("on-change sample %d (account %s): still a member of dormant-30d after 30 s", i, p.ExternalID)
			}
			time.Sleep(time.Millisecond)
		}
		took = append(took, time.Since(start))
	}
	if lines := r.warn.take(); len(lines) > 0 {
		r.b.Fatalf("on-change: the pool reported problems:\n%s", strings.Join(lines, "\n"))
	}
	slices.Sort(took)
	q := func(f float64) time.Duration { return took[int(f*float64(len(took)-1)+0.5)] }
	return q(0.50), q(0.95), took[len(took)-1]
}

// seedBench fills the database with n accounts (testsvc.AccountSteps).
// Random but repeatable (setseed on one connection).
func seedBench(b *testing.B, db *sqlx.DB, n int, day time.Time) {
	b.Helper()
	done := testsvc.Seed(b, db, 0.4217, testsvc.AccountSteps(n, day))
	var size string
	db.Get(&size, `SELECT pg_size_pretty(pg_database_size(current_database()))`)
	b.Logf("seeded:%s; database %s", done, size)
}
