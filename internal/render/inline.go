package render

import (
	"regexp"
	"slices"
	"strings"

	"github.com/andybalholm/cascadia"
	"github.com/vanng822/css"
	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// CSS inlining. Many mail clients ignore <style>, so the rules of a
// document's <style> elements are copied into the style attributes of the
// elements they match, with CSS's cascade (specificity, source order,
// !important, the element's own style). What cannot be inlined is left as
// go-premailer leaves it: rules with dynamic pseudo-classes, pseudo-elements
// or "*", @media and other at-rules stay in one <style> in the head, their
// declarations made !important so that they still win over the inlined ones.
// Pixel widths and heights of images and table cells are also copied to the
// width and height attributes that Outlook reads.
//
// It is built from go-premailer's parts (vanng822/css parses the CSS,
// cascadia matches selectors) but split in two, because go-premailer parses
// the CSS and compiles every selector again for each document, ~300µs a
// message: compileStylesheet does that once per distinct stylesheet (cached
// per template, see styleCache), and apply only matches the compiled
// selectors against each message's own parsed document, trying each element
// only against the rules that can match its tag, id or classes. Matching
// every message keeps the result exact whatever the data does to the
// document (conditionals, loops, a CSM's signature HTML).

// stylesheet is the compiled form of a document's inlinable CSS.
type stylesheet struct {
	rules    []styleRule // in increasing precedence
	leftover string      // CSS that stays in a <style> element; "" if none

	// Rules indexed by what the element they match must be: an element is
	// only tried against the rules of its tag, id and classes, and those
	// that require none of these (like a browser's rule hash).
	byTag, byID, byClass map[string][]int
	always               []int
}

type styleRule struct {
	text      string // the selector as written
	sel       cascadia.Sel
	spec      cascadia.Specificity
	important bool
	order     int
	decls     []declaration
}

type declaration struct{ prop, value string }

// notInlinable matches selectors that only mean something in a live
// browser, or that premailer leaves in the head too.
var notInlinable = regexp.MustCompile(`(?i):{1,2}(visited|active|hover|focus|focus-within|focus-visible|link|any-link|root|target|checked|disabled|enabled|in-range|out-of-range|invalid|valid|lang|after|before|selection|placeholder|first-line|first-letter|marker|-webkit-|-moz-|-ms-)|\*`)

// compileStylesheet parses CSS (the concatenated text of a document's
// inlinable <style> elements). It never fails: what it cannot inline it
// keeps as leftover, for the mail client to make of it what it can.
func compileStylesheet(text string) *stylesheet {
	s := &stylesheet{}
	var left strings.Builder
	order := 0
	for _, r := range css.Parse(text).GetCSSRuleList() {
		if r.Type != css.STYLE_RULE {
			writeRule(&left, r, r.Type == css.MEDIA_RULE)
			continue
		}
		var normal, important []declaration
		for _, d := range r.Style.Styles {
			decl := declaration{strings.ToLower(strings.TrimSpace(d.Property)), d.Value.Text()}
			if d.Important {
				important = append(important, decl)
			} else {
				normal = append(normal, decl)
			}
		}
		for _, text := range splitSelectors(r.Style.Selector.Text()) {
			sel, err := cascadia.Parse(text)
			if err != nil || notInlinable.MatchString(text) {
				writeRule(&left, &css.CSSRule{Type: css.STYLE_RULE, Style: css.CSSStyleRule{
					Selector: css.NewCSSValue(text), Styles: r.Style.Styles}}, true)
				continue
			}
			if len(normal) > 0 {
				s.rules = append(s.rules, styleRule{text: text, sel: sel, spec: sel.Specificity(), order: order, decls: normal})
				order++
			}
			if len(important) > 0 {
				s.rules = append(s.rules, styleRule{text: text, sel: sel, spec: sel.Specificity(), important: true, order: order, decls: important})
				order++
			}
		}
	}
	slices.SortStableFunc(s.rules, func(a, b styleRule) int {
		switch {
		case a.important != b.important:
			if a.important {
				return 1
			}
			return -1
		case a.spec.Less(b.spec):
			return -1
		case b.spec.Less(a.spec):
			return 1
		}
		return a.order - b.order
	})
	s.leftover = left.String()
	s.byTag, s.byID, s.byClass = map[string][]int{}, map[string][]int{}, map[string][]int{}
	for i, r := range s.rules {
		switch kind, name := ruleKey(r.text); kind {
		case '#':
			s.byID[name] = append(s.byID[name], i)
		case '.':
			s.byClass[name] = append(s.byClass[name], i)
		case 't':
			s.byTag[name] = append(s.byTag[name], i)
		default:
			s.always = append(s.always, i)
		}
	}
	return s
}

// ruleKey returns what an element must have for selector sel to match it,
// read from sel's rightmost compound selector: its id ('#'), else a class
// ('.'), else its tag ('t'), else nothing (0). Only top-level parts count
// (not those in :not(...)), and a selector with escapes gets no key.
func ruleKey(sel string) (kind byte, name string) {
	if strings.ContainsRune(sel, '\\') {
		return 0, ""
	}
	// Find the start of the rightmost compound: after the last combinator
	// outside brackets, parentheses and quotes.
	start, depth := 0, 0
	var quote byte
	for i := 0; i < len(sel); i++ {
		c := sel[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '(' || c == '[':
			depth++
		case c == ')' || c == ']':
			depth--
		case depth == 0 && (c == ' ' || c == '\t' || c == '\n' || c == '>' || c == '+' || c == '~'):
			start = i + 1
		}
	}
	compound := sel[start:]
	var tag, id, class string
	for i := 0; i < len(compound); {
		switch c := compound[i]; {
		case c == '#' || c == '.':
			j := i + 1 + identLen(compound[i+1:])
			if c == '#' && id == "" {
				id = compound[i+1 : j]
			} else if c == '.' && class == "" {
				class = compound[i+1 : j]
			}
			i = j
		case c == '[':
			i = skipBalanced(compound, i)
		case c == ':': // :pseudo, ::pseudo, :pseudo(args)
			i++
			if i < len(compound) && compound[i] == ':' {
				i++
			}
			i += identLen(compound[i:])
			if i < len(compound) && compound[i] == '(' {
				i = skipBalanced(compound, i)
			}
		case i == 0 && identLen(compound) > 0:
			n := identLen(compound)
			tag = strings.ToLower(compound[:n])
			i = n
		default:
			i++
		}
	}
	switch {
	case id != "":
		return '#', id
	case class != "":
		return '.', class
	case tag != "":
		return 't', tag
	}
	return 0, ""
}

// skipBalanced returns the index just after the bracket or parenthesis that
// closes the one at s[i], or len(s).
func skipBalanced(s string, i int) int {
	depth := 0
	var quote byte
	for ; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '(' || c == '[':
			depth++
		case c == ')' || c == ']':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return len(s)
}

// identLen is the length of the CSS identifier s starts with.
func identLen(s string) int {
	n := 0
	for n < len(s) {
		c := s[n]
		if c == '-' || c == '_' || c >= 0x80 || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') {
			n++
			continue
		}
		break
	}
	return n
}

