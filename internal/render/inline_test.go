package render

import (
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// inline runs the inliner over a document and returns its body's HTML and
// the CSS left in the head.
func inline(t *testing.T, doc string) (body, left string) {
	t.Helper()
	root, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	compileStylesheet(takeStyles(root)).apply(root)
	var b strings.Builder
	head, bodyNode := findTag(root, "head"), findTag(root, "body")
	for c := bodyNode.FirstChild; c != nil; c = c.NextSibling {
		if err := html.Render(&b, c); err != nil {
			t.Fatal(err)
		}
	}
	if st := findTag(head, "style"); st != nil && st.FirstChild != nil {
		left = st.FirstChild.Data
	}
	return b.String(), left
}

func findTag(n *html.Node, tag string) *html.Node {
	if n == nil {
		return nil
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && c.Data == tag {
			return c
		}
		if f := findTag(c, tag); f != nil {
			return f
		}
	}
	return nil
}

func TestInline(t *testing.T) {
	tests := []struct {
		name, css, body string
		want            string
		left            []string
	}{
		{"type, class and id",
			`p { color: red } .x { color: green } #y { color: blue }`,
			`<p>a</p><p class="x">b</p><p class="x" id="y">c</p>`,
			`<p style="color:red">a</p><p class="x" style="color:green">b</p><p class="x" id="y" style="color:blue">c</p>`, nil},
		{"source order breaks ties",
			`.a { color: red } .b { color: blue }`,
			`<p class="b a">x</p>`,
			`<p class="b a" style="color:blue">x</p>`, nil},
		{"specificity beats order",
			`div p { color: red } p { color: blue }`,
			`<div><p>x</p></div>`,
			`<div><p style="color:red">x</p></div>`, nil},
		{"own style beats rules, !important beats own style",
			`p { color: red; margin: 0 !important }`,
			`<p style="color: blue; margin: 4px">x</p>`,
			`<p style="color:blue;margin:0">x</p>`, nil},
		{"own !important wins",
			`p { color: red !important }`,
			`<p style="color: blue !important">x</p>`,
			`<p style="color:blue">x</p>`, nil},
		{"shorthand after longhand",
			`p { padding-top: 1px } .a { padding: 2px } `,
			`<p class="a">x</p>`,
			`<p class="a" style="padding-top:1px;padding:2px">x</p>`, nil},
		{"longhand after shorthand, then shorthand again",
			`p { padding: 2px } .a { padding-top: 1px } p.a { padding: 3px }`,
			`<p class="a">x</p>`,
			`<p class="a" style="padding-top:1px;padding:3px">x</p>`, nil},
		{"combinators and groups",
			`ul > li, .n + p, h1 ~ span { color: red } td:first-child { color: blue }`,
			`<ul><li>a</li></ul><p class="n">b</p><p>c</p><h1>d</h1><span>e</span><table><tr><td>f</td><td>g</td></tr></table>`,
			`<ul><li style="color:red">a</li></ul><p class="n">b</p><p style="color:red">c</p><h1>d</h1><span style="color:red">e</span><table><tbody><tr><td style="color:blue">f</td><td>g</td></tr></tbody></table>`, nil},
		{":not and attribute selectors",
			`p:not(.skip) { color: red } a[href^="https"] { color: blue }`,
			`<p class="skip">a</p><p>b</p><a href="https://x">c</a><a href="mailto:x">d</a>`,
			`<p class="skip">a</p><p style="color:red">b</p><a href="https://x" style="color:blue">c</a><a href="mailto:x">d</a>`, nil},
		{"class inside :not is not a key",
			`:not(.x) > b { color: red }`,
			`<i><b>y</b></i>`,
			`<i><b style="color:red">y</b></i>`, nil},
		{"sizes copied to Outlook's attributes",
			`img { width: 120px; height: 0 } td { width: 50% }`,
			`<img src="a.png" alt=""><table><tr><td>x</td></tr></table>`,
			`<img src="a.png" alt="" width="120" style="width:120px;height:0"/><table><tbody><tr><td style="width:50%">x</td></tr></tbody></table>`, nil},
		{"not inlinable stays",
			`a:hover { color: red } * { margin: 0 } p::first-line { color: blue } @media (max-width: 600px) { p { color: green } } @font-face { font-family: X; src: url(x.woff) } @import url("x.css");`,
			`<p><a href="#">x</a></p>`,
			`<p><a href="#">x</a></p>`,
			[]string{"a:hover {color:red !important}", "* {margin:0 !important}", "p::first-line {color:blue !important}",
				"@media (max-width: 600px){\np {color:green !important}\n}", "@font-face {font-family:X;src:url(x.woff)}", `@import url("x.css");`}},
		{"unparsable selector stays",
			`p!! { color: red } p { color: blue }`,
			`<p>x</p>`,
			`<p style="color:blue">x</p>`, []string{"p!! {color:red !important}"}},
		{"no rules", ``, `<p>x</p>`, `<p>x</p>`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, left := inline(t, `<html><head><style>`+tt.css+`</style></head><body>`+tt.body+`</body></html>`)
			if body != tt.want {
				t.Errorf("got  %s\nwant %s", body, tt.want)
			}
			for _, w := range tt.left {
				if !strings.Contains(left, w) {
					t.Errorf("leftover lacks %q:\n%s", w, left)
				}
			}
			if tt.left == nil && left != "" {
				t.Errorf("unexpected leftover:\n%s", left)
			}
		})
	}
}

func TestInlineSkipsOtherMedia(t *testing.T) {
	doc := `<html><head><style media="print">p { color: red }</style><style media="all">p { margin: 0 }</style></head><body><p>x</p></body></html>`
	root, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	compileStylesheet(takeStyles(root)).apply(root)
	var b strings.Builder
	if err := html.Render(&b, root); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `<style media="print">p { color: red }</style>`) || !strings.Contains(b.String(), `<p style="margin:0">x</p>`) {
		t.Errorf("got %s", b.String())
	}
}

func TestRuleKey(t *testing.T) {
	tests := []struct {
		sel  string
		kind byte
		name string
	}{
		{"p", 't', "p"},
		{"P", 't', "p"},
		{".a", '.', "a"},
		{"p.a.b", '.', "a"},
		{"p#x.a", '#', "x"},
		{"div > p", 't', "p"},
		{"div .a", '.', "a"},
		{"h1 ~ span", 't', "span"},
		{"a + b", 't', "b"},
		{"[href]", 0, ""},
		{"a[href^='x y']", 't', "a"},
		{`a[title="p > .q"]`, 't', "a"},
		{":not(.x)", 0, ""},
		{"td:first-child", 't', "td"},
		{"li:nth-child(2n+1)", 't', "li"},
		{"p:not(.x).y", '.', "y"},
		{`.a\:b`, 0, ""},
		{".my-class_2", '.', "my-class_2"},
	}
	for _, tt := range tests {
		kind, name := ruleKey(tt.sel)
		if kind != tt.kind || name != tt.name {
			t.Errorf("ruleKey(%q) = %q %q, want %q %q", tt.sel, kind, name, tt.kind, tt.name)
		}
	}
}

func TestSplitSelectors(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"a", []string{"a"}},
		{"a, b ,c", []string{"a", "b", "c"}},
		{`a[title="x,y"], :is(p, q)`, []string{`a[title="x,y"]`, ":is(p, q)"}},
		{"a,,", []string{"a"}},
	}
	for _, tt := range tests {
		if got := splitSelectors(tt.in); strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("splitSelectors(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
