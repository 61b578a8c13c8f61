package render

import (
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/PuerkitoBio/goquery"
	"github.com/vanng822/go-premailer/premailer"
	"golang.org/x/net/html"
)

// CSS inlining, ahead of time. Many mail clients ignore <style>, so the
// rules of the layout's and the template's <style> elements are copied into
// the style attributes of the elements they match. That is go-premailer's
// job, but it costs ~300µs a document, too much for every message; so it is
// run once per template and layout, over their markup as written, and the
// result is what the html/templates are parsed from. Nothing is inlined per
// message.
//
// The markup is a template, not HTML: before premailer sees it, every action
// ({{...}}) is replaced by a placeholder word, so that its quotes and braces
// are not mangled by the HTML parser. Premailer's HTML is not used either:
// each start tag is tagged with an id, and the style (and Outlook's width and
// height) that premailer computes for the element of that id are spliced
// into the source's own start tag, the rest of the source kept as written.
// The <style> elements that premailer consumed are removed, and what it
// cannot inline (@media, :hover...) goes back in one <style> where the first
// of them was, its declarations made !important. Line numbers are kept, so
// that an error at send time names the author's line.
//
// What this cannot know, since it styles the template and not the rendered
// email:
//   - Markup that data produces is not styled by the stylesheet: the CSM's
//     signature_html, an action whose value is template.HTML. Their own
//     style attributes are kept, and they inherit what inherits (color,
//     font) from the layout's elements around them, which are styled.
//   - Rules are matched against the markup as written: both branches of an
//     {{if}} are there, a {{range}} body is there once, and a class, id or
//     attribute written by an action ({{.Tier}}-box) is not known, nor one
//     written against an action inside a tag ({{if .X}}class="a"{{end}}
//     reads as one odd attribute name). So structural selectors
//     (:first-child, :nth-child, p + p) and classes made by data do not
//     match as they would in the rendered email, and an element's style is
//     the same whichever branch or iteration it is in.
//   - Markup in other {{define}} blocks that the body calls with {{template}}
//     is not styled, nor a layout's markup outside its document when the
//     layout has more than one {{.Body}} (the body is then styled on its
//     own, without the layout around it).
//   - A <style> whose CSS contains an action is not inlined: it stays where
//     it is, for the clients that read <style>. So does one marked
//     data-premailer="ignore", premailer's own switch: the place for rules
//     meant for data markup, and for at-rules other than @media (premailer
//     writes @font-face back without its keyword).
//
// If inlining fails for a reason of its own (it should not), the template
// and layout are used as written, their <style> elements intact.

// inlined is what an email template is sent with in one layout: the
// template's set and the layout, parsed from their CSS-inlined sources.
type inlined struct {
	set    *htmltemplate.Template
	layout *htmltemplate.Template
	err    error // why the CSS could not be inlined (set and layout are then as written)
}

// maxInlinedLayouts bounds the layouts a template keeps an inlined copy for
// (each edit of the stored layout is a new one); past it, the copies are
// dropped and made again as they are used.
const maxInlinedLayouts = 8

