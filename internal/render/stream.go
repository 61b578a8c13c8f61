package render

import (
	"strings"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"

	"github.com/tendhq/tend/internal/html2text"
)

// The last step of rendering an email (the text part, tracked links, the
// open pixel) needs the page as html.Parse sees it. Parsing builds a tree,
// through the HTML5 algorithm that repairs any markup, and writing it back
// out serialises every node again: together more than half the CPU time of
// rendering. An email whose markup needs no repair — every element closed
// in order, nothing the parser would move, close or ignore — is one the
// tokenizer alone reads as the parser would: streamPage does the whole step
// in one pass over its tokens, copying them to the output as they are except
// for the rewritten links and the pixel, and feeding them to the text
// converter as events. The tokens come from scanner (scan.go), which reads
// the plain markup templates write as html.Tokenizer does, at a fraction of
// its cost. At the first token either cannot vouch for, the stream gives
// up, and the email goes through html.Parse as before. The default layout
// and well-written templates never need it; tests hold streamPage to the
// parsed path's text, links and document, and the scanner to the
// tokenizer, for any page they accept.

// streamed is the result of streamPage.
type streamed struct {
	html, text string
	links      []string
}

// streamPage renders page's text part, rewrites its links with track (see
// linkTracker) and adds the pixel at src (none when src is ""), without
// building a tree. ok is false when the page needs the parser.
func streamPage(page string, track func(string) (string, bool), pixel string) (out streamed, ok bool) {
	z, ok := newScanner(page)
	if !ok {
		return streamed{}, false
	}
	s := pageStream{z: z, links: linkTracker{track: track}}
	s.out.Grow(len(page) + len(page)/2)
	if !s.run(pixel) {
		return streamed{}, false
	}
	return streamed{html: s.out.String(), text: s.text.String() + "\n", links: s.links.links}, true
}

type pageStream struct {
	z     *scanner
	out   strings.Builder
	text  html2text.Converter
	stack []atom.Atom
	links linkTracker

	pending strings.Builder // text not yet given to the converter (the parser joins adjacent text)
	attrs   []html.Attribute
	sawHTML bool
	sawHead bool
	sawBody bool
	openP   int // <p> elements open
	openA   int // <a> elements open
}

func (s *pageStream) run(pixel string) bool {
	for {
		tt, ok := s.z.next()
		if !ok {
			return false
		}
		if tt != html.TextToken {
			s.flushText()
		}
		switch tt {
		case html.ErrorToken:
			// The page must have ended with </html>, everything closed
			// (a body is only taken inside <html>).
			return s.sawBody && len(s.stack) == 0
		case html.TextToken:
			s.out.WriteString(s.z.raw)
			text := s.z.Text()
			if !s.textAllowed(text) {
				return false
			}
			s.pending.WriteString(text)
		case html.CommentToken:
			s.out.WriteString(s.z.raw)
			s.text.Other()
		case html.DoctypeToken:
			if s.sawHTML || len(s.stack) > 0 {
				return false // ignored by the parser past the start
			}
			s.out.WriteString(s.z.raw)
		case html.StartTagToken, html.SelfClosingTagToken:
			if !s.start(tt == html.SelfClosingTagToken) {
				return false
			}
		case html.EndTagToken:
			name, _ := s.z.TagName()
			a := atom.Lookup([]byte(name))
			n := len(s.stack)
			if n == 0 || s.stack[n-1] != a {
				return false // not the innermost open element: the parser would repair
			}
			if a == atom.Body && pixel != "" {
				writeTag(&s.out, "img", pixelAttrs(pixel), true)
			}
			s.out.WriteString(s.z.raw)
			s.pop(a)
		}
	}
}

// textAllowed tells whether text can stand where it is: anywhere in the
// body, but only white space between the elements of the document and of a
// table (the parser moves other text out of a table, or opens the body for
// it).
func (s *pageStream) textAllowed(text string) bool {
	top := atom.Atom(0)
	if n := len(s.stack); n > 0 {
		top = s.stack[n-1]
	}
	switch top {
	case 0, atom.Html, atom.Head, atom.Table, atom.Tbody, atom.Thead, atom.Tfoot, atom.Tr:
		return len(strings.TrimLeft(text, " \t\n\f\r")) == 0
	}
	return true
}

func (s *pageStream) flushText() {
	if s.pending.Len() > 0 {
		s.text.Text(s.pending.String())
		s.pending.Reset()
	}
}

