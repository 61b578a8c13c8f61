package render

import (
	"errors"
	"fmt"
	htmlstd "html"
	htmltemplate "html/template"
	"net/url"
	"strings"
	"sync"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"

	"github.com/tendhq/tend/internal/html2text"
	"github.com/tendhq/tend/internal/token"
)

// Renderer renders messages. Its fields are set once; it is then safe for
// concurrent use.
type Renderer struct {
	Signer        *token.Signer // signs tracking tokens; may be nil for test sends only
	PublicURL     string        // where /t/o, /t/c and /u are served (TEND_PUBLIC_URL)
	PostalAddress string        // the sender's postal address, shown in every email (CAN-SPAM)
	Layout        *Layout       // nil: DefaultLayout()
}

// EmailOptions say how one email is rendered.
type EmailOptions struct {
	// SignAsCSM adds the CSM's signature (the message is sent as the CSM).
	// It has no effect when Data.CSM is the zero value.
	SignAsCSM bool
	// Test marks a test send: the subject is prefixed with "[TEST] " and
	// nothing is tracked (no pixel, links left as written, and an
	// unsubscribe link that unsubscribes no one).
	Test bool
	// Layout wraps the body; nil: the renderer's.
	Layout *Layout
}

// Email is a rendered email.
type Email struct {
	Subject string
	HTML    string
	// Text is the plain-text part, derived from the HTML by
	// inbucket/html2text as internal/html2text has it ("link text ( URL )",
	// headings underlined, list items starred). Its links are the original
	// URLs, not the tracked ones: readable, and the same in a test send;
	// clicks in text-only clients are therefore not counted. The
	// unsubscribe URL is in it too.
	Text string
	// UnsubscribeURL is the message's unsubscribe page, also for the
	// List-Unsubscribe header (RFC 8058 one-click POSTs to it).
	UnsubscribeURL string
	// Links are the http(s) links of the email that are tracked (or, in a
	// test send, would be), as written, in order of first appearance.
	Links []string
}

// TestUnsubscribePath is the unsubscribe path of a test send: not a token, so
// the unsubscribe page refuses it and no one is unsubscribed.
const TestUnsubscribePath = "/u/test"

// sampleRenderer renders the samples that validate templates.
var sampleRenderer = sync.OnceValue(func() *Renderer {
	return &Renderer{
		Signer:        token.NewSigner([]byte("tend-sample-secret-not-for-sending")),
		PublicURL:     "https://tend.example.com",
		PostalAddress: "Tend Inc., 1 Sample Street, Springfield",
	}
})

// Email renders email template t for d as outbox message messageID.
//
// It executes the subject and body blocks, wraps the body in the layout
// (which adds the signature, the unsubscribe link and the postal address),
// derives the text part, rewrites every http(s) link for click tracking and
// adds the open pixel. The CSS is already inlined in the template and layout
// executed (see premail.go): nothing is inlined per message.
func (r *Renderer) Email(t *Template, d Data, messageID int64, opts EmailOptions) (Email, error) {
	return r.email(t, d, messageID, opts, false)
}

// email renders an email; strict (parse-time validation) also refuses a
// subject whose own text spans lines, where a send folds them.
func (r *Renderer) email(t *Template, d Data, messageID int64, opts EmailOptions, strict bool) (Email, error) {
	out, pg, err := r.page(t, d, messageID, opts, strict)
	if err != nil {
		return Email{}, err
	}
	st, ok := streamPage(pg.html, pg.rewrite, pg.pixel)
	if !ok {
		if st, err = parsePage(pg.html, pg.rewrite, pg.pixel); err != nil {
			return Email{}, invalid(t.Name, "%v", err)
		}
	}
	out.HTML, out.Text, out.Links = st.html, st.text, st.links
	return out, nil
}

// page is an email's page as its templates executed it, before its text part
// is taken, its links are tracked and its pixel is added.
type page struct {
	html    string
	rewrite func(href string) (string, bool) // see linkTracker
	pixel   string                           // the open pixel's URL; "" for none
}

// page executes the templates of an email: the Email (subject, unsubscribe
// URL) and the page to finish.
func (r *Renderer) page(t *Template, d Data, messageID int64, opts EmailOptions, strict bool) (Email, page, error) {
	if t.Kind != KindEmail || t.html == nil {
		return Email{}, page{}, invalid(t.Name, "is a %s template, not an email", t.Kind)
	}
	track := !opts.Test
	if track && r.Signer == nil {
		return Email{}, page{}, errors.New("render: a renderer without a signer can only render test sends")
	}
	base := strings.TrimRight(r.PublicURL, "/")

	layout := opts.Layout
	if layout == nil {
		layout = r.Layout
	}
	if layout == nil {
		layout = DefaultLayout()
	}
	in := t.inlinedFor(layout)

	raw, err := t.execHTML(in.set, "subject", d, nil)
	if err != nil {
		return Email{}, page{}, err
	}
	subject, multiline := subjectText(raw)
	switch {
	case subject == "":
		return Email{}, page{}, invalid(t.Name, "the subject renders empty")
	case strict && multiline:
		return Email{}, page{}, invalid(t.Name, "the subject must be one line")
	}
	if opts.Test {
		subject = "[TEST] " + subject
	}
	body, err := t.execHTML(in.set, "body", d, &t.bodySize)
	if err != nil {
		return Email{}, page{}, err
	}

	out := Email{Subject: subject, UnsubscribeURL: base + TestUnsubscribePath}
	if track {
		out.UnsubscribeURL = base + "/u/" + r.Signer.Unsubscribe(messageID)
	}
	doc, err := layout.execute(in.layout, LayoutData{
		Data: d, Subject: subject, Body: htmltemplate.HTML(body),
		SignAsCSM: opts.SignAsCSM && d.CSM != (CSMData{}), UnsubscribeURL: out.UnsubscribeURL, PostalAddress: r.PostalAddress,
	})
	if err != nil {
		return Email{}, page{}, err
	}

	// rewrite gives the href of a link in the HTML part; the text part
	// keeps the original URLs.
	rewrite := func(u string) (string, bool) {
		if u == out.UnsubscribeURL || strings.HasPrefix(u, base+"/t/") || strings.HasPrefix(u, base+"/u/") {
			return "", false // Tend's own links are not tracked twice
		}
		if !track {
			return u, true
		}
		return base + "/t/c/" + r.Signer.Click(messageID, u), true
	}
	pixel := ""
	if track {
		pixel = base + "/t/o/" + r.Signer.Open(messageID)
	}
	return out, page{html: doc, rewrite: rewrite, pixel: pixel}, nil
}