// inlinedFor returns t inlined in layout l, made on first use.
func (t *Template) inlinedFor(l *Layout) *inlined {
	t.mu.RLock()
	in := t.inlined[l]
	t.mu.RUnlock()
	if in != nil {
		return in
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if in = t.inlined[l]; in != nil {
		return in
	}
	in = inlineTemplate(t, l)
	if t.inlined == nil {
		t.inlined = map[*Layout]*inlined{}
	}
	if len(t.inlined) >= maxInlinedLayouts {
		// Layouts edited since: start over with the ones in use now.
		clear(t.inlined)
	}
	t.inlined[l] = in
	return in
}

// inlineTemplate inlines the CSS of template t in layout l.
func inlineTemplate(t *Template, l *Layout) *inlined {
	asWritten := func(err error) *inlined {
		return &inlined{set: t.html, layout: l.t, err: err}
	}
	start, end, ok := bodyBlock(t.Source)
	if !ok {
		return asWritten(errors.New(`the "body" block was not found`))
	}
	layoutSrc, bodySrc, err := inlineCSS(l.source, t.Source[start:end])
	if err != nil {
		return asWritten(err)
	}
	set, err := htmltemplate.New(t.Name).Option("missingkey=error").Funcs(funcs).Parse(t.Source[:start] + bodySrc + t.Source[end:])
	if err != nil {
		return asWritten(err)
	}
	layout, err := htmltemplate.New(l.Name).Option("missingkey=error").Funcs(funcs).Parse(layoutSrc)
	if err != nil {
		return asWritten(err)
	}
	// html/template escapes a template on its first execution, where it can
	// still refuse it: do that now. The sources as written executed on the
	// sample data when they were parsed, so these should too.
	d := SampleData()
	for _, block := range []string{"subject", "body"} {
		if err := set.ExecuteTemplate(io.Discard, block, d); err != nil {
			return asWritten(err)
		}
	}
	if err := layout.Execute(io.Discard, LayoutData{Data: d, Subject: "Sample", Body: "<p>x</p>", SignAsCSM: true,
		UnsubscribeURL: "https://tend.invalid/u/x", PostalAddress: "1 Sample Street"}); err != nil {
		return asWritten(err)
	}
	return &inlined{set: set, layout: layout}
}

// inlineCSS inlines the CSS of a layout and of the body markup it wraps
// (both template source) and returns their new sources.
func inlineCSS(layoutSrc, bodySrc string) (layoutOut, bodyOut string, err error) {
	defer func() {
		if p := recover(); p != nil { // premailer's, on CSS it cannot take
			layoutOut, bodyOut, err = "", "", fmt.Errorf("premailer: %v", p)
		}
	}()
	prefix := placeholderPrefix(layoutSrc, bodySrc)
	lay, err := protect(layoutSrc, prefix, 0)
	if err != nil {
		return "", "", fmt.Errorf("layout: %w", err)
	}
	body, err := protect(bodySrc, prefix, len(lay.actions))
	if err != nil {
		return "", "", fmt.Errorf("body: %w", err)
	}
	ls, bs := scanHTML(lay.text, prefix), scanHTML(body.text, prefix)
	if ls.err != nil || bs.err != nil {
		return "", "", errors.Join(ls.err, bs.err)
	}

	// The document premailer sees: the layout, with the body where its one
	// {{.Body}} is (else after it).
	markedLayout, markedBody := ls.marked(lay.text, "l"), bs.marked(body.text, "b")
	doc := markedLayout + markedBody
	if i := lay.bodyAction(); i >= 0 {
		ph := lay.placeholder(i)
		if at := strings.Index(lay.text, ph); at >= 0 && ls.inText(at) {
			doc = strings.Replace(markedLayout, ph, markedBody, 1)
		}
	}
	root, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		return "", "", err
	}
	var styles []*html.Node // the marked <style> elements, in document order
	walkElements(root, func(n *html.Node) {
		if n.Data == "style" && attr(n, markAttr) != "" {
			styles = append(styles, n)
		}
	})
	if _, err := premailer.NewPremailer(goquery.NewDocumentFromNode(root), premailer.NewOptions()).Transform(); err != nil {
		return "", "", err
	}

	// Read back what premailer did, element by element, as edits of the
	// sources' start tags.
	sources := sourceSet{'l': {text: lay.text, scan: &ls}, 'b': {text: body.text, scan: &bs}}
	done := map[string]bool{}
	leftover := ""
	walkElements(root, func(n *html.Node) {
		id := attr(n, markAttr)
		if id == "" {
			if n.Data == "style" && n.Parent != nil && n.Parent.Data == "head" && n.FirstChild != nil && leftover == "" {
				leftover = n.FirstChild.Data // premailer's: what it could not inline
			}
			return
		}
		if done[id] { // the parser may clone an element (<b>, <a>...): the first counts
			return
		}
		done[id] = true
		if src, i := sources.of(id); src != nil {
			src.edits = append(src.edits, src.scan.tags[i].restyle(src.text, n)...)
		}
	})
	// The <style> elements premailer consumed are removed; the first is
	// replaced by the leftover, on one line, so that the lines after it keep
	// their numbers.
	first := true
	for _, st := range styles {
		if st.Parent != nil {
			continue // left alone: for other media, or CSS with an action
		}
		src, i := sources.of(attr(st, markAttr))
		if src == nil {
			continue
		}
		text := ""
		if first && leftover != "" {
			text = `<style type="text/css">` + strings.Join(strings.Fields(leftover), " ") + `</style>`
		}
		first = false
		tag := src.scan.tags[i]
		src.edits = append(src.edits, edit{tag.start, tag.elemEnd, text})
	}

	if layoutOut, err = lay.restore(applyEdits(lay.text, sources['l'].edits)); err != nil {
		return "", "", fmt.Errorf("layout: %w", err)
	}
	if bodyOut, err = body.restore(applyEdits(body.text, sources['b'].edits)); err != nil {
		return "", "", fmt.Errorf("body: %w", err)
	}
	return layoutOut, bodyOut, nil
}

