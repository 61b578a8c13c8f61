package render

import (
	"strings"

	"golang.org/x/net/html"
)

// scanner reads a page's tokens as html.Tokenizer does, for the plain markup
// that templates and layouts write: tags whose names are letters and digits,
// attribute values in quotes, ordinary comments, a doctype, <style> and
// <title> content. It works on the page's string in place, without the
// tokenizer's per-byte reads and copies: the tokenizer was the largest part
// of streamPage. At anything else (a stray "<", an unquoted or oddly escaped
// attribute value, a bogus comment, another raw-text element...) it stops
// with ok false, and the page goes through the parser. That keeps it exactly
// the tokenizer's reading of what it accepts, which the stream's tests hold
// it to token by token (sameTokens) and through parsePage.
type scanner struct {
	page    string
	pos     int
	rawTag  string    // "style" or "title" after its start tag: its content is text up to its end tag
	raw     string    // the current token as written
	data    string    // a text token's text as written; a tag's lower-cased name
	textRaw bool      // the text is <style> content: no references
	attrs   []rawAttr // a start tag's, in raw
}

// newScanner returns a scanner over page, or false for a page with NUL
// bytes, which the parser drops or replaces by context.
func newScanner(page string) (*scanner, bool) {
	if strings.IndexByte(page, 0) >= 0 {
		return nil, false
	}
	return &scanner{page: page}, true
}

// next reads the next token: html.ErrorToken at the end of the page; ok is
// false where the scanner cannot vouch for the tokenizer's reading.
func (z *scanner) next() (tt html.TokenType, ok bool) {
	start := z.pos
	z.attrs = z.attrs[:0]
	z.textRaw = false
	if start == len(z.page) {
		z.raw = ""
		return html.ErrorToken, true
	}
	if z.rawTag != "" {
		end := rawTextEnd(z.page, start, z.rawTag)
		if end < 0 {
			return 0, false
		}
		z.textRaw = z.rawTag == "style" // a title's text may hold references
		z.rawTag = ""
		if end > start {
			return z.text(start, end), true
		}
	}
	rest := z.page[start:]
	if rest[0] != '<' {
		i := strings.IndexByte(rest, '<')
		if i < 0 {
			i = len(rest)
		}
		return z.text(start, start+i), true
	}
	if len(rest) < 2 {
		return 0, false
	}
	switch c := rest[1]; {
	case isLetter(c):
		return z.startTag(start)
	case c == '/':
		return z.endTag(start)
	case c == '!':
		return z.declaration(start)
	}
	return 0, false // "<" as text, "<?": left to the tokenizer
}

// text makes page[start:end] the current token, a text token.
func (z *scanner) text(start, end int) html.TokenType {
	z.pos = end
	z.raw = z.page[start:end]
	z.data = z.raw
	return html.TextToken
}

// Text is the current text token's text as the tokenizer's Text has it:
// line breaks made "\n", references decoded (not in <style>).
func (z *scanner) Text() string {
	s := convertNewlines(z.data)
	if z.textRaw {
		return s
	}
	return html.UnescapeString(s)
}

// startTag reads a start tag at page[start:] ("<" and a letter), through
// rawAttrs, taking only names of letters and digits and attribute values
// in quotes.
func (z *scanner) startTag(start int) (html.TokenType, bool) {
	rest := z.page[start:]
	nameEnd, attrs, end := rawAttrs(rest, z.attrs) // empty: next reset it
	z.attrs = attrs
	if end == len(rest) || alnumLen(rest[1:nameEnd]) != nameEnd-1 {
		return 0, false // no ">", or an odd name
	}
	for _, a := range attrs {
		val := a.value(rest)
		if !plainKey(a.key) || a.quote == 0 && val != "" || !plainRefs(val) {
			return 0, false // an odd name, an unquoted value, references read by attribute rules
		}
	}
	name := strings.ToLower(rest[1:nameEnd])
	tt := html.StartTagToken
	if rest[end-1] == '/' { // not in a value: values are quoted
		tt = html.SelfClosingTagToken
	}
	switch {
	case name == "style" || name == "title":
		z.rawTag = name
	case rawTextElements[name]:
		return 0, false // raw text the stream does not take
	}
	z.pos = start + end + 1
	z.raw, z.data = rest[:end+1], name
	return tt, true
}

// TagName is the lower-cased name of the current tag and whether it has
// attributes.
func (z *scanner) TagName() (string, bool) { return z.data, len(z.attrs) > 0 }

