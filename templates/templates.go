// Package templates holds the email layouts, email templates and nudge
// templates of the example campaigns (DESIGN.md, "Templates"). It is a
// directory of files that `tend campaigns apply` reads; this Go file only
// embeds the default layout, layouts/default.html, which is also the
// built-in layout used until another is stored, so that the file an operator
// copies and edits is the one Tend ships.
package templates

import _ "embed"

// DefaultLayout is the source of layouts/default.html.
//
//go:embed layouts/default.html
var DefaultLayout string
