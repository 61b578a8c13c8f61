package render

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// streamCorpus are pages for streamPage: those it must take (accept) and
// those where the parser repairs or moves something, which it must leave to
// parsePage or finish exactly as parsePage does.
var streamCorpus = []struct {
	page   string
	accept bool
}{
	{`<!DOCTYPE html><html><head><title>T &amp; U</title><style>p{color:red}</style></head><body><p>Hi <a href="https://example.com/a?x=1&amp;y=2">there</a>.</p></body></html>`, true},
	{"<html>\n<head>\n<meta charset=\"utf-8\">\n</head>\n<body>\n<table role=\"presentation\"><tr><td><h1>Title</h1><ul><li>one</li><li><a href=\"http://example.com/\">two</a></li></ul></td></tr></table>\n</body>\n</html>\n", true},
	{`<html><body><div>a<div>b</div></div><blockquote>q <b>bold <a href="https://x.example/">x</a></b></blockquote><a href="https://x.example/"><img src="i.png" alt="Logo"></a><br><hr></body></html>`, true},
	{`<html><body><p>x<a href="mailto:a@b.example">a@b.example</a> <a href="#top">top</a> <a href=" https://sp.example/ ">sp</a> <area href="https://area.example/"></p><!-- c --><a href="https://x.example/"><!-- c -->x</a></body></html>`, true},
	{`<html><body><table><tbody><tr><th>h</th><td>d</td></tr></tbody><tfoot><tr><td>f</td></tr></tfoot></table><center>c</center><ol><li>1</li></ol></body></html>`, true},
	{`<html><body><p>Ünïcödé ✓ &nbsp; &#43; &lt;tag&gt;</p><p>` + "tab\tand\r\nCRLF" + `</p></body></html>`, true},
	{`<html><body><style>.x{}</style><p>a</p></body></html>` + "\n\n", true},
	// Markup the scanner reads as the tokenizer does.
	{"<HTML><Head><TITLE>a &lt; b</Title><STYLE>p{}</style ></HEAD><BODY><P CLASS='x' Id=\"y\">Hi <A HREF='https://a.example/?x=1&amp;y=&#39;2&#39;' title=\"t\"target=\"_blank\">a</A></P ></BODY></HTML>", true},
	{"<html><body><p>\r\nx\ry</p><a href=\"https://a.example/\" href=\"https://b.example/\" data-x  =  \"1\" hidden>dup</a><br/><img src=\"i.png\" alt=\"a&amp;b\"/></body></html>", true},
	{"<html><body><a href=\"https://a.example/\r\nx\">crlf</a><!----><!-- a -- b --></body></html>", true},
	// Markup the tokenizer reads by rules of its own: left to the parser.
	{`<html><body><a href=https://a.example/>unquoted</a></body></html>`, false},
	{`<html><body><a href="https://a.example/?a=1&copy=2">legacy reference</a></body></html>`, false},
	{`<html><body><a href="https://a.example/?a=1&notit;">reference</a></body></html>`, false},
	{`<?xml version="1.0"?><html><body>x</body></html>`, false},
	{"<html><body><a \u212aey=\"1\" href=\"https://a.example/\">Kelvin sign</a></body></html>", false},
	{`<html><body>a < b</body></html>`, false},
	{`<html><body><p>x</ p></p></body></html>`, false},
	// Comments the tokenizer ends early (each with a later "-->" that a
	// search for the end would find).
	{`<html><body><!--x--!>y<!--z--></body></html>`, false},
	{`<html><body><!-->x<!--y--></body></html>`, false},
	{`<html><body><!--->x<!--y--></body></html>`, false},
	{`<html><body><!--a--->b<!--c--></body></html>`, false},
	// Repaired by the parser: refused.
	{`<html><body><p>one<p>two</body></html>`, false},         // an implied </p>
	{`<html><body><p>a<div>b</div></p></body></html>`, false}, // a div closes the p
	{`<html><body><ul><li>a<li>b</ul></body></html>`, false},  // an implied </li>
	{`<html><body><a href="https://a.example/">a<a href="https://b.example/">b</a></a></body></html>`, false},
	{`<html><body><b>x<i>y</b>z</i></body></html>`, false},                      // misnested
	{`<html><body><table>text<tr><td>x</td></tr></table></body></html>`, false}, // text moved out of the table
	{`<html><body><td>cell</td></body></html>`, false},                          // a cell outside a table
	{`<html><body><h1>a<h2>b</h2></h1></body></html>`, false},                   // a heading in a heading
	{`<html><body><pre>` + "\n" + `x</pre></body></html>`, false},               // pre drops its first newline
	{`<p>a fragment</p>`, false},                                                // html, head and body implied
	{`<html><body><p>no end`, false},
	{`<html><head>text</head><body></body></html>`, false},
	{`<html><body></body><p>after</p></html>`, false},
	{`<html><body><div/>x</body></html>`, false},
	{`<html><body>a</br>b</body></html>`, false},
	{`<html><body><svg><a href="https://s.example/">s</a></svg></body></html>`, false},
	{`<html><body><o:p>Outlook</o:p></body></html>`, false},
	{"<html><body>nul\x00here</body></html>", false},
	{`<html><body><!DOCTYPE html><p>x</p></body></html>`, false},
}