// splitSelectors splits a selector list at its top-level commas (not those
// in brackets, parentheses or quotes).
func splitSelectors(list string) []string {
	var out []string
	depth, start := 0, 0
	var quote byte
	for i := 0; i < len(list); i++ {
		c := list[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '(' || c == '[':
			depth++
		case c == ')' || c == ']':
			depth--
		case c == ',' && depth == 0:
			out = append(out, strings.TrimSpace(list[start:i]))
			start = i + 1
		}
	}
	out = append(out, strings.TrimSpace(list[start:]))
	return slices.DeleteFunc(out, func(s string) bool { return s == "" })
}

// writeRule writes a rule back as CSS; important marks its declarations
// !important, so that leftovers win over the inlined styles.
func writeRule(b *strings.Builder, r *css.CSSRule, important bool) {
	if r.Type != css.STYLE_RULE {
		b.WriteString(r.Type.Text())
		if r.Style.Selector != nil {
			if sel := r.Style.Selector.Text(); sel != "" {
				b.WriteByte(' ')
				b.WriteString(sel)
			}
		}
		switch {
		case len(r.Rules) > 0: // @media, @keyframes...
			b.WriteString("{\n")
			for _, sub := range r.Rules {
				writeRule(b, sub, important && r.Type == css.MEDIA_RULE)
			}
			b.WriteString("}\n")
			return
		case len(r.Style.Styles) == 0: // @import, @charset
			b.WriteString(";\n")
			return
		}
		important = false // @font-face, @page
	} else {
		b.WriteString(r.Style.Selector.Text())
	}
	b.WriteString(" {")
	for i, d := range r.Style.Styles {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(d.Property)
		b.WriteByte(':')
		b.WriteString(d.Value.Text())
		if important || d.Important {
			b.WriteString(" !important")
		}
	}
	b.WriteString("}\n")
}

// takeStyles removes the inlinable <style> elements of doc (those for all
// media) and returns their CSS, joined.
func takeStyles(doc *html.Node) string {
	var styles []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			if c.Type == html.ElementNode && c.DataAtom == atom.Style {
				if media := attr(c, "media"); media == "" || strings.EqualFold(media, "all") {
					styles = append(styles, c)
				}
				continue
			}
			walk(c)
		}
	}
	walk(doc)
	var b strings.Builder
	for _, st := range styles {
		for c := st.FirstChild; c != nil; c = c.NextSibling {
			b.WriteString(c.Data)
		}
		b.WriteByte('\n')
		st.Parent.RemoveChild(st)
	}
	return b.String()
}

