package render

import (
	"regexp"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/html"

	"github.com/tendhq/tend/internal/token"
)

// dom is doc as a mail client reads it: parsed and written out again, so
// that tests compare elements and attributes rather than how the renderer
// happened to spell them (attribute order, character references, <br> or
// <br/>).
func dom(t *testing.T, doc string) string {
	t.Helper()
	return renderDoc(t, parseDoc(t, doc))
}

func parseDoc(t *testing.T, doc string) *html.Node {
	t.Helper()
	root, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func renderDoc(t *testing.T, root *html.Node) string {
	t.Helper()
	var b strings.Builder
	if err := html.Render(&b, root); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// attrs returns the value of attribute key of every element named tag.
func attrs(t *testing.T, doc, tag, key string) []string {
	t.Helper()
	root, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == tag {
			for _, a := range n.Attr {
				if a.Key == key {
					out = append(out, a.Val)
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(root)
	return out
}

const linksBody = `<p>
<a href="https://example.com/docs?a=1&amp;b=2">Docs</a>
<a href="http://example.com/plain">Plain</a>
<a href="HTTPS://Example.com/Upper">Upper</a>
<a href=" https://example.com/spaced ">Spaced</a>
<a href="https://example.com/docs?a=1&amp;b=2">Docs again</a>
<a href="mailto:help@example.com">Mail us</a>
<a href="#section">Jump</a>
<a href="tel:+15551234">Call</a>
<a href="/relative">Relative</a>
<a href="https://example.com/{{.Account.ID}}/settings">Settings</a>
<a name="no-href">Anchor</a>
</p>`

func TestEmailLinks(t *testing.T) {
	r := testRenderer()
	tmpl := mustParse(t, KindEmail, email("Links", linksBody))
	e, err := r.Email(tmpl, SampleData(), 4242, EmailOptions{SignAsCSM: true})
	if err != nil {
		t.Fatal(err)
	}
	wantLinks := []string{
		"https://example.com/docs?a=1&b=2", "http://example.com/plain", "HTTPS://Example.com/Upper",
		"https://example.com/spaced", "https://example.com/acme/settings", "https://cal.example.com/grace",
	}
	if strings.Join(e.Links, " ") != strings.Join(wantLinks, " ") {
		t.Errorf("Links = %q\nwant    %q", e.Links, wantLinks)
	}

	var tracked []string
	untouched := map[string]bool{}
	for _, href := range attrs(t, e.HTML, "a", "href") {
		tok, ok := strings.CutPrefix(href, "https://tend.test/t/c/")
		if !ok {
			untouched[href] = true
			continue
		}
		got, err := r.Signer.ParseAs(token.KindClick, tok)
		if err != nil {
			t.Fatalf("tracked link %q: %v", href, err)
		}
		if got.MessageID != 4242 {
			t.Errorf("click token for %q has message %d", got.URL, got.MessageID)
		}
		tracked = append(tracked, got.URL)
	}
	wantTracked := []string{
		"https://example.com/docs?a=1&b=2", "http://example.com/plain", "HTTPS://Example.com/Upper",
		"https://example.com/spaced", "https://example.com/docs?a=1&b=2", "https://example.com/acme/settings",
		"https://cal.example.com/grace",
	}
	if strings.Join(tracked, " ") != strings.Join(wantTracked, " ") {
		t.Errorf("tracked = %q\nwant      %q", tracked, wantTracked)
	}
	for _, href := range []string{"mailto:help@example.com", "#section", "tel:+15551234", "/relative", e.UnsubscribeURL} {
		if !untouched[href] {
			t.Errorf("link %q was rewritten or lost; untouched: %v", href, untouched)
		}
	}
}

func TestEmailPixelAndUnsubscribe(t *testing.T) {
	r := testRenderer()
	tmpl := mustParse(t, KindEmail, email("Hi", "<p>Hello</p>"))
	e, err := r.Email(tmpl, SampleData(), 77, EmailOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.HTML = dom(t, e.HTML)
	// The pixel: last in the body, 1x1, empty alt, an open token of message 77.
	var pixel string
	for _, src := range attrs(t, e.HTML, "img", "src") {
		if strings.HasPrefix(src, "https://tend.test/t/o/") {
			pixel = src
		}
	}
	if pixel == "" {
		t.Fatalf("no open pixel in:\n%s", e.HTML)
	}
	if !strings.Contains(e.HTML, `<img src="`+pixel+`" width="1" height="1" alt=""`) {
		t.Errorf("pixel is not a 1x1 image with an empty alt:\n%s", e.HTML)
	}
	if !strings.HasSuffix(strings.TrimSpace(e.HTML), `</body></html>`) || strings.Index(e.HTML, pixel) < strings.Index(e.HTML, "Unsubscribe") {
		t.Errorf("pixel is not at the end of the body")
	}
	if got, err := r.Signer.ParseAs(token.KindOpen, strings.TrimPrefix(pixel, "https://tend.test/t/o/")); err != nil || got.MessageID != 77 {
		t.Errorf("pixel token: %+v, %v", got, err)
	}

	tok, ok := strings.CutPrefix(e.UnsubscribeURL, "https://tend.test/u/")
	if !ok {
		t.Fatalf("UnsubscribeURL = %q", e.UnsubscribeURL)
	}
	if got, err := r.Signer.ParseAs(token.KindUnsubscribe, tok); err != nil || got.MessageID != 77 {
		t.Errorf("unsubscribe token: %+v, %v", got, err)
	}
	if !slicesContains(attrs(t, e.HTML, "a", "href"), e.UnsubscribeURL) {
		t.Errorf("no unsubscribe link in the HTML")
	}
	if !strings.Contains(e.Text, e.UnsubscribeURL) {
		t.Errorf("no unsubscribe link in the text:\n%s", e.Text)
	}
	if !strings.Contains(e.HTML, "Acme Sender Ltd, 1 Test Road, Testville") || !strings.Contains(e.Text, "Acme Sender Ltd, 1 Test Road, Testville") {
		t.Errorf("the postal address is missing")
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestEmailSignature(t *testing.T) {
	r := testRenderer()
	tmpl := mustParse(t, KindEmail, email("Hi", "<p>Body</p>"))
	noSig := SampleData()
	noSig.CSM.SignatureHTML = ""
	team := SampleData()
	team.CSM = CSMData{}

	generated := []string{"Grace Hopper", "Customer Success Manager", "+44 20 7946 0000", "Book a time", "/t/c/"}
	tests := []struct {
		name       string
		d          Data
		sign       bool
		want, none []string
	}{
		// The signature's own markup comes with the data: the stylesheet is
		// not inlined into it (the layout's <style data-premailer="ignore">
		// styles it where <style> is read); the div around it is styled.
		{"signed, own signature", SampleData(), true,
			[]string{`<p>Grace Hopper<br/>Customer Success Manager</p>`, "Book a time with me",
				`<div style="margin-top:24px;padding-top:16px;border-top:1px solid #e4e7eb;font-size:14px;line-height:1.5;color:#52606d" class="signature">`,
				"<style data-premailer=\"ignore\">\n.signature p { margin: 0 0 4px; }\n</style>"},
			[]string{"signature-name", "+44 20 7946 0000"}},
		{"signed, generated", noSig, true, generated, nil},
		{"not signed", SampleData(), false, nil, append(generated, "Grace", `class="signature"`)},
		{"signed but no CSM", team, true, nil, []string{`class="signature"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := r.Email(tmpl, tt.d, 1, EmailOptions{SignAsCSM: tt.sign})
			if err != nil {
				t.Fatal(err)
			}
			e.HTML = dom(t, e.HTML)
			for _, w := range tt.want {
				if !strings.Contains(e.HTML, w) {
					t.Errorf("HTML lacks %q:\n%s", w, e.HTML)
				}
			}
			for _, w := range tt.none {
				if strings.Contains(e.HTML, w) {
					t.Errorf("HTML has %q:\n%s", w, e.HTML)
				}
			}
		})
	}
}

var tagRe = regexp.MustCompile(`<[a-zA-Z/!?][^>]*>`)

func TestEmailText(t *testing.T) {
	r := testRenderer()
	tmpl := mustParse(t, KindEmail, email("Hi", `<h1>Hello {{.Contact.FirstName}}</h1>
<p>Your <b>usage</b> is down.<br>Here is <a href="https://example.com/guide">the guide</a> &amp; more.</p>
<ul><li>One</li><li>Two</li></ul>`))
	e, err := r.Email(tmpl, SampleData(), 5, EmailOptions{SignAsCSM: true})
	if err != nil {
		t.Fatal(err)
	}
	if m := tagRe.FindString(e.Text); m != "" {
		t.Errorf("text part has a tag %q:\n%s", m, e.Text)
	}
	for _, w := range []string{
		"*********\nHello Ada\n*********\n\nYour *usage* is down.\nHere is the guide ( https://example.com/guide ) & more.\n\n* One\n* Two",
		"Book a time with me ( https://cal.example.com/grace )",
		"Unsubscribe ( " + e.UnsubscribeURL + " )",
		"Acme Sender Ltd, 1 Test Road, Testville\n",
	} {
		if !strings.Contains(e.Text, w) {
			t.Errorf("text part lacks %q:\n%s", w, e.Text)
		}
	}
	if strings.Contains(e.Text, "/t/c/") || strings.Contains(e.Text, "/t/o/") {
		t.Errorf("text part has tracked links:\n%s", e.Text)
	}
	if strings.Contains(e.Text, "max-width") || strings.Contains(e.Text, "Hi\n") {
		t.Errorf("text part has the head's CSS or title:\n%s", e.Text)
	}
}

func TestEmailCSSInlined(t *testing.T) {
	r := testRenderer()
	tmpl := mustParse(t, KindEmail, email("Hi", `<style>
.note { color: #c00; font-weight: bold }
p.note { margin: 0 }
.note:hover { color: #f00 }
.footer a { color: #00f }
</style>
<p class="note" style="font-weight: normal">Careful</p>
<p>Plain</p>`))
	for range 2 { // the second time with the template as inlined the first
		e, err := r.Email(tmpl, SampleData(), 1, EmailOptions{})
		if err != nil {
			t.Fatal(err)
		}
		e.HTML = dom(t, e.HTML)
		for _, w := range []string{
			// The template's own rules, its style attribute winning over them.
			`<p class="note" style="color:#c00;margin:0;font-weight:normal">Careful</p>`,
			// The layout's p rule.
			`<p style="margin:0 0 16px">Plain</p>`,
			// The layout's body rule.
			`<body style="margin:0;padding:0;width:100%;background-color:#f4f5f7;-webkit-text-size-adjust:100%">`,
			// The template's rule for the layout's links, after the layout's.
			`style="text-decoration:underline;color:#00f">Unsubscribe</a>`,
		} {
			if !strings.Contains(e.HTML, w) {
				t.Errorf("HTML lacks %q:\n%s", w, e.HTML)
			}
		}
		// What cannot be inlined stays in one <style> in the head, beside
		// the layout's <style> that premailer leaves alone.
		var left []string
		for _, m := range regexp.MustCompile(`(?s)<style([^>]*)>(.*?)</style>`).FindAllStringSubmatchIndex(e.HTML, -1) {
			if strings.Contains(e.HTML[m[2]:m[3]], "data-premailer") {
				continue
			}
			if m[0] > strings.Index(e.HTML, "</head>") {
				t.Errorf("a <style> outside the head: %s", e.HTML[m[0]:m[1]])
			}
			left = append(left, e.HTML[m[4]:m[5]])
		}
		if len(left) != 1 {
			t.Fatalf("want one <style> left: %q", left)
		}
		for _, w := range []string{"@media only screen and (max-width: 620px){", ".content { padding: 20px !important }", ".note:hover { color: #f00 !important }"} {
			if !strings.Contains(left[0], w) {
				t.Errorf("leftover CSS lacks %q:\n%s", w, left[0])
			}
		}
		if strings.Contains(left[0], "#c00") || strings.Contains(left[0], "#f4f5f7") {
			t.Errorf("inlined rules were kept too:\n%s", left[0])
		}
	}
	if n := len(tmpl.inlined); n != 1 {
		t.Errorf("%d inlined copies, want 1", n)
	}
	if in := tmpl.inlinedFor(DefaultLayout()); in.err != nil {
		t.Errorf("not inlined: %v", in.err)
	}
}

func TestEmailTestSend(t *testing.T) {
	for _, r := range []*Renderer{testRenderer(), {PublicURL: "https://tend.test", PostalAddress: "1 Road"}} {
		tmpl := mustParse(t, KindEmail, email("Hi {{.Contact.FirstName}}", linksBody))
		e, err := r.Email(tmpl, SampleData(), 9, EmailOptions{Test: true, SignAsCSM: true})
		if err != nil {
			t.Fatal(err)
		}
		if e.Subject != "[TEST] Hi Ada" {
			t.Errorf("subject = %q", e.Subject)
		}
		if strings.Contains(e.HTML, "/t/c/") || strings.Contains(e.HTML, "/t/o/") {
			t.Errorf("a test send is tracked:\n%s", e.HTML)
		}
		if e.UnsubscribeURL != "https://tend.test/u/test" || !strings.Contains(e.HTML, `href="https://tend.test/u/test"`) {
			t.Errorf("test unsubscribe URL = %q", e.UnsubscribeURL)
		}
		if len(e.Links) != 6 || !strings.Contains(e.HTML, `href="https://example.com/docs?a=1&amp;b=2"`) {
			t.Errorf("links = %q", e.Links)
		}
	}
}

func TestEmailRefused(t *testing.T) {
	nudge := mustParse(t, KindNudge, "title: Hi\nbody: There\n")
	if _, err := testRenderer().Email(nudge, SampleData(), 1, EmailOptions{}); err == nil {
		t.Error("a nudge rendered as an email")
	}
	tmpl := mustParse(t, KindEmail, email("Hi", "<p>x</p>"))
	if _, err := (&Renderer{PublicURL: "https://x"}).Email(tmpl, SampleData(), 1, EmailOptions{}); err == nil {
		t.Error("a renderer without a signer tracked an email")
	}
	// Data that makes the subject empty fails the send.
	tmpl = mustParse(t, KindEmail, email("{{.Contact.FirstName}}", "<p>x</p>"))
	d := SampleData()
	d.Contact.FirstName = " "
	_, err := testRenderer().Email(tmpl, d, 1, EmailOptions{})
	wantInvalid(t, err, 0, "", "subject renders empty")
}

func TestEmailDataIsEscaped(t *testing.T) {
	tmpl := mustParse(t, KindEmail, email("Hi {{.Contact.Name}}", `<p>{{.Contact.Name}}</p><a href="{{index .Contact.Traits "site"}}">site</a>`))
	d := SampleData()
	d.Contact.Name = "Eve\r\nBcc: all@x.example <script>alert(1)</script>"
	d.Contact.Traits["site"] = "javascript:alert(1)"
	e, err := testRenderer().Email(tmpl, d, 1, EmailOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Subject != "Hi Eve Bcc: all@x.example <script>alert(1)</script>" {
		t.Errorf("subject = %q: line breaks from data must become spaces", e.Subject)
	}
	if strings.Contains(e.HTML, "<script>") || strings.Contains(e.HTML, "javascript:") {
		t.Errorf("data was not escaped:\n%s", e.HTML)
	}
}

func TestEmailConcurrent(t *testing.T) {
	r := testRenderer()
	tmpl := mustParse(t, KindEmail, benchSource)
	want, err := r.Email(tmpl, SampleData(), 1, EmailOptions{SignAsCSM: true})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				got, err := r.Email(tmpl, SampleData(), 1, EmailOptions{SignAsCSM: true})
				if err != nil || got.HTML != want.HTML || got.Text != want.Text {
					t.Errorf("concurrent render differs: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// The text part is inbucket/html2text's (internal/html2text): these are the
// parts of its format that an email's text relies on.
func TestTextPart(t *testing.T) {
	tests := []struct {
		name, html, want string
	}{
		{"paragraphs", "<p>One\n\t\t   two</p><p>Three</p>", "One two\n\nThree"},
		{"line breaks", `<p>a<br>b<br><br>c</p>`, "a\nb\n\nc"},
		{"inline elements", `<p>a <b>bold</b> and <i>it</i> alic</p>`, "a *bold* and it alic"},
		{"headings", `<h1>Title</h1><p>Text</p>`, "*****\nTitle\n*****\n\nText"},
		{"lists", `<ul><li>a</li><li>b</li></ul><ol><li>one</li><li>two</li></ol>`, "* a\n* b\n\n* one\n* two"},
		{"links", `<p><a href="https://x.example/a">Docs</a></p>`, "Docs ( https://x.example/a )"},
		{"link whose text is its URL", `<p><a href="https://x.example/">https://x.example/</a></p>`, "https://x.example/"},
		{"mailto", `<p><a href="mailto:help@x.example">Write to us</a>, <a href="mailto:a@x.example">a@x.example</a></p>`,
			"Write to us ( help@x.example ) , a@x.example"},
		{"image link", `<a href="https://x.example"><img src="logo.png" alt="Acme"></a>`, "Acme ( https://x.example )"},
		{"head and scripts left out", `<html><head><title>T</title><style>p{}</style></head><body><p>B</p><script>x()</script></body></html>`, "B"},
		{"entities", `<p>Tom &amp; Jerry &lt;3</p>`, "Tom & Jerry <3"},
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