// start handles a start tag.
func (s *pageStream) start(selfClosing bool) bool {
	name, hasAttr := s.z.TagName()
	a := atom.Lookup([]byte(name))
	void := voidElements[a]
	if a == 0 || selfClosing && !void || !s.allowed(a) {
		return false
	}
	s.attrs = s.attrs[:0]
	if hasAttr && (a == atom.A || a == atom.Area || a == atom.Img) {
		s.attrs = s.z.Attrs(s.attrs)
	}
	rewritten := false
	if a == atom.A || a == atom.Area {
		for i, at := range s.attrs {
			if at.Key != "href" {
				continue
			}
			if to, ok := s.links.rewrite(at.Val); ok {
				// A copy: the text part reads the original href from s.attrs.
				attrs := append([]html.Attribute(nil), s.attrs...)
				attrs[i].Val = to
				writeTag(&s.out, name, attrs, selfClosing)
				rewritten = true
			}
			break
		}
	}
	if !rewritten {
		s.out.WriteString(s.z.raw)
	}

	s.text.Open(a, func(key string) string {
		for _, at := range s.attrs {
			if at.Key == key {
				return at.Val
			}
		}
		return ""
	})
	if void {
		s.text.Close()
		return true
	}
	s.stack = append(s.stack, a)
	switch a {
	case atom.Html:
		s.sawHTML = true
	case atom.Head:
		s.sawHead = true
	case atom.Body:
		s.sawBody = true
	case atom.P:
		s.openP++
	case atom.A:
		s.openA++
	}
	return true
}

// pop closes the innermost element, a.
func (s *pageStream) pop(a atom.Atom) {
	s.stack = s.stack[:len(s.stack)-1]
	switch a {
	case atom.P:
		s.openP--
	case atom.A:
		s.openA--
	}
	s.text.Close()
}

// allowed tells whether an element a can start where the stream is, with
// the parser building exactly what the tokens say: no element implied,
// closed early, moved or ignored. It is strict (markup that would be fine
// is refused, and parsed instead) where the parser's rules are subtle.
func (s *pageStream) allowed(a atom.Atom) bool {
	n := len(s.stack)
	if n == 0 {
		return a == atom.Html && !s.sawHTML
	}
	switch top := s.stack[n-1]; top {
	case atom.Html:
		return a == atom.Head && !s.sawHead && !s.sawBody || a == atom.Body && !s.sawBody
	case atom.Head:
		return headElements[a]
	case atom.Table:
		return a == atom.Tbody || a == atom.Thead || a == atom.Tfoot || a == atom.Tr
	case atom.Tbody, atom.Thead, atom.Tfoot:
		return a == atom.Tr
	case atom.Tr:
		return a == atom.Td || a == atom.Th
	case atom.Title, atom.Style, atom.Script:
		return false // their content is text; the tokenizer knows
	default: // in the body
		switch {
		case a == atom.Li:
			// An open <li> would be closed by this one.
			return top == atom.Ul || top == atom.Ol
		case a == atom.A && s.openA > 0:
			return false // the parser closes the open one
		case s.openP > 0:
			return phrasing[a] // anything else closes the <p>
		case headings[a] && headings[top]:
			return false // the parser closes the open heading
		}
		return phrasing[a] || flow[a]
	}
}

var (
	voidElements = atomSet(atom.Area, atom.Br, atom.Hr, atom.Img, atom.Meta, atom.Link, atom.Base, atom.Wbr)
	headElements = atomSet(atom.Meta, atom.Link, atom.Base, atom.Title, atom.Style)
	headings     = atomSet(atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6)
	// phrasing are the elements a <p> may hold without the parser closing it.
	phrasing = atomSet(atom.A, atom.Abbr, atom.Area, atom.B, atom.Big, atom.Br, atom.Cite, atom.Code, atom.Em,
		atom.Font, atom.I, atom.Img, atom.Kbd, atom.Mark, atom.Q, atom.S, atom.Samp, atom.Small, atom.Span,
		atom.Strike, atom.Strong, atom.Sub, atom.Sup, atom.Tt, atom.U, atom.Var, atom.Wbr)
	// flow are the other elements the body may hold, outside a <p>.
	flow = atomSet(atom.Div, atom.P, atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6, atom.Ul, atom.Ol,
		atom.Li, atom.Blockquote, atom.Table, atom.Center, atom.Hr, atom.Style)
)

func atomSet(as ...atom.Atom) map[atom.Atom]bool {
	m := make(map[atom.Atom]bool, len(as))
	for _, a := range as {
		m[a] = true
	}
	return m
}

// writeTag writes a start tag with attrs, their values escaped.
func writeTag(b *strings.Builder, name string, attrs []html.Attribute, selfClosing bool) {
	b.WriteByte('<')
	b.WriteString(name)
	for _, a := range attrs {
		b.WriteByte(' ')
		b.WriteString(a.Key)
		b.WriteString(`="`)
		b.WriteString(html.EscapeString(a.Val))
		b.WriteByte('"')
	}
	if selfClosing {
		b.WriteString("/>")
		return
	}
	b.WriteByte('>')
}