// Attrs are the current start tag's attributes as the tokenizer's TagAttr
// gives them: keys lower-cased, values' line breaks made "\n" and their
// references decoded.
func (z *scanner) Attrs(dst []html.Attribute) []html.Attribute {
	for _, a := range z.attrs {
		if a.first { // the tokenizer keeps the first of a name
			dst = append(dst, html.Attribute{Key: a.key, Val: html.UnescapeString(convertNewlines(a.value(z.raw)))})
		}
	}
	return dst
}

// endTag reads an end tag at page[start:] ("</"), without attributes.
func (z *scanner) endTag(start int) (html.TokenType, bool) {
	p := z.page
	i := start + 2
	j := i + alnumLen(p[i:])
	if j == i || !isLetter(p[i]) {
		return 0, false
	}
	k := skipSpace(p, j)
	if k == len(p) || p[k] != '>' {
		return 0, false
	}
	z.pos = k + 1
	z.raw, z.data = p[start:k+1], strings.ToLower(p[i:j])
	return html.EndTagToken, true
}

// declaration reads a comment or a doctype at page[start:] ("<!").
func (z *scanner) declaration(start int) (html.TokenType, bool) {
	rest := z.page[start+2:]
	if strings.HasPrefix(rest, "--") {
		end := strings.Index(rest[2:], "-->")
		if end < 0 {
			return 0, false
		}
		data := rest[2 : 2+end]
		// Where the tokenizer ends such a comment elsewhere, or reads it
		// differently: "<!-->", "<!--->", "--!>", a dash before "-->".
		if strings.HasPrefix(data, ">") || strings.HasPrefix(data, "->") || strings.Contains(data, "--!>") ||
			strings.HasSuffix(data, "-") {
			return 0, false
		}
		z.pos = start + 2 + 2 + end + 3
		z.raw = z.page[start:z.pos]
		return html.CommentToken, true
	}
	if len(rest) >= 7 && equalFoldASCII(rest[:7], "doctype") {
		end := strings.IndexByte(rest, '>')
		if end < 0 {
			return 0, false
		}
		z.pos = start + 2 + end + 1
		z.raw = z.page[start:z.pos]
		return html.DoctypeToken, true
	}
	return 0, false // CDATA, a bogus comment
}

// rawTextEnd is where the raw text from page[start:] ends: at "</" and tag
// (in any case) followed by white space, "/" or ">"; -1 for none.
func rawTextEnd(page string, start int, tag string) int {
	for i := start; ; {
		j := strings.Index(page[i:], "</")
		if j < 0 {
			return -1
		}
		at := i + j
		n := at + 2 + len(tag)
		if n < len(page) && equalFoldASCII(page[at+2:n], tag) {
			switch page[n] {
			case ' ', '\n', '\r', '\t', '\f', '/', '>':
				return at
			}
		}
		i = at + 2
	}
}

// plainRefs tells whether the character references of an attribute value
// read the same in an attribute as in text (html.UnescapeString): numeric
// ones, and the named ones templates write, ended by ";". Others the
// tokenizer reads by rules of their own in an attribute.
func plainRefs(v string) bool {
	for {
		i := strings.IndexByte(v, '&')
		if i < 0 {
			return true
		}
		v = v[i+1:]
		if v == "" || !isAlnum(v[0]) {
			continue // "&#...", or a lone "&": the same either way
		}
		ok := false
		for _, ref := range []string{"amp;", "quot;", "lt;", "gt;", "apos;", "nbsp;"} {
			if strings.HasPrefix(v, ref) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
}

// convertNewlines makes "\r\n" and "\r" "\n", as the tokenizer does.
func convertNewlines(s string) string {
	if strings.IndexByte(s, '\r') < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n")
}

// alnumLen is the length of the tag name p starts with: the scanner's names
// are letters and digits.
func alnumLen(p string) int {
	i := 0
	for i < len(p) && isAlnum(p[i]) {
		i++
	}
	return i
}

func skipSpace(p string, i int) int {
	for i < len(p) && isHTMLSpace(p[i]) {
		i++
	}
	return i
}

// equalFoldASCII tells whether s is lower, a lower-case ASCII word, in any
// case: the tokenizer's comparison, which folds ASCII letters only.
func equalFoldASCII(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != lower[i] && c+('a'-'A') != lower[i] {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isAlnum(c byte) bool  { return isLetter(c) || '0' <= c && c <= '9' }

// plainKey tells whether key (lower-cased) is an attribute name the scanner
// takes: a letter, "_" or ":", then those, digits, "-" and ".".
func plainKey(key string) bool {
	if key == "" || !isLetter(key[0]) && key[0] != '_' && key[0] != ':' {
		return false
	}
	for i := 1; i < len(key); i++ {
		if c := key[i]; !isAlnum(c) && c != '-' && c != '_' && c != ':' && c != '.' {
			return false
		}
	}
	return true
}
