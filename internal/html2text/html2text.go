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
	var ctx textifier
	ctx.traverse(doc)
	return strings.TrimSpace(tidyLines(ctx.buf.Bytes()))
}

// textifier is the state of a walk: what was written, and the context the
// next text lands in.
type textifier struct {
	buf bytes.Buffer

	prefix          string // written after every line break (blockquotes)
	endsWithSpace   bool
	justClosedDiv   bool
	blockquoteLevel int
	lineLength      int // runes on the current line
	isPre           bool
}

func (ctx *textifier) handleElement(node *html.Node) {
	ctx.justClosedDiv = false

	switch node.DataAtom {
	case atom.Br:
		ctx.emit("\n")

	case atom.H1, atom.H2, atom.H3:
		var sub textifier
		sub.traverseChildren(node)
		str := sub.buf.String()
		dividerLen := 0
		for line := range strings.SplitSeq(str, "\n") {
			if lineLen := utf8.RuneCountInString(line); lineLen-1 > dividerLen {
				dividerLen = lineLen - 1
			}
		}
		divider := strings.Repeat("-", dividerLen)
		if node.DataAtom == atom.H1 {
			divider = strings.Repeat("*", dividerLen)
		}
		if node.DataAtom == atom.H3 {
			ctx.emit("\n\n" + str + "\n" + divider + "\n\n")
			return
		}
		ctx.emit("\n\n" + divider + "\n" + str + "\n" + divider + "\n\n")

	case atom.Blockquote:
		ctx.blockquoteLevel++
		ctx.prefix = strings.Repeat(">", ctx.blockquoteLevel) + " "
		ctx.emit("\n")
		if ctx.blockquoteLevel == 1 {
			ctx.emit("\n")
		}
		ctx.traverseChildren(node)
		ctx.blockquoteLevel--
		ctx.prefix = strings.Repeat(">", ctx.blockquoteLevel)
		if ctx.blockquoteLevel > 0 {
			ctx.prefix += " "
		}
		ctx.emit("\n\n")

	case atom.Div:
		if ctx.lineLength > 0 {
			ctx.emit("\n")
		}
		ctx.traverseChildren(node)
		if !ctx.justClosedDiv {
			ctx.emit("\n")
		}
		ctx.justClosedDiv = true

	case atom.Li:
		ctx.emit("* ")
		ctx.traverseChildren(node)
		ctx.emit("\n")

	case atom.B, atom.Strong:
		sub := textifier{endsWithSpace: true}
		sub.traverseChildren(node)
		ctx.emit("*" + sub.buf.String() + "*")

	case atom.A:
		linkText := ""
		// For a link holding a single text node, that text.
		if node.FirstChild != nil && node.FirstChild.NextSibling == nil && node.FirstChild.Type == html.TextNode {
			linkText = node.FirstChild.Data
		}
		// A link holding only an image reads as the image's alt text.
		if img := node.FirstChild; img != nil && node.LastChild == img && img.DataAtom == atom.Img {
			if alt := attrVal(img, "alt"); alt != "" {
				ctx.emit(alt)
			}
		} else {
			ctx.traverseChildren(node)
		}
		hrefLink := ""
		if href := attrVal(node, "href"); href != "" {
			href = strings.TrimPrefix(strings.TrimSpace(href), "mailto:")
			// No URL when it is the link's text, or empty.
			if href != "" && linkText != href {
				hrefLink = "( " + href + " )"
			}
		}
		ctx.emit(hrefLink)

	case atom.P, atom.Ul, atom.Table:
		ctx.emit("\n\n")
		ctx.traverseChildren(node)
		ctx.emit("\n\n")

	case atom.Pre:
		ctx.isPre = true
		ctx.traverseChildren(node)
		ctx.isPre = false

	case atom.Style, atom.Script, atom.Head:
		// Not text.

	default: // Tfoot, Th, Tr and Td among them
		ctx.traverseChildren(node)
	}
}

func (ctx *textifier) traverse(node *html.Node) {
	switch node.Type {
	case html.TextNode:
		data := node.Data
		if !ctx.isPre {
			data = strings.TrimSpace(collapseSpacing(data))
		}
		ctx.emit(data)
	case html.ElementNode:
		ctx.handleElement(node)
	default:
		ctx.traverseChildren(node)
	}
}

func (ctx *textifier) traverseChildren(node *html.Node) {
	for c := node.FirstChild; c != nil; c = c.NextSibling {
		ctx.traverse(c)
	}
}

func (ctx *textifier) emit(data string) {
	if data == "" {
		return
	}
	for _, line := range ctx.breakLongLines(data) {
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
}

const maxLineLen = 74

// breakLongLines breaks data into lines of at most maxLineLen runes, in
// blockquotes only.
func (ctx *textifier) breakLongLines(data string) []string {
	if ctx.blockquoteLevel == 0 {
		return []string{data}
	}
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
