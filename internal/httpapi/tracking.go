package httpapi

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/engagement"
)

// pixel is a transparent 1×1 GIF.
var pixel = []byte{0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
	0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b}

func hit(c echo.Context) engagement.Hit {
	return engagement.Hit{Token: c.Param("token"), UserAgent: c.Request().UserAgent(), IP: c.RealIP()}
}

// trackOpen serves the open pixel and records the open.
func (s *Server) trackOpen(c echo.Context) error {
	if err := s.deps.Tracker.Open(c.Request().Context(), hit(c)); err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "no-store, max-age=0")
	return c.Blob(http.StatusOK, "image/gif", pixel)
}

// trackClick records a click and redirects to the URL signed into the link:
// never anywhere else, so the endpoint is no open redirect.
func (s *Server) trackClick(c echo.Context) error {
	to, err := s.deps.Tracker.Click(c.Request().Context(), hit(c))
	if err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "no-store, max-age=0")
	return c.Redirect(http.StatusFound, to)
}