// testRewrite tracks every link but the ones on tend.test, as Email's rewrite
// does with Tend's own links.
func testRewrite(u string) (string, bool) {
	if strings.HasPrefix(u, "https://tend.test/") {
		return "", false
	}
	return "https://tend.test/t/c/" + strings.ReplaceAll(u, "/", "_"), true
}

// sameAsParsed checks that streamPage, where it takes page, finishes it as
// parsePage does: the same text, the same links, the same document.
func sameAsParsed(t *testing.T, pg page) (accepted bool) {
	t.Helper()
	sameTokens(t, pg.html)
	want, err := parsePage(pg.html, pg.rewrite, pg.pixel)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := streamPage(pg.html, pg.rewrite, pg.pixel)
	if !ok {
		return false
	}
	if got.text != want.text {
		t.Errorf("page %q\ntext:\n%q\nparsed:\n%q", pg.html, got.text, want.text)
	}
	if !slices.Equal(got.links, want.links) {
		t.Errorf("page %q\nlinks %q, parsed %q", pg.html, got.links, want.links)
	}
	if g, w := normalDOM(t, got.html, pg.pixel), normalDOM(t, want.html, pg.pixel); g != w {
		t.Errorf("page %q\ndocument:\n%s\nparsed:\n%s", pg.html, g, w)
	}
	return true
}

// normalDOM is dom, with the white space at the end of the body dropped:
// white space after </body> joins the end of the body, after the pixel where
// the stream wrote it, before the pixel parsePage appends (into the text
// before it, if any). It shows as nothing either way.
func normalDOM(t *testing.T, doc, pixel string) string {
	t.Helper()
	root := parseDoc(t, doc)
	if body := find(root, atom.Body); body != nil {
		var px *html.Node
		for c := body.FirstChild; c != nil; c = c.NextSibling {
			if pixel != "" && c.DataAtom == atom.Img && attr(c, "src") == pixel {
				px = c
			}
		}
		if px != nil {
			body.RemoveChild(px)
		}
		for c := body.LastChild; c != nil && c.Type == html.TextNode && strings.TrimSpace(c.Data) == ""; c = body.LastChild {
			body.RemoveChild(c)
		}
		if c := body.LastChild; c != nil && c.Type == html.TextNode {
			c.Data = strings.TrimRight(c.Data, " \t\n\f\r")
		}
		if px != nil {
			body.AppendChild(px)
		}
	}
	return renderDoc(t, root)
}

func TestStreamMatchesParse(t *testing.T) {
	t.Parallel()
	for _, pixel := range []string{"", "https://tend.test/t/o/px"} {
		for _, c := range streamCorpus {
			if got := sameAsParsed(t, page{html: c.page, rewrite: testRewrite, pixel: pixel}); got != c.accept {
				t.Errorf("streamPage took %q: %v, want %v", c.page, got, c.accept)
			}
		}
	}
}

