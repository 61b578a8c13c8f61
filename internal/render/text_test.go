package render

import (
	"strings"
	"testing"

	"golang.org/x/net/html"
)

func TestTextPart(t *testing.T) {
	tests := []struct {
		name, html, want string
	}{
		{"paragraphs", `<p>One
		   two</p><p>Three</p>`, "One two\n\nThree"},
		{"line breaks", `<p>a<br>b<br><br>c</p>`, "a\nb\n\nc"},
		{"inline elements", `<p>a <b>bold</b> and <i>it</i>alic</p>`, "a bold and italic"},
		{"headings", `<h1>Title</h1><p>Text</p>`, "Title\n\nText"},
		{"lists", `<ul><li>a</li><li>b</li></ul><ol><li>one</li><li>two</li></ol>`, "- a\n- b\n\n1. one\n2. two"},
		{"nested list", `<ol><li>x<ul><li>y</li></ul></li><li>z</li></ol>`, "1. x\n- y\n2. z"},
		{"links", `<p><a href="https://x.example/a">Docs</a></p>`, "Docs (https://x.example/a)"},
		{"link whose text is its URL", `<p><a href="https://x.example/">https://x.example</a></p>`, "https://x.example"},
		{"mailto", `<p><a href="mailto:help@x.example?subject=Hi">Write to us</a>, <a href="mailto:a@x.example">a@x.example</a></p>`,
			"Write to us (help@x.example), a@x.example"},
		{"anchors and relative links", `<p><a href="#top">Top</a> <a href="/x">X</a></p>`, "Top X"},
		{"image link", `<a href="https://x.example"><img src="logo.png" alt="Acme"></a>`, "Acme (https://x.example)"},
		{"image without alt", `<p>a<img src="p.gif" alt="">b</p>`, "ab"},
		{"hidden preheader", `<div style="display: none; max-height:0">Preview text</div><p>Body</p><p hidden>no</p>`, "Body"},
		{"head ignored", `<html><head><title>T</title><style>p{}</style></head><body><p>B</p><script>x()</script></body></html>`, "B"},
		{"entities", `<p>Tom &amp; Jerry &lt;3&nbsp;you</p>`, "Tom & Jerry <3 you"},
		{"pre", "<pre>a\n  b</pre><p>c</p>", "a\n  b\n\nc"},
		{"table cells", `<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>`, "a b\nc"},
		{"rule", `<p>a</p><hr><p>b</p>`, "a\n\n----\n\nb"},
		{"unicode", `<p>Grüße, 東京</p>`, "Grüße, 東京"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := html.Parse(strings.NewReader(tt.html))
			if err != nil {
				t.Fatal(err)
			}
			if got := textPart(doc); got != tt.want+"\n" {
				t.Errorf("got  %q\nwant %q", got, tt.want+"\n")
			}
		})
	}
}
