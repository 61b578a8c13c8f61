package render

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// The plain-text part is derived from the parsed HTML here rather than with
// an html2text library: the ones tried (inbucket/html2text, k3a/html2text)
// cost 65-150µs a message, half the render, mostly in regular expressions
// over every text node; this walk of the tree already parsed costs a few µs.
// It knows what an email needs: paragraphs and line breaks, list items,
// links as "text (URL)", image alt text, and nothing that is hidden
// (display:none, such as a preheader) or in the head.

// textPart returns the plain text of doc.
func textPart(doc *html.Node) string {
	w := &textWriter{}
	w.b.Grow(2048)
	w.walk(doc)
	return w.String()
}

type textWriter struct {
	b       strings.Builder
	breaks  int  // newlines owed before the next text (at most 2)
	space   bool // a space is owed before the next text
	pre     int  // depth of <pre>
	ordinal []int
}

// blockElements end the line before and after them; paragraphs end it with
// a blank line.
var blockElements = map[atom.Atom]int{
	atom.P: 2, atom.H1: 2, atom.H2: 2, atom.H3: 2, atom.H4: 2, atom.H5: 2, atom.H6: 2,
	atom.Ul: 2, atom.Ol: 2, atom.Table: 2, atom.Blockquote: 2, atom.Pre: 2, atom.Hr: 2,
	atom.Div: 1, atom.Tr: 1, atom.Li: 1, atom.Section: 1, atom.Article: 1, atom.Header: 1,
	atom.Footer: 1, atom.Center: 1, atom.Dl: 1, atom.Dt: 1, atom.Dd: 1, atom.Address: 1,
}

func (w *textWriter) walk(n *html.Node) {
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		switch c.Type {
		case html.TextNode:
			w.text(c.Data)
		case html.ElementNode:
			w.element(c)
		case html.DocumentNode:
			w.walk(c)
		}
	}
}

func (w *textWriter) element(n *html.Node) {
	switch n.DataAtom {
	case atom.Head, atom.Style, atom.Script, atom.Title, atom.Template, atom.Noscript:
		return
	case atom.Br:
		w.breaks = min(w.breaks+1, 2)
		return
	case atom.Img:
		if alt := strings.TrimSpace(attr(n, "alt")); alt != "" {
			w.text(alt)
		}
		return
	}
	if hidden(n) {
		return
	}
	gap := blockElements[n.DataAtom]
	if (n.DataAtom == atom.Ul || n.DataAtom == atom.Ol) && len(w.ordinal) > 0 {
		gap = 1 // a list in a list item
	}
	w.lineBreak(gap)
	switch n.DataAtom {
	case atom.Hr:
		w.text("----")
	case atom.Td, atom.Th:
		w.space = true
	case atom.Ol:
		w.ordinal = append(w.ordinal, 0)
		defer func() { w.ordinal = w.ordinal[:len(w.ordinal)-1] }()
	case atom.Ul:
		w.ordinal = append(w.ordinal, -1)
		defer func() { w.ordinal = w.ordinal[:len(w.ordinal)-1] }()
	case atom.Li:
		bullet := "-"
		if k := len(w.ordinal); k > 0 && w.ordinal[k-1] >= 0 {
			w.ordinal[k-1]++
			bullet = strconv.Itoa(w.ordinal[k-1]) + "."
		}
		w.text(bullet)
		w.space = true
	case atom.Pre:
		w.pre++
		defer func() { w.pre-- }()
	}
	w.walk(n)
	if n.DataAtom == atom.A {
		w.link(n)
	}
	w.lineBreak(gap)
}

// link writes the target of a link after its text, unless the text says it
// already. Only web and mail addresses are worth writing.
func (w *textWriter) link(n *html.Node) {
	href := strings.TrimSpace(attr(n, "href"))
	target := href
	if addr, ok := strings.CutPrefix(href, "mailto:"); ok {
		target, _, _ = strings.Cut(addr, "?")
	} else if !isWebURL(href) {
		return
	}
	if target == "" || strings.Contains(strings.TrimRight(innerText(n), "/"), strings.TrimRight(target, "/")) {
		return
	}
	w.space = true
	w.text("(" + target + ")")
}

// hidden tells whether n is not shown: the hidden attribute, or
// display:none (looked for after inlining, so a class that hides it counts).
func hidden(n *html.Node) bool {
	if hasAttr(n, "hidden") {
		return true
	}
	s := attr(n, "style")
	i := strings.Index(s, "display") // inlined styles are lower case
	if i < 0 {
		s = strings.ToLower(s)
		if i = strings.Index(s, "display"); i < 0 {
			return false
		}
	}
	return strings.HasPrefix(strings.ReplaceAll(strings.ToLower(s[i:]), " ", ""), "display:none")
}

func hasAttr(n *html.Node, key string) bool {
	for _, a := range n.Attr {
		if a.Namespace == "" && a.Key == key {
			return true
		}
	}
	return false
}

// innerText is the text of n's subtree, for comparing with a link's target.
func innerText(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			if c.Type == html.TextNode {
				b.WriteString(c.Data)
			}
			walk(c)
		}
	}
	walk(n)
	return strings.TrimSpace(b.String())
}

// lineBreak owes n newlines (a blank line for 2) before the next text.
func (w *textWriter) lineBreak(n int) {
	if n > w.breaks {
		w.breaks = n
	}
}

// text writes a text node's text, its white space collapsed (except in
// <pre>).
func (w *textWriter) text(s string) {
	if w.pre > 0 {
		w.flush(s != "")
		w.b.WriteString(s)
		return
	}
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		if isSpace(r) {
			w.space = true
			s = s[size:]
			continue
		}
		end := strings.IndexFunc(s, isSpace)
		if end < 0 {
			end = len(s)
		}
		w.flush(true)
		w.b.WriteString(s[:end])
		s = s[end:]
	}
}

// flush writes the breaks or the space owed, if text follows.
func (w *textWriter) flush(text bool) {
	if !text {
		return
	}
	switch {
	case w.b.Len() == 0:
	case w.breaks > 0:
		w.b.WriteString("\n\n"[:w.breaks])
	case w.space:
		w.b.WriteByte(' ')
	}
	w.breaks, w.space = 0, false
}

func isSpace(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\r', '\f', '\u00a0':
		return true
	}
	return false
}

func (w *textWriter) String() string {
	return strings.TrimSpace(w.b.String()) + "\n"
}
