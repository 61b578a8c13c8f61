// Package postgres opens Tend's connection pool, creates the database when it
// is missing, applies the embedded migrations with goose under an advisory lock,
// and provides the transaction helper every store uses.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/migrations"
)

// migrationLockID is the advisory lock key that serialises migrations across
// processes starting at once ("tendmigr" in ASCII).
const migrationLockID int64 = 0x74656e646d696772

// Open connects to the database at url and checks that it answers.
//
// Connections run with PostgreSQL's JIT compilation off unless the URL says
// otherwise (jit=on): Tend's statements are batches of a thousand rows whose
// row estimates (joins through unnest'ed id arrays) often cross the JIT cost
// threshold, and compiling took longer than running them — most of a health
// recompute's database time in BenchmarkHealthRecompute.
//
// Connections always run in UTC, whatever the URL or the server's default
// says: Tend's SQL counts whole UTC days (usage windows, rollup days,
// timestamptz cast to date), which the session's time zone would otherwise
// shift.
//
// databaseURL must be a postgres:// (or postgresql://) URL, as config
// requires: a key=value connection string is refused, since the settings
// above could not be made to win in it (lib/pq sends a run-time setting
// spelled in two cases twice, in no set order).
func Open(ctx context.Context, databaseURL string) (*sqlx.DB, error) {
	u, err := url.Parse(databaseURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, errors.New("postgres: the database must be given as a postgres:// URL")
	}
	withParam(u, "jit", "off", false)
	withParam(u, "timezone", "UTC", true)
	databaseURL = u.String()
	db, err := sqlx.Open("postgres", databaseURL)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(20)
	db.SetConnMaxIdleTime(5 * time.Minute)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: connect to %s: %w", redact(databaseURL), err)
	}
	return db, nil
}

// withParam sets a connection parameter in u's query; lib/pq sends
// parameters it does not know itself as run-time settings. PostgreSQL's
// setting names ignore case (TimeZone is timezone): with override, the
// parameter replaces any spelling of it; without, a URL naming it in any
// case keeps its own value.
func withParam(u *url.URL, name, value string, override bool) {
	q := u.Query()
	for k := range q {
		if strings.EqualFold(k, name) {
			if !override {
				return
			}
			q.Del(k)
		}
	}
	q.Set(name, value)
	u.RawQuery = q.Encode()
}

// EnsureDatabase creates the database named in databaseURL when it does not
// exist, connecting to the server's "postgres" database to do so. It reports
// whether it created one. A server that refuses (no CREATEDB right) gets a
// message saying what to run instead.
func EnsureDatabase(ctx context.Context, databaseURL string) (bool, error) {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return false, fmt.Errorf("postgres: parse url: %w", err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	admin := *u
	admin.Path = "/postgres"
	db, err := sql.Open("postgres", admin.String())
	if err != nil {
		return false, fmt.Errorf("postgres: open: %w", err)
	}
	defer db.Close()
	var exists bool
	if err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return false, fmt.Errorf("postgres: connect to %s: %w", redact(admin.String()), err)
	}
	if exists {
		return false, nil
	}
	if _, err := db.ExecContext(ctx, `CREATE DATABASE `+pq.QuoteIdentifier(name)); err != nil {
		var pqErr *pq.Error
		// Created by a concurrent process: 42P04 duplicate_database, or 23505
		// when both inserted into pg_database at once.
		if errors.As(err, &pqErr) && (pqErr.Code == "42P04" || pqErr.Code == "23505") {
			return false, nil
		}
		return false, fmt.Errorf("postgres: create database %q (create it yourself with `createdb %s`, or grant CREATEDB): %w", name, name, err)
	}
	return true, nil
}

// Migrate applies every pending migration. An advisory session lock makes
// concurrent callers wait for each other instead of racing.
func Migrate(ctx context.Context, db *sql.DB) ([]*goose.MigrationResult, error) {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, fmt.Errorf("postgres: migrate: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, goose.WithSessionLocker(locker))
	if err != nil {
		return nil, fmt.Errorf("postgres: migrate: %w", err)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return res, fmt.Errorf("postgres: migrate: %w", err)
	}
	return res, nil
}

// Queryer is what SQL helpers take so that they run inside or outside a
// transaction alike.
type Queryer interface {
	sqlx.ExtContext
	GetContext(ctx context.Context, dest any, query string, args ...any) error
	SelectContext(ctx context.Context, dest any, query string, args ...any) error
}

// InTx runs fn in a transaction, committing when it returns nil and rolling
// back otherwise.
func InTx(ctx context.Context, db *sqlx.DB, fn func(tx *sqlx.Tx) error) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("postgres: begin: %w", err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("postgres: commit: %w", err)
	}
	return nil
}

// InTxRetry is InTx, run again (up to five times) when PostgreSQL broke a
// deadlock by aborting this transaction. fn must be safe to repeat.
func InTxRetry(ctx context.Context, db *sqlx.DB, fn func(tx *sqlx.Tx) error) error {
	return RetryDeadlock(func() error { return InTx(ctx, db, fn) })
}

// RetryDeadlock runs fn again (up to five times) while PostgreSQL aborts it
// to break a deadlock. fn must be one statement or transaction, safe to repeat.
func RetryDeadlock(fn func() error) error {
	for attempt := 0; ; attempt++ {
		err := fn()
		var pqErr *pq.Error
		if err != nil && errors.As(err, &pqErr) && pqErr.Code == "40P01" && attempt < 5 {
			continue
		}
		return err
	}
}

// RowFault tells whether err is one PostgreSQL raised about what a
// statement wrote or read (a constraint, a value, a trigger refusing it),
// which one row can cause, rather than a failure of the connection, the
// server or the transaction (classes 08, 40, 53, 57, 58), or of the client
// (a cancelled context, a broken connection), which any statement would meet.
func RowFault(err error) bool {
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) {
		return false
	}
	switch pqErr.Code.Class() {
	case "08", "40", "53", "57", "58":
		return false
	}
	return true
}

// redact hides the password of a connection URL for messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the database"
	}
	return u.Redacted()
}

// NotFound returns nf when err is sql.ErrNoRows, and err wrapped with op
// otherwise (nil stays nil).
func NotFound(err error, op string, nf *errs.Error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return nf
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
}