// Every email template that ships, in the default layout, signed and not,
// tracked and as a test send, takes the streaming path, and it finishes them
// as the parser would.
func TestStreamTakesShippedTemplates(t *testing.T) {
	t.Parallel()
	pages := shippedPages(t)
	if len(pages) < 8 {
		t.Fatalf("%d pages of shipped templates, want at least 8", len(pages))
	}
	for _, pg := range pages {
		if !sameAsParsed(t, pg) {
			t.Errorf("streamPage refused a shipped template's page:\n%s", pg.html)
		}
	}
}

// shippedPages are the pages of the email templates in templates/.
func shippedPages(t testing.TB) []page {
	files, err := filepath.Glob("../../templates/*/*.html")
	if err != nil {
		t.Fatal(err)
	}
	r := testRenderer()
	var pages []page
	for _, f := range files {
		if filepath.Base(filepath.Dir(f)) == "layouts" {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		tmpl, err := Parse(filepath.Base(f), KindEmail, string(src))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, opts := range []EmailOptions{{SignAsCSM: true}, {}, {Test: true}} {
			_, pg, err := r.page(tmpl, SampleData(), 42, opts, false)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			pages = append(pages, pg)
		}
	}
	return pages
}

// FuzzStreamMatchesParse holds streamPage to parsePage for any page it takes.
func FuzzStreamMatchesParse(f *testing.F) {
	for _, c := range streamCorpus {
		f.Add(c.page, true)
	}
	for _, pg := range shippedPages(f) {
		f.Add(pg.html, pg.pixel != "")
	}
	f.Fuzz(func(t *testing.T, doc string, pixel bool) {
		pg := page{html: doc, rewrite: testRewrite}
		if pixel {
			pg.pixel = "https://tend.test/t/o/px"
		}
		sameAsParsed(t, pg)
	})
}

// Random pages built from what the stream accepts — nested flow and phrasing
// elements, lists, tables, links, bold, headings, blockquotes, text with
// references and odd spacing — are all taken, and finished as the parser
// would. Fuzzing mostly explores refusals; this explores acceptance.
func TestStreamRandomPages(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(7, 11))
	for i := range 10000 {
		var b strings.Builder
		b.WriteString("<!DOCTYPE html>\n<html><head><title>T &amp; t</title><style>p{}</style></head>\n<body>")
		genFlow(r, &b, 0, false, false)
		b.WriteString("</body>\n</html>\n")
		pg := page{html: b.String(), rewrite: testRewrite}
		if i%2 == 0 {
			pg.pixel = "https://tend.test/t/o/px"
		}
		if !sameAsParsed(t, pg) {
			t.Fatalf("streamPage refused a well-formed page:\n%s", pg.html)
		}
	}
}

var (
	genTexts = []string{"hello", "  spaced \n\t out  ", "a &amp; b", "&nbsp;x&nbsp;", "ünï ✓", ".", " lead", "trail ",
		"https://x.example/", "a rather long sentence that keeps going well past the seventy-four characters of a quoted line"}
	genHrefs = []string{"https://x.example/", "http://y.example/p?a=1&amp;b=2", " https://x.example/ ", "mailto:a@b.example",
		"#top", "https://tend.test/u/abc", "", "HTTPS://Z.EXAMPLE/"}
)

