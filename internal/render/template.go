// Package render turns templates into messages: an email template into the
// subject, HTML and text of one email, with its links tracked, its CSS
// inlined and its body wrapped in a layout; a nudge template into the title,
// body and call to action of an in-app nudge.
//
// An email template is Go html/template text defining the blocks "subject"
// and "body"; a nudge template is YAML whose title, body, cta_label and
// cta_url are each a text/template string (DESIGN.md, "Templates"). Both see
// a Data as dot. Parse refuses a template that would fail at send time: one
// that does not parse, lacks a block or key, or fails to execute against
// SampleData (a misspelt field, say), so mistakes surface when a template is
// applied, not when a message is due.
package render

import (
	"errors"
	"fmt"
	htmltemplate "html/template"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	texttemplate "text/template"

	"github.com/tendhq/tend/internal/errs"
)

// Kind is the kind of a template; the values are those of the API.
type Kind string

// The kinds of template.
const (
	KindEmail  Kind = "email"
	KindNudge  Kind = "nudge"
	KindLayout Kind = "layout" // see ParseLayout; not a Template
)

// Template is a parsed, validated template. It is safe for concurrent use.
type Template struct {
	Name   string
	Kind   Kind
	Source string
	// Layout is the layout an email template asks for with a "layout"
	// block ({{define "layout"}}minimal{{end}}: layouts/minimal);
	// DefaultLayoutName when it has none.
	Layout string

	html  *htmltemplate.Template // KindEmail: the set holding "subject" and "body", as written
	nudge *nudgeTemplate         // KindNudge

	// KindEmail: the set and the layout as sent, their CSS inlined (see
	// premail.go), per layout.
	mu      sync.RWMutex
	inlined map[*Layout]*inlined

	// bodySize is the largest body rendered so far (up to maxSizeHint):
	// see execHTML.
	bodySize atomic.Int64
}

// maxSizeHint bounds the buffer a rendering starts with.
const maxSizeHint = 1 << 20

// funcs are the functions templates may call besides the builtins.
var funcs = map[string]any{
	// default returns fallback when value is empty (nil, "", 0, false, an
	// empty map...): {{index .Contact.Traits "nickname" | default "there"}}.
	"default": func(fallback, value any) any {
		if value == nil {
			return fallback
		}
		if v := reflect.ValueOf(value); v.IsZero() || ((v.Kind() == reflect.Map || v.Kind() == reflect.Slice) && v.Len() == 0) {
			return fallback
		}
		return value
	},
}

// Parse parses and validates a template. It returns an errs.Invalid error
// with code "invalid_template" and the details "template" (the name), and
// "line" (and, for a nudge, "field") when known.
func Parse(name string, kind Kind, source string) (*Template, error) {
	t := &Template{Name: name, Kind: kind, Source: source}
	if strings.TrimSpace(name) == "" {
		return nil, errs.E(errs.Invalid, "invalid_template", "a template needs a name").With("template", name)
	}
	switch kind {
	case KindEmail:
		ht, err := htmltemplate.New(name).Option("missingkey=error").Funcs(funcs).Parse(source)
		if err != nil {
			return nil, templateError(name, err)
		}
		for _, block := range []string{"subject", "body"} {
			if ht.Lookup(block) == nil {
				return nil, invalid(name, "defines no %q block: add {{define %q}}...{{end}}", block, block)
			}
		}
		t.html = ht
		if t.Layout, err = layoutBlock(name, ht); err != nil {
			return nil, err
		}
		if _, err := sampleRenderer().email(t, SampleData(), 1, EmailOptions{SignAsCSM: true}, true); err != nil {
			return nil, err
		}
	case KindNudge:
		nt, err := parseNudge(name, source)
		if err != nil {
			return nil, err
		}
		t.nudge = nt
		if _, err := sampleRenderer().Nudge(t, SampleData()); err != nil {
			return nil, err
		}
	default:
		return nil, errs.E(errs.Invalid, "invalid_template", "template %q: kind is %q or %q (got %q)", name, KindEmail, KindNudge, kind).
			With("template", name).With("field", "kind")
	}
	return t, nil
}

// layoutNameRe is the NAME of a layout, stored as layouts/NAME.
var layoutNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// layoutBlock returns the layout an email template's "layout" block names:
// plain text, the NAME of templates/layouts/NAME.html.
func layoutBlock(name string, ht *htmltemplate.Template) (string, error) {
	block := ht.Lookup("layout")
	if block == nil {
		return DefaultLayoutName, nil
	}
	var b strings.Builder
	if err := block.Execute(&b, nil); err != nil {
		return "", invalid(name, "the \"layout\" block must be the plain name of a layout: %v", err)
	}
	layout := strings.TrimSpace(b.String())
	if !layoutNameRe.MatchString(layout) {
		return "", invalid(name, "the \"layout\" block names a layout as templates/layouts/NAME.html does: NAME alone (got %q)", layout)
	}
	return "layouts/" + layout, nil
}

