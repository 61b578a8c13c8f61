// Package testsvc gives tests their own real services: a PostgreSQL database
// cloned from a migrated template (CREATE DATABASE ... TEMPLATE, so packages and
// tests run in parallel without seeing each other), and a Redis database number
// held for the test. Nothing is mocked.
//
// TEND_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
// and TEND_TEST_REDIS_URL (default redis://127.0.0.1:6379) say where the
// servers are; `make test` starts them with deploy/services.sh.
package testsvc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/redis/go-redis/v9"

	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/migrations"
)

func adminURL() string {
	if u := os.Getenv("TEND_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// withDB returns adminURL pointing at another database.
func withDB(name string) string {
	u, err := url.Parse(adminURL())
	if err != nil {
		panic(err)
	}
	u.Path = "/" + name
	return u.String()
}

// templateName names the template after a hash of the migrations, so a new
// migration makes a new template and an old one is never reused.
func templateName() string {
	h := sha256.New()
	entries, _ := fs.Glob(migrations.FS, "*.sql")
	sort.Strings(entries)
	for _, e := range entries {
		b, _ := fs.ReadFile(migrations.FS, e)
		h.Write([]byte(e))
		h.Write(b)
	}
	return "tend_tmpl_" + hex.EncodeToString(h.Sum(nil))[:12]
}

// DB is a test database.
type DB struct {
	*sqlx.DB
	URL string
}

// NewDB returns a fresh, migrated database that is dropped when the test ends.
func NewDB(t testing.TB) *DB {
	t.Helper()
	ctx := context.Background()
	admin, err := sql.Open("postgres", adminURL())
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	defer admin.Close()
	if err := admin.PingContext(ctx); err != nil {
		t.Fatalf("testsvc: PostgreSQL is not reachable at %s (run deploy/services.sh): %v", adminURL(), err)
	}
	tmpl := templateName()
	if err := ensureTemplate(ctx, admin, tmpl); err != nil {
		t.Fatalf("testsvc: template: %v", err)
	}
	name := "tend_t_" + randHex(6)
	var createErr error
	for attempt := 0; attempt < 50; attempt++ {
		_, createErr = admin.ExecContext(ctx, `CREATE DATABASE `+pq.QuoteIdentifier(name)+` TEMPLATE `+pq.QuoteIdentifier(tmpl))
		var pqErr *pq.Error
		// 55006: the template is briefly in use by another clone; try again.
		if createErr == nil || !errors.As(createErr, &pqErr) || pqErr.Code != "55006" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if createErr != nil {
		t.Fatalf("testsvc: create database: %v", createErr)
	}
	u := withDB(name)
	db, err := postgres.Open(ctx, u)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	t.Cleanup(func() {
		db.Close()
		a, err := sql.Open("postgres", adminURL())
		if err != nil {
			return
		}
		defer a.Close()
		a.Exec(`DROP DATABASE IF EXISTS ` + pq.QuoteIdentifier(name) + ` WITH (FORCE)`)
	})
	return &DB{DB: db, URL: u}
}

// ensureTemplate creates and migrates the template database once per set of
// migrations, under an advisory lock so parallel test binaries agree.
func ensureTemplate(ctx context.Context, admin *sql.DB, tmpl string) error {
	conn, err := admin.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock(74626564)`); err != nil {
		return err
	}
	defer conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock(74626564)`)
	var ready bool
	err = conn.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)`, tmpl).Scan(&ready)
	if err != nil || ready {
		return err
	}
	building := tmpl + "_build"
	conn.ExecContext(ctx, `DROP DATABASE IF EXISTS `+pq.QuoteIdentifier(building)+` WITH (FORCE)`)
	if _, err := conn.ExecContext(ctx, `CREATE DATABASE `+pq.QuoteIdentifier(building)); err != nil {
		return err
	}
	db, err := sql.Open("postgres", withDB(building))
	if err != nil {
		return err
	}
	_, err = postgres.Migrate(ctx, db)
	db.Close()
	if err != nil {
		return err
	}
	// Only a fully migrated database gets the template's name.
	if _, err := conn.ExecContext(ctx, `ALTER DATABASE `+pq.QuoteIdentifier(building)+` RENAME TO `+pq.QuoteIdentifier(tmpl)); err != nil {
		return err
	}
	_, err = conn.ExecContext(ctx, `ALTER DATABASE `+pq.QuoteIdentifier(tmpl)+` IS_TEMPLATE true`)
	return err
}

// Unique returns a number no other caller of this process gets, for naming
// per-test resources.
func Unique() int64 { return uniq.Add(1)<<20 | int64(os.Getpid()&0xfffff) }

var uniq atomic.Int64

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Redis is a Redis database number held by one test.
type Redis struct {
	URL string // redis://host:port/N
	Opt *redis.Options
}

func redisBaseURL() string {
	if u := os.Getenv("TEND_TEST_REDIS_URL"); u != "" {
		return strings.TrimRight(u, "/")
	}
	return "redis://127.0.0.1:6379"
}

// NewRedis reserves a Redis database number (1..15) for the test, flushes it,
// and releases it when the test ends. Reservations are keys in database 0, so
// parallel test binaries never share a number.
func NewRedis(t testing.TB) *Redis {
	t.Helper()
	ctx := context.Background()
	opt, err := redis.ParseURL(redisBaseURL() + "/0")
	if err != nil {
		t.Fatalf("testsvc: redis url: %v", err)
	}
	ctl := redis.NewClient(opt)
	defer ctl.Close()
	if err := ctl.Ping(ctx).Err(); err != nil {
		t.Fatalf("testsvc: Redis is not reachable at %s (run deploy/services.sh): %v", redisBaseURL(), err)
	}
	token := randHex(8)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		for n := 1; n <= 15; n++ {
			key := fmt.Sprintf("tend:testdb:%d", n)
			ok, err := ctl.SetNX(ctx, key, token, 20*time.Minute).Result()
			if err != nil {
				t.Fatalf("testsvc: reserve redis db: %v", err)
			}
			if !ok {
				continue
			}
			r := &Redis{URL: fmt.Sprintf("%s/%d", redisBaseURL(), n)}
			r.Opt, _ = redis.ParseURL(r.URL)
			c := redis.NewClient(r.Opt)
			c.FlushDB(ctx)
			c.Close()
			t.Cleanup(func() {
				c := redis.NewClient(r.Opt)
				c.FlushDB(context.Background())
				c.Close()
				ctl := redis.NewClient(opt)
				// Release only our own reservation.
				if v, _ := ctl.Get(context.Background(), key).Result(); v == token {
					ctl.Del(context.Background(), key)
				}
				ctl.Close()
			})
			return r
		}
		if time.Now().After(deadline) {
			t.Fatal("testsvc: every Redis database 1..15 is reserved by other tests")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
