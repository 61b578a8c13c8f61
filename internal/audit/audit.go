// Package audit records every mutation (who, what, on what, when) and lists
// the trail for admins.
package audit

import (
	"context"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"
)

// Entry is one audited mutation.
type Entry struct {
	ID        int64     `db:"id" json:"id"`
	At        time.Time `db:"at" json:"at"`
	APIKeyID  *int64    `db:"api_key_id" json:"api_key_id,omitempty"`
	Actor     string    `db:"actor" json:"actor"`
	Role      string    `db:"role" json:"role,omitempty"`
	Action    string    `db:"action" json:"action"`
	Target    string    `db:"target" json:"target,omitempty"`
	Status    int       `db:"status" json:"status,omitempty"`
	RequestID string    `db:"request_id" json:"request_id,omitempty"`
}

// Log writes and reads the audit trail.
type Log struct{ db *sqlx.DB }

// NewLog returns an audit log on db.
func NewLog(db *sqlx.DB) *Log { return &Log{db: db} }

// Record appends an entry.
func (l *Log) Record(ctx context.Context, e Entry) error {
	_, err := l.db.NamedExecContext(ctx, `
		INSERT INTO audit_log (at, api_key_id, actor, role, action, target, status, request_id)
		VALUES (:at, :api_key_id, :actor, :role, :action, :target, :status, :request_id)`, e)
	if err != nil {
		return fmt.Errorf("audit: record: %w", err)
	}
	return nil
}

// List returns up to limit entries older than the entry with id before (all
// when before is 0), newest first.
func (l *Log) List(ctx context.Context, before int64, limit int) ([]Entry, error) {
	out := []Entry{}
	err := l.db.SelectContext(ctx, &out, `
		SELECT id, at, api_key_id, actor, role, action, target, status, request_id
		FROM audit_log
		WHERE $1 = 0 OR id < $1
		ORDER BY id DESC
		LIMIT $2`, before, limit)
	if err != nil {
		return nil, fmt.Errorf("audit: list: %w", err)
	}
	return out, nil
}
