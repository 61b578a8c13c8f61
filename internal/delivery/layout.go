package delivery

import (
	"context"
	"fmt"

	"github.com/tendhq/tend/internal/render"
)

// storedLayout is the stored default layout as last read, parsed.
type storedLayout struct {
	hash   string
	layout *render.Layout // nil: the stored one does not parse; the built-in wraps email
}

// refreshLayout brings the sender's layout up to date with the one stored
// under render.DefaultLayoutName (templates/layouts/default.html, applied),
// so that every worker wraps email in the layout last applied. It is one
// short query a batch, which reads the layout's source only when it changed.
func (s *Sender) refreshLayout(ctx context.Context) error {
	have := ""
	if cur := s.layout.Load(); cur != nil {
		have = cur.hash
	}
	var rows []struct {
		Hash   string  `db:"hash"`
		Source *string `db:"source"`
	}
	if err := s.db.SelectContext(ctx, &rows, `
		SELECT hash, CASE WHEN hash = $2 THEN NULL ELSE source END AS source
		FROM template WHERE name = $1 AND kind = 'layout'`, render.DefaultLayoutName, have); err != nil {
		return fmt.Errorf("delivery: layout: %w", err)
	}
	switch {
	case len(rows) == 0:
		s.layout.Store(nil) // none stored: the built-in
	case rows[0].Source == nil:
		// Unchanged.
	default:
		l, err := render.ParseLayout(render.DefaultLayoutName, *rows[0].Source)
		if err != nil {
			// Stored layouts are checked when applied; one that fails now
			// (a newer Tend is stricter) must not stop the mail.
			s.log.Error("delivery: the stored layout does not parse; email is wrapped in the built-in one", "err", err)
			l = nil
		}
		s.layout.Store(&storedLayout{hash: rows[0].Hash, layout: l})
	}
	return nil
}

// currentLayout is the layout email is wrapped in; nil: the renderer's own.
func (s *Sender) currentLayout() *render.Layout {
	if cur := s.layout.Load(); cur != nil {
		return cur.layout
	}
	return nil
}
