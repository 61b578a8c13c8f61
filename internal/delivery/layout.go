package delivery

import (
	"context"
	"fmt"
	"slices"

	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/render"
)

// storedLayout is a stored layout as last read, parsed.
type storedLayout struct {
	hash   string
	layout *render.Layout // nil: it does not parse; the default wraps email asking for it
}

// layoutRow is a stored layout's name and hash, and its source when the
// sender does not have it yet.
type layoutRow struct {
	Name   string  `db:"name"`
	Hash   string  `db:"hash"`
	Source *string `db:"source"`
}

// refreshLayouts brings the sender's layouts up to date with those stored
// (templates/layouts/NAME.html, applied), so that every worker wraps email in
// the layouts last applied. It is one short query a batch, which reads a
// layout's source only when it is new or changed.
func (s *Sender) refreshLayouts(ctx context.Context) error {
	cur := s.layouts.Load()
	var names, hashes pq.StringArray
	if cur != nil {
		for name, l := range *cur {
			names, hashes = append(names, name), append(hashes, l.hash)
		}
	}
	var rows []layoutRow
	if err := s.db.SelectContext(ctx, &rows, `
		SELECT t.name, t.hash, CASE WHEN t.hash = k.hash THEN NULL ELSE t.source END AS source
		FROM template t LEFT JOIN unnest($1::text[], $2::text[]) AS k(name, hash) ON k.name = t.name
		WHERE t.kind = 'layout'`, names, hashes); err != nil {
		return fmt.Errorf("delivery: layouts: %w", err)
	}
	if cur != nil && len(rows) == len(*cur) && !slices.ContainsFunc(rows, func(r layoutRow) bool { return r.Source != nil }) {
		return nil // none new, changed or gone
	}
	next := make(map[string]*storedLayout, len(rows))
	for _, r := range rows {
		if r.Source == nil {
			next[r.Name] = (*cur)[r.Name]
			continue
		}
		l, err := render.ParseLayout(r.Name, *r.Source)
		if err != nil {
			// Stored layouts are checked when applied; one that fails now
			// (a newer Tend is stricter) must not stop the mail.
			s.log.Error("delivery: a stored layout does not parse; email asking for it is wrapped in the default one", "layout", r.Name, "err", err)
			l = nil
		}
		next[r.Name] = &storedLayout{hash: r.Hash, layout: l}
	}
	s.layouts.Store(&next)
	return nil
}

// layoutFor is the layout wrapping email that asks for name: the stored one
// of that name; else the stored default; else nil (the renderer's own, the
// built-in default).
func (s *Sender) layoutFor(name string) *render.Layout {
	cur := s.layouts.Load()
	if cur == nil {
		return nil
	}
	if l := (*cur)[name]; l != nil && l.layout != nil {
		return l.layout
	}
	if name != render.DefaultLayoutName {
		s.log.Warn("delivery: email asks for a layout that is not stored; it is wrapped in the default one", "layout", name)
	}
	if l := (*cur)[render.DefaultLayoutName]; l != nil {
		return l.layout
	}
	return nil
}