// source is a protected source being edited.
type source struct {
	text  string
	scan  *scan
	edits []edit
}

type sourceSet map[byte]*source

// of returns the source and tag index of a marked element's id.
func (s sourceSet) of(id string) (*source, int) {
	if id == "" {
		return nil, 0
	}
	src := s[id[0]]
	i, err := strconv.Atoi(id[1:])
	if src == nil || err != nil || i < 0 || i >= len(src.scan.tags) {
		return nil, 0
	}
	return src, i
}

// markAttr is the attribute that ties an element of the document premailer
// sees to its start tag in the source.
const markAttr = "data-tend-el"

// protected is template source whose actions are replaced by placeholders:
// words of lower-case letters and digits that appear nowhere else, so that
// the HTML parser leaves them as they are, in text, attribute values and
// even where attribute names go.
type protected struct {
	text    string
	prefix  string
	first   int      // the number of the first placeholder
	actions []string // the actions, in order
}

func (p *protected) placeholder(i int) string {
	return p.prefix + strconv.Itoa(p.first+i) + "z"
}

// placeholderPrefix returns a prefix for placeholders that appears in
// none of srcs.
func placeholderPrefix(srcs ...string) string {
	prefix := "tendph"
	for slices.ContainsFunc(srcs, func(src string) bool { return strings.Contains(src, prefix) }) {
		prefix += "q"
	}
	return prefix
}

// protect replaces the actions of src by placeholders, numbered from first.
func protect(src, prefix string, first int) (protected, error) {
	p := protected{prefix: prefix, first: first}
	spans, err := templateActions(src)
	if err != nil {
		return p, err
	}
	var b strings.Builder
	b.Grow(len(src))
	last := 0
	for i, s := range spans {
		b.WriteString(src[last:s[0]])
		b.WriteString(p.placeholder(i))
		p.actions = append(p.actions, src[s[0]:s[1]])
		last = s[1]
	}
	b.WriteString(src[last:])
	p.text = b.String()
	return p, nil
}

// bodyAction returns the index of the action {{.Body}} when there is one
// and only one, else -1.
func (p *protected) bodyAction() int {
	found := -1
	for i, a := range p.actions {
		if actionText(a) == ".Body" {
			if found >= 0 {
				return -1
			}
			found = i
		}
	}
	return found
}

// restore puts the actions back in text (p.text edited), checking that
// each placeholder is there once, in order.
func (p *protected) restore(text string) (string, error) {
	re := regexp.MustCompile(regexp.QuoteMeta(p.prefix) + `(\d+)z`)
	var b strings.Builder
	last, want := 0, p.first
	for _, m := range re.FindAllStringSubmatchIndex(text, -1) {
		n, _ := strconv.Atoi(text[m[2]:m[3]])
		if n != want || n-p.first >= len(p.actions) {
			return "", fmt.Errorf("action %d is lost, repeated or moved", want-p.first)
		}
		b.WriteString(text[last:m[0]])
		b.WriteString(p.actions[n-p.first])
		last = m[1]
		want++
	}
	if want-p.first != len(p.actions) {
		return "", fmt.Errorf("action %d is lost", want-p.first)
	}
	b.WriteString(text[last:])
	return b.String(), nil
}

