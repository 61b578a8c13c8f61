package html2text_test

import (
	"strings"
	"testing"

	upstream "github.com/inbucket/html2text"
	"golang.org/x/net/html"

	"github.com/tendhq/tend/internal/html2text"
)

// corpus covers every element the converter treats specially, white space
// in and out of <pre>, blockquotes long enough to be broken, text that is
// not ASCII or not valid UTF-8, and a whole email as Tend's layout writes it.
var corpus = []string{
	"test text",
	"  \ttext\ntext\n",
	"  \na \n\t \n \n a \t",
	"test        text",
	"test&nbsp;&nbsp;&nbsp; text&nbsp;",
	"Test text<br>Test",
	"\n<p>Test text</p>\n\n\n\t<p>Test text</p>\n",
	"\n<p>Test text<br> \tTest text<br></p>\n",
	"Test text<br><BR />Test text",
	"<pre>test1\ntest 2\n\ntest  3</pre>",
	"<pre>\n\n\n  spaced\r\n\tout\n\n\n\n</pre><p>after</p>",
	"<ul><li>item 1</li><li>item 2</li></ul><ol><li>one<li>two</ol>",
	"<ul>\n<li>nested <ul><li>deeper</li></ul></li>\n</ul>",
	`<a href="http://example.com/">Link</a>`,
	`<a href="http://example.com/">http://example.com/</a>`,
	`<a href="  mailto:contact@example.org  ">Contact Us</a>`,
	`<a href="mailto:contact@example.org">contact@example.org</a>`,
	`<a href="http://example.com/"><img src="x.png" alt="Example"></a>`,
	`<a href="http://example.com/"><img src="x.png"></a>`,
	`<a href="http://example.com/"><b>bold</b> and <i>it</i></a> tail`,
	`<a href="">empty</a><a>none</a>`,
	"<h1>Heading</h1><h2>Sub heading</h2><h3>Third</h3><h4>Fourth</h4>",
	"<h1>Two<br>lines, the second longer</h1>text",
	"<h2>Ünïcödé héading ✓</h2>",
	"<b>bold</b> <strong>strong</strong>, <b> spaced </b>.",
	"<p>End.</p><p>.Starts with a dot</p><b>x</b>.",
	"<div>one</div><div>two<div>three</div></div>text<div></div><div>four</div>",
	"text<div>after text</div>",
	"<blockquote>Quoted text that is long enough to be broken across lines because it goes on and on well past seventy-four characters.</blockquote>after",
	"<blockquote>Outer<blockquote>Inner quote with a very long line that needs breaking too, since it is much longer than the limit of seventy-four.</blockquote>back out</blockquote>",
	"<blockquote>Averyveryveryveryveryveryveryveryveryveryveryveryveryveryveryveryveryveryveryverylongword and more</blockquote>",
	"<head><title>Title</title><style>p{color:red}</style></head><body><script>alert(1)</script><p>Body</p></body>",
	"<table><tr><th>H1</th><th>H2</th></tr><tr><td>a</td><td>b</td></tr><tfoot><tr><td>f</td></tr></tfoot></table>after",
	"学习之道<p>次世界冠军赛上，我几近疯狂</p> 😀 emoji",
	"invalid \xff\xfe bytes<p>\xc3(</p><b>\xe2\x28\xa1</b>",
	"<!-- a comment --><!doctype html><p>x</p>",
	"a\r\nb\tc\fd\u00a0e\u2003f",
	"",
	"   ",
}

func upstreamText(t testing.TB, doc *html.Node) string {
	t.Helper()
	want, err := upstream.FromHTMLNode(doc)
	if err != nil {
		t.Fatalf("upstream: %v", err)
	}
	return want
}

func TestSameAsUpstream(t *testing.T) {
	t.Parallel()
	for _, in := range append(corpus, emailHTML) {
		doc, err := html.Parse(strings.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := html2text.FromHTMLNode(doc), upstreamText(t, doc); got != want {
			t.Errorf("for %q\n got %q\nwant %q", in, got, want)
		}
	}
}

func TestFormat(t *testing.T) {
	t.Parallel()
	doc, err := html.Parse(strings.NewReader(`<h1>Hi Ada</h1><p>Read <a href="https://x.example/a">the guide</a>.</p><ul><li>one</li></ul><blockquote>quoted</blockquote>`))
	if err != nil {
		t.Fatal(err)
	}
	want := "******\nHi Ada\n******\n\nRead the guide ( https://x.example/a ).\n\n* one\n\n> \n> quoted"
	if got := html2text.FromHTMLNode(doc); got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

// FuzzSameAsUpstream checks any document against upstream; the corpus seeds
// it (go test -fuzz FuzzSameAsUpstream ./internal/html2text explores more).
func FuzzSameAsUpstream(f *testing.F) {
	for _, in := range corpus {
		f.Add(in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		doc, err := html.Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		if got, want := html2text.FromHTMLNode(doc), upstreamText(t, doc); got != want {
			t.Errorf("for %q\n got %q\nwant %q", in, got, want)
		}
	})
}

// emailHTML is an email as Tend's default layout writes it (with CSS
// inlined), table-based, indented, with a signature and a footer.
const emailHTML = `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Acme Corp: your quarterly check-in, Ada</title>
  <style>p { margin: 0 0 12px; }</style>
</head>
<body style="margin:0;padding:0;background:#f6f7f9">
  <table role="presentation" width="100%" cellpadding="0" cellspacing="0">
    <tr>
      <td align="center" style="padding:24px">
        <table role="presentation" width="600" cellpadding="0" cellspacing="0" style="background:#ffffff">
          <tr><td style="padding:32px;font-family:Helvetica,Arial,sans-serif">
            <p>Hi Ada,</p>
            <p>Over the last month your team at Acme Corp logged in 42 times and 64 of
            120 seats were active. Teams that use <a href="https://docs.example.com/reports">scheduled reports</a> and
            <a href="https://docs.example.com/alerts">alerts</a> save hours every week.</p>
            <ul>
              <li><a href="https://example.com/guides/sso">Single sign-on</a>, to bring the other seats on board.</li>
              <li>Alerts on the metrics that matter to <b>Acme Corp</b>.</li>
            </ul>
            <div class="signature">
              <p>Dana Reyes<br>Customer Success Manager</p>
              <p><a href="https://cal.example.com/dana">Book a call</a></p>
            </div>
          </td></tr>
          <tr><td style="padding:16px;font-size:12px;color:#888">
            <p>Tend Inc., 1 Main Street, Springfield</p>
            <p><a href="https://tend.example.com/u/abc">Unsubscribe</a></p>
          </td></tr>
        </table>
      </td>
    </tr>
  </table>
</body>
</html>`
