package postgres

import (
	"context"
	"sync"

	"github.com/jmoiron/sqlx"
)

// Prepared runs the statements of a hot path as prepared statements on a
// pool: each query is prepared once (database/sql then prepares it on each
// connection the first time it runs there) and kept for the life of the
// pool. An execution is then one round trip (lib/pq otherwise parses before
// it binds) and neither parsed nor, once PostgreSQL keeps a generic plan,
// planned again: for a statement run hundreds of times a second, planning
// was a large share of its cost.
//
// Prepared statements need a session per connection: behind PgBouncer, use
// session pooling (README, "Several workers on several machines").
type Prepared struct {
	db    *sqlx.DB
	stmts sync.Map // query → *sqlx.Stmt
}

// NewPrepared returns statements prepared on db as they are first used.
func NewPrepared(db *sqlx.DB) *Prepared { return &Prepared{db: db} }

func (p *Prepared) stmt(ctx context.Context, query string) (*sqlx.Stmt, error) {
	if st, ok := p.stmts.Load(query); ok {
		return st.(*sqlx.Stmt), nil
	}
	st, err := p.db.PreparexContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if prev, loaded := p.stmts.LoadOrStore(query, st); loaded {
		st.Close()
		return prev.(*sqlx.Stmt), nil
	}
	return st, nil
}

// Select runs query, prepared, and scans its rows into dest (a slice).
func (p *Prepared) Select(ctx context.Context, dest any, query string, args ...any) error {
	st, err := p.stmt(ctx, query)
	if err != nil {
		return err
	}
	return st.SelectContext(ctx, dest, args...)
}

// Get runs query, prepared, and scans its one row into dest.
func (p *Prepared) Get(ctx context.Context, dest any, query string, args ...any) error {
	st, err := p.stmt(ctx, query)
	if err != nil {
		return err
	}
	return st.GetContext(ctx, dest, args...)
}
