// Package apikey issues, lists, revokes and checks API keys. A key is shown
// once, when created; only its SHA-256 is stored. Every request looks its key
// up, so a revoked key stops working at once.
package apikey

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Role is what a key may do; see DESIGN.md's role table.
type Role string

// The roles.
const (
	Admin     Role = "admin"
	Marketing Role = "marketing"
	CSM       Role = "csm"
	Product   Role = "product"
	Ingest    Role = "ingest"
)

// Roles lists every role.
var Roles = []Role{Admin, Marketing, CSM, Product, Ingest}

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", errs.E(errs.Invalid, "invalid_role", "role must be one of admin, marketing, csm, product, ingest; got %q", s)
}

// Key is a stored key, without its secret.
type Key struct {
	ID        int64      `db:"id" json:"id"`
	Name      string     `db:"name" json:"name"`
	Role      Role       `db:"role" json:"role"`
	Prefix    string     `db:"prefix" json:"prefix"`
	CreatedAt time.Time  `db:"created_at" json:"created_at"`
	RevokedAt *time.Time `db:"revoked_at" json:"revoked_at,omitempty"`
}

// Store keeps keys in PostgreSQL.
type Store struct {
	db    *sqlx.DB
	clock clock.Clock
}

// NewStore returns a key store.
func NewStore(db *sqlx.DB, clk clock.Clock) *Store { return &Store{db: db, clock: clk} }

const keyPrefix = "tend_"

func hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// Create makes a key and returns it with its secret, which is not stored.
func (s *Store) Create(ctx context.Context, name string, role Role) (Key, string, error) {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 100 {
		return Key{}, "", errs.E(errs.Invalid, "invalid_name", "a key needs a name of 1 to 100 characters")
	}
	if p := postgres.TextProblem(name); p != "" {
		return Key{}, "", errs.E(errs.Invalid, "invalid_name", "the name %s", p)
	}
	if _, err := ParseRole(string(role)); err != nil {
		return Key{}, "", err
	}
	b := make([]byte, 25)
	if _, err := rand.Read(b); err != nil {
		return Key{}, "", fmt.Errorf("apikey: create: %w", err)
	}
	secret := keyPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
	var k Key
	err := s.db.GetContext(ctx, &k, `
		INSERT INTO api_key (name, role, prefix, hash, created_at)
		VALUES ($1, $2, $3, $4, $5)
		RETURNING id, name, role, prefix, created_at, revoked_at`,
		name, role, secret[:len(keyPrefix)+6], hash(secret), s.clock.Now())
	if err != nil {
		return Key{}, "", fmt.Errorf("apikey: create: %w", err)
	}
	return k, secret, nil
}

// List returns every key, newest first.
func (s *Store) List(ctx context.Context) ([]Key, error) {
	keys := []Key{}
	err := s.db.SelectContext(ctx, &keys, `SELECT id, name, role, prefix, created_at, revoked_at FROM api_key ORDER BY id DESC`)
	if err != nil {
		return nil, fmt.Errorf("apikey: list: %w", err)
	}
	return keys, nil
}

// Revoke stops a key from working. Revoking a revoked key is a no-op.
func (s *Store) Revoke(ctx context.Context, id int64) (Key, error) {
	var k Key
	err := s.db.GetContext(ctx, &k, `
		UPDATE api_key SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1
		RETURNING id, name, role, prefix, created_at, revoked_at`, id, s.clock.Now())
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, errs.E(errs.NotFound, "key_not_found", "no API key with id %d", id)
	}
	if err != nil {
		return Key{}, fmt.Errorf("apikey: revoke: %w", err)
	}
	return k, nil
}

// Authenticate returns the live key for a secret, or an Unauthorized error.
func (s *Store) Authenticate(ctx context.Context, secret string) (Key, error) {
	if !strings.HasPrefix(secret, keyPrefix) {
		return Key{}, errs.E(errs.Unauthorized, "invalid_key", "the API key is not valid")
	}
	var k Key
	err := s.db.GetContext(ctx, &k, `
		SELECT id, name, role, prefix, created_at, revoked_at
		FROM api_key WHERE hash = $1 AND revoked_at IS NULL`, hash(secret))
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, errs.E(errs.Unauthorized, "invalid_key", "the API key is not valid or was revoked")
	}
	if err != nil {
		return Key{}, fmt.Errorf("apikey: authenticate: %w", err)
	}
	return k, nil
}
