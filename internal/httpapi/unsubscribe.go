package httpapi

import (
	"html/template"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/errs"
)

var unsubscribePage = template.Must(template.New("u").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Email preferences</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}
button{font-size:1rem;padding:.6rem 1rem;margin:.3rem 0;cursor:pointer}</style></head>
<body>
{{if .Done}}<h1>You are unsubscribed</h1><p>{{.Done}}</p>
{{else}}<h1>Email preferences</h1>
<p>You receive these emails as {{.Email}}.</p>
<form method="post"><input type="hidden" name="scope" value="topic">
<button type="submit">Unsubscribe from {{.Topic}} emails</button></form>
<form method="post"><input type="hidden" name="scope" value="all">
<button type="submit">Unsubscribe from all emails</button></form>{{end}}
</body></html>`))

// unsubscribeGet shows the preferences page for a signed unsubscribe token.
func (s *Server) unsubscribeGet(c echo.Context) error {
	info, err := s.deps.Unsubscribes.Lookup(c.Request().Context(), c.Param("token"))
	if err != nil {
		return err
	}
	return render(c, unsubscribePage, map[string]any{"Email": info.Email, "Topic": info.Topic})
}

// unsubscribePost unsubscribes: RFC 8058 one-click (a POST with
// List-Unsubscribe=One-Click and no cookie or key) unsubscribes from the
// campaign's topic; the page's buttons choose the topic or everything.
func (s *Server) unsubscribePost(c echo.Context) error {
	scope := c.FormValue("scope")
	if scope == "" {
		scope = "topic"
	}
	if scope != "topic" && scope != "all" {
		return errs.E(errs.Invalid, "invalid_scope", "scope is topic or all")
	}
	info, err := s.deps.Unsubscribes.Unsubscribe(c.Request().Context(), c.Param("token"), scope == "all")
	if err != nil {
		return err
	}
	msg := "You will no longer receive " + info.Topic + " emails at " + info.Email + "."
	if scope == "all" {
		msg = "You will no longer receive any of these emails at " + info.Email + "."
	}
	if c.FormValue("List-Unsubscribe") == "One-Click" {
		return c.JSON(http.StatusOK, map[string]string{"status": "unsubscribed", "topic": info.Topic})
	}
	return render(c, unsubscribePage, map[string]any{"Done": msg})
}

func render(c echo.Context, t *template.Template, data any) error {
	c.Response().Header().Set(echo.HeaderContentType, echo.MIMETextHTMLCharsetUTF8)
	c.Response().WriteHeader(http.StatusOK)
	return t.Execute(c.Response(), data)
}