// apply inlines s into doc, whose <style> elements takeStyles removed.
func (s *stylesheet) apply(doc *html.Node) {
	if len(s.rules) > 0 {
		var candidates []int
		var matched []*styleRule
		var walk func(*html.Node)
		walk = func(n *html.Node) {
			for c := n.FirstChild; c != nil; c = c.NextSibling {
				if c.Type != html.ElementNode || c.DataAtom == atom.Head {
					continue
				}
				candidates = s.candidates(c, candidates[:0])
				matched = matched[:0]
				for _, i := range candidates {
					if s.rules[i].sel.Match(c) {
						matched = append(matched, &s.rules[i])
					}
				}
				if len(matched) > 0 {
					inlineRules(c, matched)
				}
				walk(c)
			}
		}
		walk(doc)
	}
	if s.leftover != "" {
		if head := find(doc, atom.Head); head != nil {
			st := &html.Node{Type: html.ElementNode, Data: "style", DataAtom: atom.Style,
				Attr: []html.Attribute{{Key: "type", Val: "text/css"}}}
			st.AppendChild(&html.Node{Type: html.TextNode, Data: s.leftover})
			head.AppendChild(st)
		}
	}
}

// candidates appends to buf the indexes of the rules that may match n, in
// increasing precedence.
func (s *stylesheet) candidates(n *html.Node, buf []int) []int {
	buf = append(buf, s.always...)
	buf = append(buf, s.byTag[n.Data]...)
	for _, a := range n.Attr {
		if a.Namespace != "" {
			continue
		}
		switch a.Key {
		case "id":
			buf = append(buf, s.byID[a.Val]...)
		case "class":
			for _, c := range strings.Fields(a.Val) {
				buf = append(buf, s.byClass[c]...)
			}
		}
	}
	slices.Sort(buf)
	return slices.Compact(buf) // an element may name a class twice
}

// inlineRules sets n's style attribute from the rules that match it (in
// increasing precedence) and its own style, with CSS's cascade: normal rule
// declarations, then the element's own, then !important rule declarations,
// then the element's own !important ones.
func inlineRules(n *html.Node, rules []*styleRule) {
	var own, ownImportant []declaration
	styleIdx := -1
	for i, a := range n.Attr {
		if a.Namespace == "" && a.Key == "style" {
			styleIdx = i
			for _, d := range css.ParseBlock(a.Val) {
				decl := declaration{strings.ToLower(d.Property), d.Value.Text()}
				if d.Important {
					ownImportant = append(ownImportant, decl)
				} else {
					own = append(own, decl)
				}
			}
		}
	}
	// Each property appears once, at the place it was last set: a shorthand
	// set after a longhand must come after it to win, and vice versa.
	props := make([]declaration, 0, 16)
	set := func(ds []declaration) {
		for _, d := range ds {
			for j := range props {
				if props[j].prop == d.prop {
					props = append(props[:j], props[j+1:]...)
					break
				}
			}
			props = append(props, d)
		}
	}
	i := 0
	for ; i < len(rules) && !rules[i].important; i++ {
		set(rules[i].decls)
	}
	set(own)
	for ; i < len(rules); i++ {
		set(rules[i].decls)
	}
	set(ownImportant)

	size := 0
	for _, p := range props {
		size += len(p.prop) + len(p.value) + 2
	}
	var b strings.Builder
	b.Grow(size)
	for j, p := range props {
		if j > 0 {
			b.WriteByte(';')
		}
		b.WriteString(p.prop)
		b.WriteByte(':')
		b.WriteString(p.value)
		if (p.prop == "width" || p.prop == "height") && sizedByAttribute(n) {
			sizeAttribute(n, p.prop, p.value)
		}
	}
	if styleIdx >= 0 {
		n.Attr[styleIdx].Val = b.String()
	} else {
		n.Attr = append(n.Attr, html.Attribute{Key: "style", Val: b.String()})
	}
}

// sizedByAttribute tells whether Outlook sizes n by its width and height
// attributes rather than by CSS.
func sizedByAttribute(n *html.Node) bool {
	switch n.DataAtom {
	case atom.Img, atom.Table, atom.Td, atom.Th:
		return true
	}
	return false
}

// sizeAttribute copies a CSS pixel width or height to the attribute of the
// same name, unless the element already has one.
func sizeAttribute(n *html.Node, prop, value string) {
	px, ok := strings.CutSuffix(value, "px")
	if !ok || px == "" || strings.TrimLeft(px, "0123456789") != "" {
		return
	}
	if attr(n, prop) == "" {
		n.Attr = append(n.Attr, html.Attribute{Key: prop, Val: px})
	}
}

// attr returns n's attribute key, or "".
func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Namespace == "" && a.Key == key {
			return a.Val
		}
	}
	return ""
}

// find returns the first element of kind a in document order, or nil.
func find(n *html.Node, a atom.Atom) *html.Node {
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && c.DataAtom == a {
			return c
		}
		if f := find(c, a); f != nil {
			return f
		}
	}
	return nil
}