// templateActions returns the spans of the actions ({{...}}) in src, as
// text/template's lexer finds them: an action ends at the first }} outside
// its strings, raw strings, character constants and comment. src has
// already parsed as a template.
func templateActions(src string) ([][2]int, error) {
	var spans [][2]int
	for i := 0; ; {
		j := strings.Index(src[i:], "{{")
		if j < 0 {
			return spans, nil
		}
		start := i + j
		k := start + 2
		if k+1 < len(src) && src[k] == '-' && isTrimSpace(src[k+1]) {
			k += 2
		}
		if strings.HasPrefix(src[k:], "/*") {
			e := strings.Index(src[k+2:], "*/")
			if e < 0 {
				return nil, fmt.Errorf("unclosed comment at byte %d", start)
			}
			k += 2 + e + 2
		}
		end := -1
	scan:
		for k < len(src) {
			switch c := src[k]; c {
			case '"', '\'':
				k++
				for k < len(src) && src[k] != c {
					if src[k] == '\\' {
						k++
					}
					k++
				}
				k++
			case '`':
				e := strings.IndexByte(src[k+1:], '`')
				if e < 0 {
					break scan
				}
				k += 1 + e + 1
			case '}':
				if strings.HasPrefix(src[k:], "}}") {
					end = k + 2
					break scan
				}
				k++
			default:
				k++
			}
		}
		if end < 0 {
			return nil, fmt.Errorf("unclosed action at byte %d", start)
		}
		spans = append(spans, [2]int{start, end})
		i = end
	}
}

func isTrimSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// actionText is an action's text without its delimiters, trim markers and
// surrounding space: ".Body", "if .X", "end", "/* ... */".
func actionText(a string) string {
	s := a[2 : len(a)-2]
	if len(s) >= 2 && s[0] == '-' && isTrimSpace(s[1]) {
		s = s[2:]
	}
	if n := len(s); n >= 2 && s[n-1] == '-' && isTrimSpace(s[n-2]) {
		s = s[:n-2]
	}
	return strings.TrimSpace(s)
}

// bodyBlock returns the span of the content of the "body" block of
// template source src: between {{define "body"}} (or {{block "body" ...}})
// and its {{end}}.
func bodyBlock(src string) (start, end int, ok bool) {
	spans, err := templateActions(src)
	if err != nil {
		return 0, 0, false
	}
	depth, in := 0, false
	for _, s := range spans {
		text := actionText(src[s[0]:s[1]])
		word := text[:len(text)-len(strings.TrimLeft(text, "abcdefghijklmnopqrstuvwxyz"))]
		switch word {
		case "if", "range", "with", "block", "define":
			if fields := strings.Fields(text[len(word):]); depth == 0 && (word == "define" || word == "block") && len(fields) > 0 {
				if name, err := strconv.Unquote(fields[0]); err == nil && name == "body" {
					in, start = true, s[1]
				}
			}
			depth++
		case "end":
			depth--
			if depth == 0 && in {
				return start, s[0], true
			}
		}
	}
	return 0, 0, false
}

// scan is what scanHTML finds in protected template source.
type scan struct {
	tags []srcTag
	text [][2]int // the spans of text content (not in tags, comments or raw text elements)
	err  error
}

// srcTag is a start tag in the source.
type srcTag struct {
	start, end int // the tag, from < to >
	nameEnd    int // the end of its name
	elemEnd    int // a raw text element (<style>...): the end of its end tag; else end
	attrs      []rawAttr
	// actionStyle: its style attribute has an action; actionCSS: it is a
	// <style> whose CSS has one.
	actionStyle, actionCSS bool
}

// rawTextElements are read by the tokenizer as text up to their end tag.
var rawTextElements = map[string]bool{
	"style": true, "script": true, "title": true, "textarea": true, "xmp": true,
	"iframe": true, "noembed": true, "noframes": true, "noscript": true, "plaintext": true,
}

