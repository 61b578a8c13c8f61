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
	rawTag  string // "style" or "title" after its start tag: its content is text up to its end tag
	tt      html.TokenType
	raw     string // the current token as written
	data    string // a text token's text as written; a tag's lower-cased name
	textRaw bool   // the text is <style> content: no references
	attrs   []scanAttr
}

// scanAttr is an attribute as written: its key lower-cased, its value
// between the quotes.
type scanAttr struct{ key, val string }

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
		z.tt, z.raw = html.ErrorToken, ""
		return z.tt, true
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
	z.tt, z.raw = html.TextToken, z.page[start:end]
	z.data = z.raw
	return z.tt
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

// startTag reads a start tag at page[start:] ("<" and a letter).
func (z *scanner) startTag(start int) (html.TokenType, bool) {
	p := z.page
	i := start + 1
	j := nameEnd(p, i)
	name := strings.ToLower(p[i:j])
	tt := html.StartTagToken
	for {
		k := skipSpace(p, j)
		if k == len(p) {
			return 0, false
		}
		switch c := p[k]; {
		case c == '>':
			j = k + 1
		case c == '/' && k+1 < len(p) && p[k+1] == '>':
			tt, j = html.SelfClosingTagToken, k+2
		case isKeyStart(c) && (k > j || len(z.attrs) > 0 && k == j && (p[k-1] == '"' || p[k-1] == '\'')):
			var ok bool
			if j, ok = z.attr(k); !ok {
				return 0, false
			}
			continue
		default:
			return 0, false
		}
		break
	}
	switch name {
	case "style", "title":
		z.rawTag = name
	case "iframe", "noembed", "noframes", "noscript", "plaintext", "script", "textarea", "xmp":
		return 0, false // raw text the stream does not take
	}
	z.pos = j
	z.tt, z.raw, z.data = tt, p[start:j], name
	return tt, true
}

// attr reads an attribute at page[k:] and returns where it ends.
func (z *scanner) attr(k int) (int, bool) {
	p := z.page
	j := k
	for j < len(p) && isKeyByte(p[j]) {
		j++
	}
	key := p[k:j]
	val := ""
	if e := skipSpace(p, j); e < len(p) && p[e] == '=' {
		q := skipSpace(p, e+1)
		if q == len(p) || p[q] != '"' && p[q] != '\'' {
			return 0, false // unquoted
		}
		end := strings.IndexByte(p[q+1:], p[q])
		if end < 0 {
			return 0, false
		}
		val, j = p[q+1:q+1+end], q+1+end+1
		if !plainRefs(val) {
			return 0, false
		}
	}
	key = lowerASCII(key)
	for _, a := range z.attrs {
		if a.key == key {
			return j, true // the tokenizer keeps the first
		}
	}
	z.attrs = append(z.attrs, scanAttr{key: key, val: val})
	return j, true
}

// TagName is the lower-cased name of the current tag and whether it has
// attributes.
func (z *scanner) TagName() (string, bool) { return z.data, len(z.attrs) > 0 }

// Attrs are the current start tag's attributes as the tokenizer's TagAttr
// gives them: keys lower-cased, values' line breaks made "\n" and their
// references decoded.
func (z *scanner) Attrs(dst []html.Attribute) []html.Attribute {
	for _, a := range z.attrs {
		dst = append(dst, html.Attribute{Key: a.key, Val: html.UnescapeString(convertNewlines(a.val))})
	}
	return dst
}

// endTag reads an end tag at page[start:] ("</"), without attributes.
func (z *scanner) endTag(start int) (html.TokenType, bool) {
	p := z.page
	i := start + 2
	j := nameEnd(p, i)
	if j == i || !isLetter(p[i]) {
		return 0, false
	}
	k := skipSpace(p, j)
	if k == len(p) || p[k] != '>' {
		return 0, false
	}
	z.pos = k + 1
	z.tt, z.raw, z.data = html.EndTagToken, p[start:k+1], strings.ToLower(p[i:j])
	return z.tt, true
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
		z.tt, z.raw = html.CommentToken, z.page[start:z.pos]
		return z.tt, true
	}
	if len(rest) >= 7 && equalFoldASCII(rest[:7], "doctype") {
		end := strings.IndexByte(rest, '>')
		if end < 0 {
			return 0, false
		}
		z.pos = start + 2 + end + 1
		z.tt, z.raw = html.DoctypeToken, z.page[start:z.pos]
		return z.tt, true
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

// nameEnd is where the tag name from p[i:] ends: the scanner's names are
// letters and digits.
func nameEnd(p string, i int) int {
	for i < len(p) && isAlnum(p[i]) {
		i++
	}
	return i
}

func skipSpace(p string, i int) int {
	for i < len(p) {
		switch p[i] {
		case ' ', '\n', '\r', '\t', '\f':
			i++
		default:
			return i
		}
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

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isAlnum(c byte) bool  { return isLetter(c) || '0' <= c && c <= '9' }

// isKeyStart and isKeyByte are the attribute names the scanner takes.
func isKeyStart(c byte) bool { return isLetter(c) || c == '_' || c == ':' }
func isKeyByte(c byte) bool  { return isAlnum(c) || c == '-' || c == '_' || c == ':' || c == '.' }
