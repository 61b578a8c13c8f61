package render

import (
	htmltemplate "html/template"
	"strings"
	"sync"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/templates"
)

// DefaultLayoutName is the name of the stored layout that wraps every email
// whose template names no other (templates/layouts/default.html, applied by
// `tend campaigns apply` or PUT /v1/templates/layouts/default). Until one is
// stored, DefaultLayout does.
const DefaultLayoutName = "layouts/default"

// LayoutData is what a layout sees as dot: the message's Data (so a layout
// may use .Contact, .CSM...) and the parts the renderer fills in.
type LayoutData struct {
	Data
	Subject string
	Body    htmltemplate.HTML // the template's rendered body block
	// SignAsCSM is true when the message is signed by the account's CSM:
	// the layout then adds the CSM's signature.
	SignAsCSM      bool
	UnsubscribeURL string
	PostalAddress  string // the sender's postal address (CAN-SPAM)
}

// Layout wraps the body of every email: the HTML shell, its CSS, the
// signature, the unsubscribe link and the postal address. The renderer adds
// the open pixel itself, so a layout cannot forget it.
//
// The CSS of its <style> elements is inlined, with the template's, into the
// layout's and the template's own elements, once per template (premail.go).
// Markup that comes with the data is not styled by it: the CSM's
// signature_html, which the default layout puts in a <div class="signature">
// (itself styled), gets what inherits from that div (font, colour), but a
// rule such as ".signature p" is not inlined into its paragraphs. Rules for
// such markup go in a <style data-premailer="ignore">, which stays as it is
// for the clients that read <style> (the default layout has one); otherwise
// a signature styles itself with style attributes.
type Layout struct {
	Name   string
	t      *htmltemplate.Template // as written
	source string
}

// DefaultLayout is the built-in layout: templates/layouts/default.html as
// this binary was built with it, used until a layout is stored under
// DefaultLayoutName.
var DefaultLayout = sync.OnceValue(func() *Layout {
	l, err := ParseLayout(DefaultLayoutName, templates.DefaultLayout)
	if err != nil {
		panic("render: the default layout is broken: " + err.Error())
	}
	return l
})

// Markers that ParseLayout looks for in a layout's output.
const (
	markBody  = "tend-layout-body-e1c2"
	markUnsub = "https://tend.invalid/u/tend-layout-unsubscribe-e1c2"
	markAddr  = "tend-layout-postal-e1c2"
)

// ParseLayout parses a layout: an html/template that must output {{.Body}},
// {{.UnsubscribeURL}} and {{.PostalAddress}}, whether or not the message is
// signed by a CSM, and the CSM's signature or name when it is. It is refused
// (errs.Invalid, "invalid_template") otherwise.
func ParseLayout(name, source string) (*Layout, error) {
	t, err := htmltemplate.New(name).Option("missingkey=error").Funcs(funcs).Parse(source)
	if err != nil {
		return nil, templateError(name, err)
	}
	l := &Layout{Name: name, t: t, source: source}
	// Execute it rather than search its source, so that a reference inside a
	// branch that is never taken does not count.
	for _, signed := range []bool{false, true} {
		d := LayoutData{
			Data: SampleData(), Subject: "Sample subject", Body: "<p>" + markBody + "</p>",
			SignAsCSM: signed, UnsubscribeURL: markUnsub, PostalAddress: markAddr,
		}
		if !signed {
			d.CSM = CSMData{}
		}
		out, err := l.execute(l.t, d)
		if err != nil {
			return nil, err
		}
		for _, need := range []struct{ mark, field string }{
			{markBody, "Body"}, {markUnsub, "UnsubscribeURL"}, {markAddr, "PostalAddress"},
		} {
			if !strings.Contains(out, need.mark) {
				return nil, errs.E(errs.Invalid, "invalid_template", "layout %q must output {{.%s}}", name, need.field).
					With("template", name)
			}
		}
		// Mail sent as the CSM carries the CSM's signature (or at least
		// name): the sample's signature and name both say who it is.
		if signed && !strings.Contains(out, htmltemplate.HTMLEscapeString(d.CSM.Name)) {
			return nil, errs.E(errs.Invalid, "invalid_template",
				"layout %q must sign the mail a CSM sends: output {{.CSM.SignatureHTML}} or {{.CSM.Name}} when {{.SignAsCSM}} is true", name).
				With("template", name)
		}
	}
	return l, nil
}

// execute executes t, a parse of l (as written or inlined).
func (l *Layout) execute(t *htmltemplate.Template, d LayoutData) (string, error) {
	var b strings.Builder
	b.Grow(len(d.Body) + 4096)
	if err := t.Execute(&b, d); err != nil {
		return "", templateError(l.Name, err)
	}
	return b.String(), nil
}