// scanHTML finds the start tags and text of protected source src with
// x/net/html's tokenizer, the one the parser uses.
func scanHTML(src, prefix string) scan {
	var s scan
	z := html.NewTokenizer(strings.NewReader(src))
	pos, raw := 0, -1
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			break
		}
		start := pos
		pos += len(z.Raw())
		switch tt {
		case html.StartTagToken, html.SelfClosingTagToken:
			tok := z.Token()
			nameLen, attrs, _ := rawAttrs(src[start:pos], nil)
			tag := srcTag{start: start, end: pos, nameEnd: start + nameLen, elemEnd: pos, attrs: attrs}
			// rawAttrs must read the attributes as the tokenizer did (which
			// keeps the first of those of the same name), or its spans are
			// wrong.
			var firsts []string
			for _, a := range tag.attrs {
				if a.first {
					firsts = append(firsts, a.key)
				}
			}
			if !slices.EqualFunc(firsts, tok.Attr, func(k string, a html.Attribute) bool { return k == a.Key }) {
				s.err = fmt.Errorf("the attributes of the tag at byte %d were misread", start)
				return s
			}
			if a := tag.attr("style"); a != nil {
				tag.actionStyle = strings.Contains(a.value(src[start:pos]), prefix)
			}
			s.tags = append(s.tags, tag)
			if tt == html.StartTagToken && rawTextElements[tok.Data] {
				raw = len(s.tags) - 1
			}
		case html.EndTagToken:
			if raw >= 0 {
				s.tags[raw].elemEnd = pos
				raw = -1
			}
		case html.TextToken:
			if raw < 0 {
				s.text = append(s.text, [2]int{start, pos})
				break
			}
			s.tags[raw].elemEnd = pos // in case its end tag is missing
			s.tags[raw].actionCSS = strings.Contains(src[start:pos], prefix)
		}
	}
	if pos != len(src) {
		s.err = fmt.Errorf("the tokenizer read %d bytes of %d", pos, len(src))
	}
	return s
}

// inText tells whether byte i of the source is in text content.
func (s *scan) inText(i int) bool {
	for _, t := range s.text {
		if t[0] <= i && i < t[1] {
			return true
		}
	}
	return false
}

// marked returns src with every start tag marked with its id (kind and
// index) for premailer. A style attribute with an action is left out (the
// rules go before it, see restyle), and a <style> with an action is marked
// for premailer to leave alone.
func (s *scan) marked(src, kind string) string {
	var b strings.Builder
	b.Grow(len(src) + len(s.tags)*24)
	last := 0
	for i, t := range s.tags {
		b.WriteString(src[last:t.nameEnd])
		b.WriteString(" " + markAttr + `="` + kind + strconv.Itoa(i) + `"`)
		if t.actionCSS {
			b.WriteString(` data-premailer="ignore"`)
		}
		last = t.nameEnd
		if t.actionStyle {
			a := t.attr("style")
			b.WriteString(src[last : t.start+a.start])
			last = t.start + a.end
		}
	}
	b.WriteString(src[last:])
	return b.String()
}

// rawAttr is an attribute as written in a start tag.
type rawAttr struct {
	key          string // lower case
	start, end   int    // the attribute in the tag's text
	vstart, vend int    // its value, without quotes
	quote        byte   // '"', '\'' or 0
	first        bool   // the first of its name, the one that counts
}

func (a *rawAttr) value(tag string) string { return tag[a.vstart:a.vend] }

func (t *srcTag) attr(key string) *rawAttr {
	for i := range t.attrs {
		if t.attrs[i].first && t.attrs[i].key == key {
			return &t.attrs[i]
		}
	}
	return nil
}

// rawAttrs reads a start tag as HTML's tokenizer does (WHATWG 13.2.5.8,
// 32-39), from its "<": it returns the length of "<name", the attributes
// (appended to attrs) and where it stopped: at the tag's closing ">", or at
// the end of tag when it has none. Both premail (on template source) and the
// stream's scanner (on every start tag of every email) read tags with it.
func rawAttrs(tag string, attrs []rawAttr) (nameEnd int, _ []rawAttr, end int) {
	base := len(attrs)
	i := 1
	for i < len(tag) && !isHTMLSpace(tag[i]) && tag[i] != '/' && tag[i] != '>' {
		i++
	}
	nameEnd = i
	for {
		for i < len(tag) && (isHTMLSpace(tag[i]) || tag[i] == '/') {
			i++
		}
		if i >= len(tag) || tag[i] == '>' {
			return nameEnd, attrs, i
		}
		a := rawAttr{start: i}
		i++ // a first '=' is part of the name
		for i < len(tag) && !isHTMLSpace(tag[i]) && tag[i] != '/' && tag[i] != '>' && tag[i] != '=' {
			i++
		}
		a.key = lowerASCII(tag[a.start:i])
		a.end, a.vstart, a.vend = i, i, i
		j := i
		for j < len(tag) && isHTMLSpace(tag[j]) {
			j++
		}
		if j < len(tag) && tag[j] == '=' {
			j++
			for j < len(tag) && isHTMLSpace(tag[j]) {
				j++
			}
			switch {
			case j < len(tag) && (tag[j] == '"' || tag[j] == '\''):
				a.quote = tag[j]
				a.vstart = j + 1
				e := strings.IndexByte(tag[j+1:], tag[j])
				if e < 0 {
					a.vend, i = len(tag), len(tag)
				} else {
					a.vend, i = j+1+e, j+1+e+1
				}
			default:
				a.vstart = j
				for j < len(tag) && !isHTMLSpace(tag[j]) && tag[j] != '>' {
					j++
				}
				a.vend, i = j, j
			}
			a.end = i
		}
		// A name is never empty: its first byte is taken above.
		a.first = true
		for _, b := range attrs[base:] {
			if b.key == a.key {
				a.first = false // few attributes: a look back costs less than a map
				break
			}
		}
		attrs = append(attrs, a)
	}
}