// parsePage is streamPage for any page: through html.Parse, the tree and
// html.Render.
func parsePage(page string, rewrite func(string) (string, bool), pixel string) (streamed, error) {
	doc, err := html.Parse(strings.NewReader(page))
	if err != nil {
		return streamed{}, fmt.Errorf("the rendered HTML does not parse: %w", err)
	}
	var out streamed
	out.text = textPart(doc) // before the links are rewritten: it keeps the original URLs
	out.links = rewriteLinks(doc, rewrite)
	if pixel != "" {
		addPixel(doc, pixel)
	}
	var b strings.Builder
	b.Grow(len(page) + len(page)/2)
	if err := html.Render(&b, doc); err != nil {
		return streamed{}, fmt.Errorf("the HTML could not be written: %w", err)
	}
	out.html = b.String()
	return out, nil
}

// textPart returns the plain text of doc, with inbucket/html2text (see
// internal/html2text): what is in the head (CSS, title) is left out.
func textPart(doc *html.Node) string {
	return html2text.FromHTMLNode(doc) + "\n"
}

// subjectText turns a rendered subject block (HTML text) into the plain text
// of a Subject header: entities decoded, surrounding space trimmed, control
// characters (line breaks that data may carry) made spaces. multiline tells
// whether it spanned lines.
func subjectText(raw string) (subject string, multiline bool) {
	s := strings.TrimSpace(htmlstd.UnescapeString(raw))
	multiline = strings.ContainsAny(s, "\r\n")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " "), multiline
}

// rewriteLinks rewrites the href of every <a> and <area> with links (see
// linkTracker) and returns the links counted, unique, in order.
func rewriteLinks(doc *html.Node, track func(string) (string, bool)) []string {
	links := linkTracker{track: track}
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			if c.Type != html.ElementNode {
				continue
			}
			if c.DataAtom == atom.A || c.DataAtom == atom.Area {
				for i, a := range c.Attr {
					if a.Namespace != "" || a.Key != "href" {
						continue
					}
					if to, ok := links.rewrite(a.Val); ok {
						c.Attr[i].Val = to
					}
					break
				}
			}
			walk(c)
		}
	}
	walk(doc)
	return links.links
}

// linkTracker rewrites the links of one email. The href of a link that is an
// absolute http(s) URL goes to track, which returns the new href and whether
// the link counts (is tracked); other links (mailto:, tel:, #anchors,
// relative) are left alone. Each distinct href is checked and tracked once.
type linkTracker struct {
	track func(string) (string, bool)
	done  map[string]trackedLink
	links []string // the links counted, unique, in order
}

type trackedLink struct {
	to string
	ok bool
}

// rewrite returns the new value of an href, and whether it changes.
func (l *linkTracker) rewrite(href string) (string, bool) {
	href = strings.TrimSpace(href)
	if t, seen := l.done[href]; seen {
		return t.to, t.ok
	}
	var t trackedLink
	if isWebURL(href) {
		t.to, t.ok = l.track(href)
	}
	if l.done == nil {
		l.done = map[string]trackedLink{}
	}
	l.done[href] = t
	if t.ok {
		l.links = append(l.links, href)
	}
	return t.to, t.ok
}

// isWebURL tells whether s is an absolute http or https URL.
func isWebURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// addPixel appends the open pixel to the end of the body.
func addPixel(doc *html.Node, src string) {
	body := find(doc, atom.Body)
	if body == nil {
		return // html.Parse always makes one
	}
	body.AppendChild(&html.Node{Type: html.ElementNode, Data: "img", DataAtom: atom.Img, Attr: pixelAttrs(src)})
}

// pixelAttrs are the attributes of the open pixel at src.
func pixelAttrs(src string) []html.Attribute {
	return []html.Attribute{
		{Key: "src", Val: src}, {Key: "width", Val: "1"}, {Key: "height", Val: "1"}, {Key: "alt", Val: ""},
		{Key: "style", Val: "display:block;border:0;width:1px;height:1px"},
	}
}

// attr returns n's attribute key, or "".
func attr(n *html.Node, key string) string {
	v, _ := attrOK(n, key)
	return v
}

// find returns the first element of kind a in document order, or nil.
func find(n *html.Node, a atom.Atom) *html.Node {
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && c.DataAtom == a {
			return c
		}
		if f := find(c, a); f != nil {
			return f
		}
	}
	return nil
}
