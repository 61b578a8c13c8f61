package render

import (
	"errors"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	texttemplate "text/template"

	"gopkg.in/yaml.v3"

	"github.com/tendhq/tend/internal/errs"
)

// Nudge is a rendered in-app nudge. Its fields are plain text: the product
// that shows it must escape them.
type Nudge struct {
	Title    string `json:"title"`
	Body     string `json:"body"`
	CTALabel string `json:"cta_label,omitempty"`
	CTAURL   string `json:"cta_url,omitempty"`
}

// The keys of a nudge template, in Nudge's order.
var nudgeKeys = [...]string{"title", "body", "cta_label", "cta_url"}

// nudgeTemplate holds one text/template per key (nil when absent) and the
// line of the YAML source where each one's text starts.
type nudgeTemplate struct {
	fields [len(nudgeKeys)]*texttemplate.Template
	lines  [len(nudgeKeys)]int
}

// parseNudge reads a nudge template: a YAML mapping with title and body, and
// optionally cta_label and cta_url (both or neither), each a template string.
func parseNudge(name, source string) (*nudgeTemplate, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(source), &doc); err != nil {
		e := invalid(name, "not YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
		e.Err = err
		if m := yamlLineRe.FindStringSubmatch(err.Error()); m != nil {
			n, _ := strconv.Atoi(m[1])
			return nil, e.With("line", n)
		}
		return nil, e
	}
	if len(doc.Content) == 0 {
		return nil, invalid(name, "is empty: a nudge has title, body, cta_label and cta_url")
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, invalid(name, "a nudge is a mapping with title, body, cta_label and cta_url").With("line", m.Line)
	}
	nt := &nudgeTemplate{}
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		idx := keyIndex(k.Value)
		switch {
		case idx < 0:
			return nil, invalid(name, "unknown key %q: a nudge has title, body, cta_label and cta_url", k.Value).
				With("line", k.Line).With("field", k.Value)
		case seen[k.Value]:
			return nil, invalid(name, "%s is given twice", k.Value).With("line", k.Line).With("field", k.Value)
		case v.Kind != yaml.ScalarNode || v.Tag == "!!null":
			return nil, invalid(name, "%s must be text", k.Value).With("line", k.Line).With("field", k.Value)
		}
		seen[k.Value] = true
		nt.lines[idx] = v.Line
		if v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			nt.lines[idx]++ // a block scalar's text starts below its | or >
		}
		tt, err := texttemplate.New(name).Option("missingkey=error").Funcs(funcs).Parse(v.Value)
		if err != nil {
			return nil, fieldError(templateError(name, err), k.Value, nt.lines[idx])
		}
		nt.fields[idx] = tt
	}
	for _, key := range []string{"title", "body"} {
		if !seen[key] {
			return nil, invalid(name, "has no %s", key).With("field", key)
		}
	}
	if seen["cta_label"] != seen["cta_url"] {
		return nil, invalid(name, "cta_label and cta_url go together: give both or neither").With("field", "cta_url")
	}
	return nt, nil
}

var yamlLineRe = regexp.MustCompile(`line (\d+)`)

func keyIndex(k string) int {
	for i, key := range nudgeKeys {
		if key == k {
			return i
		}
	}
	return -1
}

// fieldError names the field of a nudge template error and makes its line
// (counted within the field's text, which starts at line start of the YAML
// source) a line of the YAML source. A folded scalar's lines are approximate.
func fieldError(err error, field string, start int) error {
	var e *errs.Error
	if !errors.As(err, &e) {
		return err
	}
	line := start
	if n, ok := e.Details["line"].(int); ok {
		line += n - 1
	}
	return e.With("field", field).With("line", line)
}

// Nudge renders a nudge template for d.
func (r *Renderer) Nudge(t *Template, d Data) (Nudge, error) {
	if t.Kind != KindNudge || t.nudge == nil {
		return Nudge{}, invalid(t.Name, "is a %s template, not a nudge", t.Kind)
	}
	var out [len(nudgeKeys)]string
	for i, tt := range t.nudge.fields {
		if tt == nil {
			continue
		}
		s, err := execText(t, tt, d)
		if err != nil {
			return Nudge{}, fieldError(err, nudgeKeys[i], t.nudge.lines[i])
		}
		out[i] = strings.TrimSpace(s)
	}
	n := Nudge{Title: out[0], Body: out[1], CTALabel: out[2], CTAURL: out[3]}
	switch {
	case n.Title == "":
		return Nudge{}, invalid(t.Name, "title renders empty").With("field", "title")
	case n.Body == "":
		return Nudge{}, invalid(t.Name, "body renders empty").With("field", "body")
	case (n.CTALabel == "") != (n.CTAURL == ""):
		return Nudge{}, invalid(t.Name, "cta_label and cta_url must both render to text, or both be empty").With("field", "cta_url")
	case n.CTAURL != "" && !safeCTA(n.CTAURL):
		return Nudge{}, invalid(t.Name, "cta_url %q is not an http(s) URL or a path starting with /", n.CTAURL).With("field", "cta_url")
	}
	return n, nil
}

// safeCTA accepts an absolute http(s) URL or a path in the product
// ("/reports"), and nothing a product could run (javascript:, data:...).
func safeCTA(s string) bool {
	u, err := url.Parse(s)
	if err != nil {
		return false
	}
	if u.Scheme == "http" || u.Scheme == "https" {
		return u.Host != ""
	}
	return u.Scheme == "" && u.Host == "" && strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "//") && !strings.HasPrefix(s, `/\`)
}