// genFlow writes up to three random children of an element: flow content,
// or phrasing content inside a <p>; never a link inside a link.
func genFlow(r *rand.Rand, b *strings.Builder, depth int, inP, inA bool) {
	for range r.IntN(4) {
		k := r.IntN(12)
		if depth > 4 {
			k = 0
		}
		switch {
		case k <= 2:
			b.WriteString(genTexts[r.IntN(len(genTexts))])
		case k == 3 && !inA:
			fmt.Fprintf(b, `<a href="%s">`, genHrefs[r.IntN(len(genHrefs))])
			if r.IntN(3) == 0 {
				fmt.Fprintf(b, `<img src="i.png" alt="%s">`, []string{"", "Logo"}[r.IntN(2)])
			} else {
				genFlow(r, b, depth+1, inP, true)
			}
			b.WriteString("</a>")
		case k == 4:
			tag := []string{"b", "strong", "span", "em", "i"}[r.IntN(5)]
			fmt.Fprintf(b, "<%s>", tag)
			genFlow(r, b, depth+1, inP, inA)
			fmt.Fprintf(b, "</%s>", tag)
		case k == 5:
			b.WriteString([]string{"<br>", "<br/>", "<img src=\"x.png\" alt=\"pic\">", "<!-- note -->"}[r.IntN(4)])
		case inP:
			b.WriteString(genTexts[r.IntN(len(genTexts))])
		case k == 6:
			b.WriteString("<p>")
			genFlow(r, b, depth+1, true, inA)
			b.WriteString("</p>")
		case k == 7:
			tag := []string{"div", "blockquote", "center"}[r.IntN(3)]
			fmt.Fprintf(b, "<%s>", tag)
			genFlow(r, b, depth+1, false, inA)
			fmt.Fprintf(b, "</%s>", tag)
		case k == 8:
			tag := []string{"h1", "h2", "h3", "h4"}[r.IntN(4)]
			fmt.Fprintf(b, "<%s>", tag)
			genFlow(r, b, depth+1, true, inA) // phrasing only: no heading in a heading
			fmt.Fprintf(b, "</%s>", tag)
		case k == 9:
			tag := []string{"ul", "ol"}[r.IntN(2)]
			fmt.Fprintf(b, "<%s>\n", tag)
			for range 1 + r.IntN(3) {
				b.WriteString("<li>")
				genFlow(r, b, depth+1, false, inA)
				b.WriteString("</li>\n")
			}
			fmt.Fprintf(b, "</%s>", tag)
		case k == 10:
			tbody := r.IntN(2) == 0
			b.WriteString(`<table role="presentation">`)
			if tbody {
				b.WriteString("<tbody>")
			}
			for range 1 + r.IntN(2) {
				b.WriteString("\n<tr>")
				for range 1 + r.IntN(2) {
					tag := []string{"td", "th"}[r.IntN(2)]
					fmt.Fprintf(b, "<%s>", tag)
					genFlow(r, b, depth+1, false, inA)
					fmt.Fprintf(b, "</%s>", tag)
				}
				b.WriteString("</tr>")
			}
			if tbody {
				b.WriteString("</tbody>")
			}
			b.WriteString("\n</table>")
		default:
			b.WriteString("<hr>")
		}
	}
}

// sameTokens checks that, where the scanner reads the whole of page, it
// reads every token as html.Tokenizer does: its type, its text as written,
// its text, the tag's name and attributes.
func sameTokens(t *testing.T, page string) {
	t.Helper()
	z, ok := newScanner(page)
	if !ok {
		return
	}
	type tok struct {
		tt        html.TokenType
		raw, text string
		name      string
		attrs     []html.Attribute
	}
	var got []tok
	for {
		tt, ok := z.next()
		if !ok {
			return // refused: the page is the parser's
		}
		k := tok{tt: tt, raw: z.raw}
		switch tt {
		case html.TextToken:
			k.text = z.Text()
		case html.StartTagToken, html.SelfClosingTagToken, html.EndTagToken:
			k.name, _ = z.TagName()
			if tt != html.EndTagToken {
				k.attrs = z.Attrs(nil)
			}
		}
		got = append(got, k)
		if tt == html.ErrorToken {
			break
		}
	}
	tz := html.NewTokenizer(strings.NewReader(page))
	for i, g := range got {
		tt := tz.Next()
		w := tok{tt: tt, raw: string(tz.Raw())}
		switch tt {
		case html.TextToken:
			w.text = string(tz.Text())
		case html.StartTagToken, html.SelfClosingTagToken, html.EndTagToken:
			name, more := tz.TagName()
			w.name = string(name)
			for more && tt != html.EndTagToken {
				var k, v []byte
				k, v, more = tz.TagAttr()
				w.attrs = append(w.attrs, html.Attribute{Key: string(k), Val: string(v)})
			}
		}
		if g.tt != w.tt || g.raw != w.raw || g.text != w.text || g.name != w.name || !slices.Equal(g.attrs, w.attrs) {
			t.Fatalf("page %q, token %d:\nscanned   %+v\ntokenized %+v", page, i, g, w)
		}
	}
}
