// Package migrations embeds Tend's numbered SQL migrations. They are applied by
// goose (see internal/postgres), each in its own transaction, and are never
// edited once landed: a change is a new file.
package migrations

import "embed"

// FS holds every migration file.
//
//go:embed *.sql
var FS embed.FS