// lowerASCII lower-cases the ASCII letters of s, as the tokenizer does
// (strings.ToLower would also fold others, some into ASCII: "\u212a" into
// "k").
func lowerASCII(s string) string {
	i := 0
	for i < len(s) && !('A' <= s[i] && s[i] <= 'Z') {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if 'A' <= b[i] && b[i] <= 'Z' {
			b[i] += 'a' - 'A'
		}
	}
	return string(b)
}

func isHTMLSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'
}

// edit replaces src[start:end] by text.
type edit struct {
	start, end int
	text       string
}

// restyle returns the edits of src that give tag the style (and width and
// height) that premailer gave its element n.
func (t *srcTag) restyle(src string, n *html.Node) []edit {
	tag := src[t.start:t.end]
	var edits []edit
	var added strings.Builder
	if style, ok := attrOK(n, "style"); ok {
		switch own := t.attr("style"); {
		case own == nil:
			added.WriteString(` style="` + html.EscapeString(style) + `"`)
		case own.quote != 0 && own.vend == len(tag): // unterminated: leave it
		default:
			ownText := own.value(tag)
			if !t.actionStyle && html.UnescapeString(ownText) == style {
				break // no rule matched
			}
			val := html.EscapeString(style)
			if t.actionStyle {
				// Premailer did not see it: the rules go first, so that the
				// element's own declarations win, as premailer would have it.
				val += ";" + ownText
			}
			q := string(own.quote)
			if q == "" {
				q = `"`
			}
			edits = append(edits, edit{t.start + own.start, t.start + own.end, "style=" + q + val + q})
		}
	}
	// Outlook's width and height attributes, unless the tag has its own.
	for _, key := range []string{"width", "height"} {
		if v, ok := attrOK(n, key); ok && t.attr(key) == nil {
			added.WriteString(" " + key + `="` + html.EscapeString(v) + `"`)
		}
	}
	if added.Len() > 0 {
		edits = append(edits, edit{t.nameEnd, t.nameEnd, added.String()})
	}
	return edits
}

// applyEdits applies edits to src, keeping its line count: what an edit
// removes in lines it adds back as a template comment ({{/* */}}), which
// outputs nothing.
func applyEdits(src string, edits []edit) string {
	slices.SortFunc(edits, func(a, b edit) int { return a.start - b.start }) // they do not overlap
	var b strings.Builder
	last := 0
	for _, e := range edits {
		b.WriteString(src[last:e.start])
		b.WriteString(e.text)
		if k := strings.Count(src[e.start:e.end], "\n") - strings.Count(e.text, "\n"); k > 0 {
			b.WriteString("{{/*" + strings.Repeat("\n", k) + "*/}}")
		}
		last = e.end
	}
	b.WriteString(src[last:])
	return b.String()
}

// walkElements calls f for every element under n, in document order.
func walkElements(n *html.Node, f func(*html.Node)) {
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode {
			f(c)
		}
		walkElements(c, f)
	}
}

// attrOK returns n's attribute key and whether it has it.
func attrOK(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Namespace == "" && a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}
