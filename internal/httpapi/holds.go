package httpapi

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

func (s *Server) placeHold(c echo.Context) error {
	var body struct {
		Reason string     `json:"reason"`
		Until  *time.Time `json:"until,omitempty"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	k, _ := keyOf(c)
	h, err := s.deps.Outbox.PlaceHold(c.Request().Context(), c.Param("id"), body.Reason, body.Until, k.Name)
	if err != nil {
		return err
	}
	auditTarget(c, "account %s", c.Param("id"))
	return c.JSON(http.StatusCreated, h)
}

func (s *Server) releaseHold(c echo.Context) error {
	n, err := s.deps.Outbox.ReleaseHolds(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	auditTarget(c, "account %s", c.Param("id"))
	return c.JSON(http.StatusOK, map[string]any{"released": n})
}

func (s *Server) getSendSwitch(c echo.Context) error {
	sw, err := s.deps.Outbox.SendSwitch(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, sw)
}

func (s *Server) putSendSwitch(c echo.Context) error {
	var body struct {
		Paused *bool  `json:"paused"`
		Reason string `json:"reason,omitempty"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	if body.Paused == nil {
		return badRequest("invalid_json", `give {"paused": true} or {"paused": false}`)
	}
	k, _ := keyOf(c)
	sw, err := s.deps.Outbox.SetSendSwitch(c.Request().Context(), *body.Paused, body.Reason, k.Name)
	if err != nil {
		return err
	}
	auditTarget(c, "sending paused=%v", sw.Paused)
	return c.JSON(http.StatusOK, sw)
}
