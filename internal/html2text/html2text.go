// Package html2text turns a parsed HTML document into plain text: the text
// part of every email Tend sends.
//
// It is github.com/inbucket/html2text v1.0.0 (MIT, see LICENSE), cut down to
// the options Tend uses (the defaults: links as "text ( URL )", headings
// underlined, list items starred, tables as paragraphs) and made cheaper
// without changing its output: upstream collapsed the white space of every
// text node and the blank lines of the result with regular expressions and
// wrote the result a rune at a time, which made the text part the largest
// single cost of rendering an email. A test feeds both this package and
// upstream the same documents and requires the same text.
package html2text

import (
	"bytes"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// FromHTMLNode returns the text of doc (or of any node and its children).
func FromHTMLNode(doc *html.Node) string {
	var c Converter
	c.walk(doc)
	return c.String()
}

// walk feeds n and its descendants to c in document order.
func (c *Converter) walk(n *html.Node) {
	switch n.Type {
	case html.TextNode:
		c.Text(n.Data)
		return
	case html.ElementNode:
		c.Open(n.DataAtom, func(name string) string { return attrVal(n, name) })
	default:
		c.Other()
	}
	for ch := n.FirstChild; ch != nil; ch = ch.NextSibling {
		c.walk(ch)
	}
	if n.Type == html.ElementNode {
		c.Close()
	}
}

// Converter turns a document given as a stream of events (an element
// opening, text, another node, an element closing, in document order) into
// text: what FromHTMLNode does for a tree, for a caller that reads the
// document with the tokenizer and never builds one. The events must describe
// the tree html.Parse would build (an element opens and closes where that
// tree has it); a document where the parser would move or close elements
// implicitly must go through FromHTMLNode instead.
type Converter struct {
	root  textifier
	stack []frame
}

// frame is an open element.
type frame struct {
	tag  atom.Atom
	out  *textifier // where the element writes
	in   *textifier // where its children write: out, or a buffer of its own (headings, bold)
	skip bool       // its content is not text (style, script, head)

	// For a link: its href, and what it holds: the text of a lone text node,
	// the alt of a lone image.
	href     string
	children int
	text     string
	textOnly bool // the first child is a text node
	imgAlt   string
	imgOnly  bool // the first child is an img
}

// current is where text goes now, and whether it is skipped.
func (c *Converter) current() (*textifier, bool) {
	if n := len(c.stack); n > 0 {
		f := &c.stack[n-1]
		return f.in, f.skip
	}
	return &c.root, false
}

// child counts a child node of the innermost open element, for links.
func (c *Converter) child(text string, isText bool, img bool, alt string) {
	n := len(c.stack)
	if n == 0 {
		return
	}
	f := &c.stack[n-1]
	f.children++
	if f.children == 1 {
		f.textOnly, f.text = isText, text
		f.imgOnly, f.imgAlt = img, alt
	}
}

// Open is an element's start; attr returns the value of one of its
// attributes ("" when absent). Every Open needs its Close, void elements
// included.
func (c *Converter) Open(tag atom.Atom, attr func(name string) string) {
	ctx, skip := c.current()
	if tag == atom.Img {
		c.child("", false, true, attr("alt"))
	} else {
		c.child("", false, false, "")
	}
	f := frame{tag: tag, out: ctx, in: ctx, skip: skip}
	if skip {
		c.stack = append(c.stack, f)
		return
	}
	ctx.justClosedDiv = false
	switch tag {
	case atom.Br:
		ctx.emit("\n")
	case atom.H1, atom.H2, atom.H3:
		f.in = &textifier{}
	case atom.Blockquote:
		ctx.blockquoteLevel++
		ctx.prefix = strings.Repeat(">", ctx.blockquoteLevel) + " "
		ctx.emit("\n")
		if ctx.blockquoteLevel == 1 {
			ctx.emit("\n")
		}
	case atom.Div:
		if ctx.lineLength > 0 {
			ctx.emit("\n")
		}
	case atom.Li:
		ctx.emit("* ")
	case atom.B, atom.Strong:
		f.in = &textifier{endsWithSpace: true}
	case atom.A:
		f.href = attr("href")
	case atom.P, atom.Ul, atom.Table:
		ctx.emit("\n\n")
	case atom.Pre:
		ctx.isPre = true
	case atom.Style, atom.Script, atom.Head:
		f.skip = true // not text
	}
	c.stack = append(c.stack, f)
}

// Close is the end of the innermost open element.
func (c *Converter) Close() {
	n := len(c.stack)
	if n == 0 {
		return
	}
	f := c.stack[n-1]
	c.stack = c.stack[:n-1]
	if f.skip {
		return
	}
	ctx := f.out
	switch f.tag {
	case atom.H1, atom.H2, atom.H3:
		str := f.in.buf.String()
		dividerLen := 0
		for line := range strings.SplitSeq(str, "\n") {
			if lineLen := utf8.RuneCountInString(line); lineLen-1 > dividerLen {
				dividerLen = lineLen - 1
			}
		}
		divider := strings.Repeat("-", dividerLen)
		if f.tag == atom.H1 {
			divider = strings.Repeat("*", dividerLen)
		}
		if f.tag == atom.H3 {
			ctx.emit("\n\n" + str + "\n" + divider + "\n\n")
			return
		}
		ctx.emit("\n\n" + divider + "\n" + str + "\n" + divider + "\n\n")
	case atom.Blockquote:
		ctx.blockquoteLevel--
		ctx.prefix = strings.Repeat(">", ctx.blockquoteLevel)
		if ctx.blockquoteLevel > 0 {
			ctx.prefix += " "
		}
		ctx.emit("\n\n")
	case atom.Div:
		if !ctx.justClosedDiv {
			ctx.emit("\n")
		}
		ctx.justClosedDiv = true
	case atom.Li:
		ctx.emit("\n")
	case atom.B, atom.Strong:
		ctx.emit("*" + f.in.buf.String() + "*")
	case atom.A:
		// A link holding only an image reads as the image's alt text (the
		// image itself wrote nothing).
		if f.children == 1 && f.imgOnly && f.imgAlt != "" {
			ctx.emit(f.imgAlt)
		}
		linkText := "" // the text of a link holding a single text node
		if f.children == 1 && f.textOnly {
			linkText = f.text
		}
		if href := f.href; href != "" {
			href = strings.TrimPrefix(strings.TrimSpace(href), "mailto:")
			// No URL when it is the link's text, or empty.
			if href != "" && linkText != href {
				ctx.emit("( " + href + " )")
			}
		}
	case atom.P, atom.Ul, atom.Table:
		ctx.emit("\n\n")
	case atom.Pre:
		ctx.isPre = false
	}
}

// Text is a text node.
func (c *Converter) Text(data string) {
	c.child(data, true, false, "")
	ctx, skip := c.current()
	if skip {
		return
	}
	if !ctx.isPre {
		data = strings.TrimSpace(collapseSpacing(data))
	}
	ctx.emit(data)
}

// Other is a node that is neither an element nor text (a comment): it writes
// nothing, but a link holding one does not hold a lone text or image.
func (c *Converter) Other() { c.child("", false, false, "") }

// String is the text of what the converter was given.
func (c *Converter) String() string {
	return strings.TrimSpace(tidyLines(c.root.buf.Bytes()))
}

// textifier is where text is written, and the context the next text lands
// in.
type textifier struct {
	buf bytes.Buffer

	prefix          string // written after every line break (blockquotes)
	endsWithSpace   bool
	justClosedDiv   bool
	blockquoteLevel int
	lineLength      int // runes on the current line
	isPre           bool
}

func (ctx *textifier) emit(data string) {
	if data == "" {
		return
	}
	if ctx.blockquoteLevel == 0 {
		ctx.emitLine(data, data) // no breaking outside blockquotes: no slice to make
		return
	}
	for _, line := range ctx.breakLongLines(data) {
		ctx.emitLine(data, line)
	}
}

// emitLine writes line, a line of data (see breakLongLines).
func (ctx *textifier) emitLine(data, line string) {
	first, _ := utf8.DecodeRuneInString(line)
	last, _ := utf8.DecodeLastRuneInString(line)
	if !unicode.IsSpace(first) && !ctx.endsWithSpace && !strings.HasPrefix(data, ".") {
		ctx.buf.WriteByte(' ')
		ctx.lineLength++
	}
	ctx.endsWithSpace = unicode.IsSpace(last)
	if !utf8.ValidString(line) {
		// Upstream wrote each invalid byte as U+FFFD.
		line = string([]rune(line))
	}
	for {
		i := strings.IndexByte(line, '\n')
		if i < 0 {
			ctx.buf.WriteString(line)
			ctx.lineLength += utf8.RuneCountInString(line)
			break
		}
		ctx.buf.WriteString(line[:i+1])
		line = line[i+1:]
		ctx.lineLength = 0
		ctx.buf.WriteString(ctx.prefix)
	}
}

const maxLineLen = 74

// breakLongLines breaks data into lines of at most maxLineLen runes; emit
// calls it in blockquotes only.
func (ctx *textifier) breakLongLines(data string) []string {
	var (
		ret      = []string{}
		runes    = []rune(data)
		l        = len(runes)
		existing = ctx.lineLength
	)
	if existing >= maxLineLen {
		ret = append(ret, "\n")
		existing = 0
	}
	for l+existing > maxLineLen {
		i := maxLineLen - existing
		for i >= 0 && !unicode.IsSpace(runes[i]) {
			i--
		}
		if i == -1 {
			// No spaces, so go the other way.
			i = maxLineLen - existing
			for i < l && !unicode.IsSpace(runes[i]) {
				i++
			}
		}
		ret = append(ret, string(runes[:i])+"\n")
		for i < l && unicode.IsSpace(runes[i]) {
			i++
		}
		runes = runes[i:]
		l = len(runes)
		existing = 0
	}
	if len(runes) > 0 {
		ret = append(ret, string(runes))
	}
	return ret
}

// collapseSpacing replaces each run of spaces, tabs, CRs and LFs with one
// space (upstream's `[ \r\n\t]+` → " ").
func collapseSpacing(s string) string {
	isSpacing := func(c byte) bool { return c == ' ' || c == '\r' || c == '\n' || c == '\t' }
	// Most text nodes need no change: a run of one space only.
	clean := true
	for i := 0; i < len(s); i++ {
		if isSpacing(s[i]) && (s[i] != ' ' || i+1 < len(s) && isSpacing(s[i+1])) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		if !isSpacing(s[i]) {
			b.WriteByte(s[i])
			i++
			continue
		}
		b.WriteByte(' ')
		for i < len(s) && isSpacing(s[i]) {
			i++
		}
	}
	return b.String()
}

// tidyLines drops the space after each line feed and makes each run of two
// or more line feeds two: upstream's ReplaceAll("\n ", "\n") and then
// `\n\n+` → "\n\n", in one pass.
func tidyLines(b []byte) string {
	var out strings.Builder
	out.Grow(len(b))
	feeds := 0 // line feeds just written
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\n' {
			out.WriteByte(c)
			feeds = 0
			continue
		}
		if i+1 < len(b) && b[i+1] == ' ' {
			i++ // "\n " is "\n"
		}
		if feeds < 2 {
			out.WriteByte('\n')
		}
		feeds++
	}
	return out.String()
}

// attrVal is the value of node's attribute name, or "".
func attrVal(node *html.Node, name string) string {
	for _, a := range node.Attr {
		if a.Key == name {
			return a.Val
		}
	}
	return ""
}
