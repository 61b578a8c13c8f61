package postgres_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/testsvc"
)

// TestConcurrentStartsMigrateOnce starts several "processes" at once on a
// database that does not exist yet: one creates it, the advisory lock makes
// the migrations run once, and every caller ends up on the latest version.
func TestConcurrentStartsMigrateOnce(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t) // only to learn the server's address
	u, _ := url.Parse(db.URL)
	name := fmt.Sprintf("tend_t_fresh_%d", testsvc.Unique())
	u.Path = "/" + name
	fresh := u.String()
	t.Cleanup(func() {
		admin := *u
		admin.Path = "/postgres"
		a, err := sql.Open("postgres", admin.String())
		if err == nil {
			a.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`)
			a.Close()
		}
	})
	ctx := context.Background()
	var wg sync.WaitGroup
	created := make(chan bool, 4)
	errs := make(chan error, 8)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := postgres.EnsureDatabase(ctx, fresh)
			if err != nil {
				errs <- err
				return
			}
			created <- c
			conn, err := postgres.Open(ctx, fresh)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			if _, err := postgres.Migrate(ctx, conn.DB); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(created)
	for err := range errs {
		t.Fatal(err)
	}
	n := 0
	for c := range created {
		if c {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d callers say they created the database, want 1", n)
	}
	conn, err := postgres.Open(ctx, fresh)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var applied, distinct int
	conn.Get(&applied, `SELECT count(*) FROM goose_db_version WHERE version_id > 0`)
	conn.Get(&distinct, `SELECT count(DISTINCT version_id) FROM goose_db_version WHERE version_id > 0`)
	if applied == 0 || applied != distinct {
		t.Fatalf("migrations applied %d times for %d versions", applied, distinct)
	}
	// Migrating again is a no-op.
	res, err := postgres.Migrate(ctx, conn.DB)
	if err != nil || len(res) != 0 {
		t.Fatalf("second migrate: %d applied, %v", len(res), err)
	}
}

// TestJITOffUnlessAsked: Open turns JIT off, and a URL that says jit=on
// (in any case) keeps it.
func TestJITOffUnlessAsked(t *testing.T) {
	t.Parallel()
	base := testsvc.NewDB(t)
	withJIT := func(key string) string {
		u, _ := url.Parse(base.URL)
		q := u.Query()
		q.Set(key, "on")
		u.RawQuery = q.Encode()
		return u.String()
	}
	for _, c := range []struct{ url, want string }{{base.URL, "off"}, {withJIT("jit"), "on"}, {withJIT("JIT"), "on"}} {
		db, err := postgres.Open(context.Background(), c.url)
		if err != nil {
			t.Fatal(err)
		}
		var jit string
		if err := db.Get(&jit, `SHOW jit`); err != nil || jit != c.want {
			t.Errorf("jit = %q (%v), want %s", jit, err, c.want)
		}
		db.Close()
	}
}

// TestSessionsRunInUTC: Open's connections run in UTC whatever the URL or
// the database's own setting says, so that a timestamptz late in a UTC day
// casts to that day; a key=value connection string, where that could not be
// made sure of, is refused.
func TestSessionsRunInUTC(t *testing.T) {
	t.Parallel()
	base := testsvc.NewDB(t)
	if _, err := base.Exec(`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone = %L', current_database(), 'Asia/Tokyo'); END $$`); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(base.URL)
	asked := *u
	q := asked.Query()
	q.Set("timezone", "America/New_York")
	asked.RawQuery = q.Encode()
	capital := *u
	q = capital.Query()
	q.Set("TimeZone", "Europe/Paris")
	capital.RawQuery = q.Encode()
	pass, _ := u.User.Password()
	kv := fmt.Sprintf("host=%s port=%s user=%s password='%s' dbname=%s sslmode=disable timezone=America/New_York",
		u.Hostname(), u.Port(), u.User.Username(), pass, strings.TrimPrefix(u.Path, "/"))
	if db, err := postgres.Open(context.Background(), kv); err == nil || !strings.Contains(err.Error(), "postgres:// URL") {
		if db != nil {
			db.Close()
		}
		t.Errorf("Open(a key=value string) = %v, want it refused for not being a URL", err)
	}
	for _, c := range []string{base.URL, asked.String(), capital.String()} {
		db, err := postgres.Open(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		var tz, day string
		if err := db.QueryRow(`SELECT current_setting('TimeZone'), '2026-03-01T23:30:00Z'::timestamptz::date::text`).Scan(&tz, &day); err != nil {
			t.Fatal(err)
		}
		if tz != "UTC" || day != "2026-03-01" {
			t.Errorf("%s: time zone %q, day %s; want UTC, 2026-03-01", c, tz, day)
		}
		db.Close()
	}
}

// TestDeletedMessagesTakeTheirEngagement: engagement_event has no foreign key
// to message (migration 00014), yet deleting an account still removes the
// engagement with its messages, through the cascade to message and its
// trigger, and leaves other accounts' engagement alone.
func TestDeletedMessagesTakeTheirEngagement(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO campaign (name, kind, topic, status, current_version, created_at, updated_at)
		 VALUES ('c', 'drip', 'product', 'active', 1, now(), now())`,
		`INSERT INTO account (external_id, name, plan, seats, signup_at, created_at, updated_at)
		 SELECT 'a' || g, 'A' || g, 'pro', 5, now(), now(), now() FROM generate_series(1, 2) g`,
		`INSERT INTO contact (external_id, account_id, email, name, created_at, updated_at)
		 SELECT a.external_id || '-u', a.id, a.external_id || '@example.com', 'U', now(), now() FROM account a`,
		`INSERT INTO enrollment (campaign_id, version, account_id, entry_number, contacts, status, step, anchor_at, entered_at)
		 SELECT c.id, 1, a.id, 1, ARRAY(SELECT id FROM contact WHERE account_id = a.id), 'active', 1, now(), now()
		 FROM campaign c, account a`,
		`INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, sent_at,
		                      attempts, created_at, updated_at)
		 SELECT e.id, e.campaign_id, 1, 's', ct.id, 'email', 'sent', now(), now(), 1, now(), now()
		 FROM enrollment e, unnest(e.contacts) ct(id)`,
		`INSERT INTO engagement_event (message_id, kind, at) SELECT id, k, now() FROM message, unnest(ARRAY['open', 'click']) k`,
		`DELETE FROM account WHERE external_id = 'a1'`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var left []string
	if err := db.SelectContext(ctx, &left, `
		SELECT a.external_id || ':' || e.kind FROM engagement_event e
		LEFT JOIN message m ON m.id = e.message_id LEFT JOIN contact ct ON ct.id = m.contact_id
		LEFT JOIN account a ON a.id = ct.account_id ORDER BY 1`); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(left) != "[a2:click a2:open]" {
		t.Errorf("engagement left after deleting account a1: %v, want a2's click and open only", left)
	}
}

// TestPrepared runs statements prepared once from many goroutines at once
// (the first uses race to prepare), each on its own connection, and gets
// every answer right; the statement is a server-side prepared statement.
func TestPrepared(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	p := postgres.NewPrepared(db.DB)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			var got []int
			if err := p.Select(ctx, &got, `SELECT generate_series(1, $1::int)`, i); err != nil || len(got) != i {
				t.Errorf("Select(%d) = %v, %v", i, got, err)
			}
			var sum int
			if err := p.Get(ctx, &sum, `SELECT $1::int + $2::int`, i, 1); err != nil || sum != i+1 {
				t.Errorf("Get(%d) = %d, %v", i, sum, err)
			}
		})
	}
	wg.Wait()
	if err := p.Get(ctx, new(int), `SELECT no_such_column`); err == nil {
		t.Error("a statement that does not prepare gave no error")
	}
	// The connection that ran the last statement holds it prepared.
	conn, err := db.DB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n int
	if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM pg_prepared_statements`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("no prepared statement on a connection of the pool")
	}
}

// RowFault tells errors PostgreSQL raised about a statement's data from
// failures any statement would meet, as PostgreSQL and the client raise
// them.
func TestRowFault(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	raise := func(code string) string {
		return `DO $$ BEGIN RAISE EXCEPTION 'for the test' USING ERRCODE = '` + code + `'; END $$`
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		sql  string
		want bool
	}{
		{"division by zero", context.Background(), `SELECT 1/0`, true},
		{"a not-null column", context.Background(), `CREATE TEMP TABLE t (x int NOT NULL); INSERT INTO t VALUES (NULL)`, true},
		{"a trigger's exception", context.Background(), raise("P0001"), true},
		{"the server shutting down", context.Background(), raise("57P01"), false},
		{"a deadlock", context.Background(), raise("40P01"), false},
		{"out of memory", context.Background(), raise("53200"), false},
		{"a connection failure", context.Background(), raise("08006"), false},
		{"a cancelled context", cancelled, `SELECT 1`, false},
	} {
		_, err := db.ExecContext(tc.ctx, tc.sql)
		if err == nil {
			t.Fatalf("%s: no error", tc.name)
		}
		if got := postgres.RowFault(err); got != tc.want {
			t.Errorf("%s (%v): RowFault = %v, want %v", tc.name, err, got, tc.want)
		}
	}
}
