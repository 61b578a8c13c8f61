package render

import (
	"regexp"
	"strings"
	"testing"
)

var leftoverRe = regexp.MustCompile(`<style type="text/css">(.*?)</style>`)

// inlineBody inlines css, in the head of a bare layout, into body (template
// markup), and returns the body's new source and the CSS left in the head.
func inlineBody(t *testing.T, css, body string) (out, left string) {
	t.Helper()
	lo, bo, err := inlineCSS(`<html><head><style>`+css+`</style></head><body>{{.Body}}</body></html>`, body)
	if err != nil {
		t.Fatal(err)
	}
	if m := leftoverRe.FindStringSubmatch(lo); m != nil {
		left = m[1]
	}
	return bo, left
}

func TestInlineCascade(t *testing.T) {
	tests := []struct {
		name, css, body string
		want            string
		left            []string
	}{
		{"type, class and id",
			`p { color: red } .x { color: green } #y { color: blue }`,
			`<p>a</p><p class="x">b</p><p class="x" id="y">c</p>`,
			`<p style="color:red">a</p><p style="color:green" class="x">b</p><p style="color:blue" class="x" id="y">c</p>`, nil},
		{"source order breaks ties",
			`.a { color: red } .b { color: blue }`,
			`<p class="b a">x</p>`,
			`<p style="color:blue" class="b a">x</p>`, nil},
		{"specificity beats order",
			`div p { color: red } p { color: blue }`,
			`<div><p>x</p></div>`,
			`<div><p style="color:red">x</p></div>`, nil},
		{"!important beats specificity",
			`p { color: red !important } .a { color: blue }`,
			`<p class="a">x</p>`,
			`<p style="color:red" class="a">x</p>`, nil},
		{"own style wins, in its place",
			`p { color: red; margin: 0 !important }`,
			`<p id="x" style="color: blue; margin: 4px" class="y">x</p>`,
			`<p id="x" style="color:blue;margin:4px" class="y">x</p>`, nil},
		{"combinators and groups",
			`ul > li, .n + p, h1 ~ span { color: red } td:first-child { color: blue }`,
			`<ul><li>a</li></ul><p class="n">b</p><p>c</p><h1>d</h1><span>e</span><table><tr><td>f</td><td>g</td></tr></table>`,
			`<ul><li style="color:red">a</li></ul><p class="n">b</p><p style="color:red">c</p><h1>d</h1><span style="color:red">e</span><table><tr><td style="color:blue">f</td><td>g</td></tr></table>`, nil},
		{":not and attribute selectors",
			`p:not(.skip) { color: red } a[href^="https"] { color: blue }`,
			`<p class="skip">a</p><p>b</p><a href="https://x">c</a><a href="mailto:x">d</a>`,
			`<p class="skip">a</p><p style="color:red">b</p><a style="color:blue" href="https://x">c</a><a href="mailto:x">d</a>`, nil},
		{"pixel sizes copied to Outlook's attributes, unless set",
			`img { width: 120px; height: 0 } td { width: 50% } .w { width: 10px }`,
			`<img src="a.png" alt=""><img class="w" width="20" src="b.png"><table><tr><td>x</td></tr></table>`,
			`<img style="width:120px;height:0" width="120" height="0" src="a.png" alt=""><img style="height:0;width:10px" height="0" class="w" width="20" src="b.png"><table><tr><td style="width:50%">x</td></tr></table>`, nil},
		{"tags and attributes as written",
			`p { color: red } br { clear: both }`,
			"<P\n  CLASS=x data-a = 'q\"r' >a<br/>b</P>",
			"<P style=\"color:red\"\n  CLASS=x data-a = 'q\"r' >a<br style=\"clear:both\"/>b</P>", nil},
		// (Premailer writes other at-rules, such as @font-face, without their
		// keyword: they go in a <style data-premailer="ignore">.)
		{"not inlinable stays",
			`a:hover { color: red } * { margin: 0 } p::first-line { color: blue } @media (max-width: 600px) { p { color: green } }`,
			`<p><a href="#">x</a></p>`,
			`<p><a href="#">x</a></p>`,
			[]string{"a:hover { color: red !important }", "* { margin: 0 !important }", "p::first-line { color: blue !important }",
				"@media (max-width: 600px){ p { color: green !important } }"}},
		{"unparsable selector", `p!! { color: red } p { color: blue }`, `<p>x</p>`, `<p style="color:blue">x</p>`, nil},
		{"no rules", ``, `<p>x</p>`, `<p>x</p>`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, left := inlineBody(t, tt.css, tt.body)
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
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

// A <style> for other media, or that premailer is told to ignore, stays.
func TestInlineStylesThatStay(t *testing.T) {
	const ignored = `<style data-premailer="ignore">@font-face { font-family: X; src: url(x.woff) } .y p { margin: 0 }</style>`
	lo, bo, err := inlineCSS(`<html><head><style media="print">p { color: red }</style><style media="all">p { margin: 0 }</style>`+ignored+`</head><body>{{.Body}}</body></html>`, `<p>x</p>`)
	if err != nil {
		t.Fatal(err)
	}
	if lo != `<html><head><style media="print">p { color: red }</style>`+ignored+`</head><body>{{.Body}}</body></html>` || bo != `<p style="margin:0">x</p>` {
		t.Errorf("got\n%s\n%s", lo, bo)
	}
}

// The layout's rules reach the body through the layout's markup around it
// (descendant selectors), and the body's <style> reaches the layout.
func TestInlineBodyInLayout(t *testing.T) {
	layout := "<!DOCTYPE html>\n<html><head>\n<title>{{.Subject}}</title>\n<style>\n.content p { color: red }\n.footer { color: gray }\n</style>\n</head>\n" +
		`<body><div class="content">{{- .Body -}}</div><div class="footer"><a href="{{.UnsubscribeURL}}">u</a> {{.PostalAddress}}</div></body></html>`
	body := "\n<style>.footer a { color: blue } @media (max-width: 1px) { p { color: green } }</style>\n<p>x</p>\n"
	lo, bo, err := inlineCSS(layout, body)
	if err != nil {
		t.Fatal(err)
	}
	wantLayout := "<!DOCTYPE html>\n<html><head>\n<title>{{.Subject}}</title>\n" +
		`<style type="text/css">@media (max-width: 1px){ p { color: green !important } }</style>{{/*` + "\n\n\n*/}}\n</head>\n" +
		`<body><div class="content">{{- .Body -}}</div><div style="color:gray" class="footer"><a style="color:blue" href="{{.UnsubscribeURL}}">u</a> {{.PostalAddress}}</div></body></html>`
	if lo != wantLayout {
		t.Errorf("layout:\n%s\nwant\n%s", lo, wantLayout)
	}
	if want := "\n\n<p style=\"color:red\">x</p>\n"; bo != want {
		t.Errorf("body: %q, want %q", bo, want)
	}
	if strings.Count(lo, "\n") != strings.Count(layout, "\n") || strings.Count(bo, "\n") != strings.Count(body, "\n") {
		t.Errorf("lines were lost")
	}
}

// A layout without one {{.Body}} still styles the body, without the layout
// around it.
func TestInlineLayoutWithTwoBodies(t *testing.T) {
	layout := `<html><head><style>p { color: red } .content p { margin: 0 }</style></head><body>{{if .SignAsCSM}}<div class="content">{{.Body}}</div>{{else}}{{.Body}}{{end}}</body></html>`
	_, bo, err := inlineCSS(layout, `<p>x</p>`)
	if err != nil {
		t.Fatal(err)
	}
	if bo != `<p style="color:red">x</p>` {
		t.Errorf("body: %s", bo)
	}
}

// Template actions come through premailer as they were written.
func TestInlineActions(t *testing.T) {
	css := `p { margin: 0 } .x { color: red } a { color: blue } td.cell { padding: 4px } b { font-weight: 700 }`
	tests := []struct{ name, body, want string }{
		{"attribute value", `<a href="{{.CSM.CalendarURL}}">book</a>`,
			`<a style="color:blue" href="{{.CSM.CalendarURL}}">book</a>`},
		{"quotes and > in an attribute's action", `<a href="{{index .Contact.Traits "site" | default "https://x.example/?a=1&b=>"}}">site</a>`,
			`<a style="color:blue" href="{{index .Contact.Traits "site" | default "https://x.example/?a=1&b=>"}}">site</a>`},
		{"if around elements", `{{if .CSM.Name}}<p class="x">Hi {{.CSM.FirstName}}</p>{{else}}<p>Hi</p>{{end}}`,
			`{{if .CSM.Name}}<p style="margin:0;color:red" class="x">Hi {{.CSM.FirstName}}</p>{{else}}<p style="margin:0">Hi</p>{{end}}`},
		{"range over table rows", `<table>{{range $k, $v := .Profile.Features}}<tr><td class="cell">{{$k}}</td><td>{{$v}}</td></tr>{{end}}</table>`,
			`<table>{{range $k, $v := .Profile.Features}}<tr><td style="padding:4px" class="cell">{{$k}}</td><td>{{$v}}</td></tr>{{end}}</table>`},
		{"range over list items", "<ul>\n{{- range .Profile.Features}}\n<li><b>{{.}}</b></li>\n{{- end}}\n</ul>",
			"<ul>\n{{- range .Profile.Features}}\n<li><b style=\"font-weight:700\">{{.}}</b></li>\n{{- end}}\n</ul>"},
		// An attribute written against a branch's action is not seen.
		{"attributes in a branch", `<p {{if .Contact.Name}}class="x"{{else}}class="y"{{end}} id="{{.Contact.ID}}">x</p>`,
			`<p style="margin:0" {{if .Contact.Name}}class="x"{{else}}class="y"{{end}} id="{{.Contact.ID}}">x</p>`},
		{"own style with an action", `<p class="x" style="color: {{index .Account.Traits "color" | default "#000"}}">x</p>`,
			`<p class="x" style="margin:0;color:red;color: {{index .Account.Traits "color" | default "#000"}}">x</p>`},
		{"strings, raw strings and comments", "<p title=\"{{printf `}}%s` \"}}\"}}\">{{/* <p class=\"x\"> }} */}}{{- /* c */ -}}{{printf \"%s}}\" .Contact.Name}}</p>",
			"<p style=\"margin:0\" title=\"{{printf `}}%s` \"}}\"}}\">{{/* <p class=\"x\"> }} */}}{{- /* c */ -}}{{printf \"%s}}\" .Contact.Name}}</p>"},
		{"unquoted values", `<a href={{.CSM.CalendarURL}} class=x>b</a>`,
			`<a style="color:red" href={{.CSM.CalendarURL}} class=x>b</a>`},
		{"data markup", `<p>{{.CSM.SignatureHTML}}</p>`,
			`<p style="margin:0">{{.CSM.SignatureHTML}}</p>`},
		{"a <style> with an action stays", `<style>.x { color: {{index .Account.Traits "c"}} }</style><p class="x">x</p>`,
			`<style>.x { color: {{index .Account.Traits "c"}} }</style><p style="margin:0;color:red" class="x">x</p>`},
		{"text that looks like a placeholder", `<p>tendph0z tendphq1z</p>{{.Contact.Name}}`,
			`<p style="margin:0">tendph0z tendphq1z</p>{{.Contact.Name}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := inlineBody(t, css, tt.body)
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// Parsed templates send their inlined markup with the data in it.
func TestEmailInlinedActions(t *testing.T) {
	tmpl := mustParse(t, KindEmail, email("Hi", `<style>.cell { padding: 4px } .x { color: red }</style>
<table>{{range $k, $v := .Profile.Features}}<tr><td class="cell">{{$k}}</td></tr>{{end}}</table>
{{if .CSM.Name}}<p class="x">From {{.CSM.FirstName}}</p>{{end}}
<a href="{{index .Contact.Traits "site" | default "https://x.example/?a=1&b=2"}}">site</a>
<a href="{{.CSM.CalendarURL}}">book</a>`))
	if in := tmpl.inlinedFor(DefaultLayout()); in.err != nil {
		t.Fatalf("not inlined: %v", in.err)
	}
	d := SampleData()
	d.Profile.Features = map[string]int{"reports": 3, "sso": 1}
	e, err := testRenderer().Email(tmpl, d, 1, EmailOptions{Test: true})
	if err != nil {
		t.Fatal(err)
	}
	e.HTML = dom(t, e.HTML)
	for _, w := range []string{
		`<tr><td style="padding:4px" class="cell">reports</td></tr><tr><td style="padding:4px" class="cell">sso</td></tr>`,
		`<p style="margin:0 0 16px;color:red" class="x">From Grace</p>`,
		// (x/net/html sorts the attributes of <a>, a formatting element.)
		`<a href="https://x.example/?a=1&amp;b=2" style="color:#2563eb">site</a>`,
		`<a href="https://cal.example.com/grace" style="color:#2563eb">book</a>`,
	} {
		if !strings.Contains(e.HTML, w) {
			t.Errorf("HTML lacks %q:\n%s", w, e.HTML)
		}
	}
	if strings.Contains(e.HTML, ".cell") {
		t.Errorf("the template's <style> is still there:\n%s", e.HTML)
	}
}

// An error at send time names the line of the template as written, though
// inlining rewrote tags that spanned lines and removed a <style>.
func TestInlinedKeepsLines(t *testing.T) {
	src := email("Hi", `<style>
p { color: red }
</style>
<p
  class="x">x</p>
{{if eq .Contact.Role "x"}}{{.Contact.Traits.nick}}{{end}}`)
	tmpl := mustParse(t, KindEmail, src)
	if in := tmpl.inlinedFor(DefaultLayout()); in.err != nil {
		t.Fatalf("not inlined: %v", in.err)
	}
	d := SampleData()
	d.Contact.Role = "x"
	_, err := testRenderer().Email(tmpl, d, 1, EmailOptions{})
	wantInvalid(t, err, 7, "", "map has no entry")
}

func TestTemplateActions(t *testing.T) {
	src := "a{{.X}}b{{- if .Y -}}c{{/* }} \" */}}d{{- /* x */ -}}e{{printf \"}}\\\"\" 'x' '}'}}f{{printf `}}`}}g{{-3}}h"
	want := []string{"{{.X}}", "{{- if .Y -}}", "{{/* }} \" */}}", "{{- /* x */ -}}", "{{printf \"}}\\\"\" 'x' '}'}}", "{{printf `}}`}}", "{{-3}}"}
	spans, err := templateActions(src)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range spans {
		got = append(got, src[s[0]:s[1]])
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if _, err := templateActions("{{.X"); err == nil {
		t.Error("an unclosed action was accepted")
	}
}

func TestBodyBlock(t *testing.T) {
	tests := []struct{ src, want string }{
		{email("Hi", "<p>x</p>"), "<p>x</p>"},
		{`{{define "body"}}{{if .X}}<p>{{range .Y}}y{{end}}</p>{{else}}z{{end}}{{end}}{{define "subject"}}s{{end}}`, `{{if .X}}<p>{{range .Y}}y{{end}}</p>{{else}}z{{end}}`},
		{"{{define \"row\"}}<tr></tr>{{end}}{{- block `body` . -}}\n<p>b</p>\n{{- end}}", "\n<p>b</p>\n"},
		{`{{define "bodyx"}}<p>x</p>{{end}}`, ""},
		{`{{define "body"}}{{if(eq 1 1)}}a{{end}}b{{end}}`, `{{if(eq 1 1)}}a{{end}}b`},
	}
	for _, tt := range tests {
		start, end, ok := bodyBlock(tt.src)
		got := ""
		if ok {
			got = tt.src[start:end]
		}
		if got != tt.want {
			t.Errorf("bodyBlock(%q) = %q, want %q", tt.src, got, tt.want)
		}
	}
}

func TestRawAttrs(t *testing.T) {
	tag := `<p a=1 B='2' c="3>" d e = "5" /x=6 a=7 =y f>`
	nameEnd, attrs, end := rawAttrs(tag, nil)
	if nameEnd != 2 {
		t.Errorf("name ends at %d", nameEnd)
	}
	if end != len(tag)-1 {
		t.Errorf("stopped at %d, want %d (the closing >)", end, len(tag)-1)
	}
	if _, attrs, _ := rawAttrs("<p \u212aEY=1>", nil); len(attrs) != 1 || attrs[0].key != "\u212aey" {
		t.Errorf("a key with a Kelvin sign read as %+v: only ASCII letters are lower-cased", attrs)
	}
	if _, _, end := rawAttrs(`<p a="1>`, nil); end != len(`<p a="1>`) {
		t.Errorf("an unterminated value: stopped at %d, want the end", end)
	}
	var got []string
	for _, a := range attrs {
		s := a.key + ":" + a.value(tag)
		if !a.first {
			s += "(dup)"
		}
		got = append(got, s)
	}
	want := "a:1 b:2 c:3> d: e:5 x:6 a:7(dup) =y: f:"
	if strings.Join(got, " ") != want {
		t.Errorf("got  %s\nwant %s", strings.Join(got, " "), want)
	}
}

// Should inlining fail, the template and layout are sent as written.
func TestInlineFailureSendsAsWritten(t *testing.T) {
	tmpl := mustParse(t, KindEmail, email("Hi", "<p>x</p>"))
	broken := &Template{Name: tmpl.Name, Kind: KindEmail, Source: `{{define "subject"}}Hi{{end}}`, html: tmpl.html}
	in := inlineTemplate(broken, DefaultLayout())
	if in.err == nil || in.set != tmpl.html || in.layout != DefaultLayout().t {
		t.Errorf("got %+v", in)
	}
}