// Checker validates templates for the campaign store (campaign.TemplateChecker).
type Checker struct{}

// CheckTemplate parses a template of the named kind, refusing it as Parse
// does, a layout as CheckLayout does. It returns the layout an email
// template asks for.
func (Checker) CheckTemplate(name, kind, source string) (string, error) {
	if Kind(kind) == KindLayout {
		return "", CheckLayout(name, source)
	}
	t, err := Parse(name, Kind(kind), source)
	if err != nil {
		return "", err
	}
	return t.Layout, nil
}

// sampleEmail is the email template CheckLayout renders in a layout.
var sampleEmail = sync.OnceValue(func() *Template {
	t, err := Parse("sample", KindEmail, `{{define "subject"}}Checking in, {{.Contact.FirstName}}{{end}}
{{define "body"}}<p>Hi {{.Contact.FirstName}}, here is <a href="https://example.com/guide">a guide</a>.</p>{{end}}`)
	if err != nil {
		panic("render: the sample email is broken: " + err.Error())
	}
	return t
})

// CheckLayout parses a layout (see ParseLayout) and renders a sample email
// in it, signed and not, refusing a layout that would fail at send time.
func CheckLayout(name, source string) error {
	l, err := ParseLayout(name, source)
	if err != nil {
		return err
	}
	for _, signed := range []bool{true, false} {
		if _, err := sampleRenderer().email(sampleEmail(), SampleData(), 1, EmailOptions{SignAsCSM: signed, Layout: l}, true); err != nil {
			return invalid(name, "a sample email does not render in this layout: %v", messageOf(err))
		}
	}
	return nil
}

// messageOf is the message of err without its errs code.
func messageOf(err error) string {
	var e *errs.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

// invalid is an invalid_template error about the template name.
func invalid(name, format string, args ...any) *errs.Error {
	return errs.E(errs.Invalid, "invalid_template", "template %q: %s", name, fmt.Sprintf(format, args...)).With("template", name)
}

// templateError turns a parse or execution error of template name into an
// invalid_template error with the line it names, if any. The text of such an
// error is about the author's own template, so it is safe to show them.
func templateError(name string, err error) error {
	var already *errs.Error
	if errors.As(err, &already) {
		return err
	}
	msg := err.Error()
	var line int
	// text/template: "template: NAME:LINE:COL: ...";
	// html/template: "html/template:NAME:LINE:COL: ...".
	for _, prefix := range []string{"template: " + name + ":", "html/template:" + name + ":"} {
		if rest, ok := strings.CutPrefix(msg, prefix); ok {
			num, tail, _ := strings.Cut(rest, ":")
			if n, err := strconv.Atoi(num); err == nil {
				line = n
			}
			if _, after, ok := strings.Cut(tail, ": "); ok && line > 0 {
				tail = after // drop the column, the line is in the details
			}
			msg = strings.TrimSpace(tail)
			break
		}
	}
	// "unclosed action started at NAME:LINE": where it started is the line
	// to look at, not the end of the text where it was found unclosed.
	if before, after, ok := strings.Cut(msg, " started at "+name+":"); ok {
		if n, err := strconv.Atoi(after); err == nil {
			msg, line = before, n
		}
	}
	if m := missingKeyRe.FindStringSubmatch(msg); m != nil {
		msg += fmt.Sprintf(`; a value that may be absent is read with {{index %s %q}}, which is empty when it is`, m[1], m[2])
	}
	e := invalid(name, "%s", msg)
	e.Err = err
	if line > 0 {
		e = e.With("line", line)
	}
	return e
}

// missingKeyRe finds "at <.Account.Traits.industry>: map has no entry for key "industry"".
var missingKeyRe = regexp.MustCompile(`at <(\.[\w.]+)\.\w+>: map has no entry for key "(\w+)"`)

// execHTML executes one block of set, a parse of email template t. With a
// size, the output buffer starts at the largest output so far: growing one
// from empty copies the output about as many times as it doubles.
func (t *Template) execHTML(set *htmltemplate.Template, block string, d any, size *atomic.Int64) (string, error) {
	var b strings.Builder
	if size != nil {
		b.Grow(int(size.Load()))
	}
	if err := set.ExecuteTemplate(&b, block, d); err != nil {
		return "", templateError(t.Name, err)
	}
	if n := int64(min(b.Len(), maxSizeHint)); size != nil && n > size.Load() {
		size.Store(n)
	}
	return b.String(), nil
}

// execText executes a text/template of template t (a nudge field).
func execText(t *Template, tt *texttemplate.Template, d any) (string, error) {
	var b strings.Builder
	if err := tt.Execute(&b, d); err != nil {
		return "", templateError(t.Name, err)
	}
	return b.String(), nil
}
