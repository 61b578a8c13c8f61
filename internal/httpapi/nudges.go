package httpapi

import (
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/errs"
)

func (s *Server) listNudges(c echo.Context) error {
	contact := c.QueryParam("contact_id")
	if contact == "" {
		return errs.E(errs.Invalid, "invalid_parameter", "give contact_id")
	}
	list, err := s.deps.Outbox.Inbox(c.Request().Context(), contact)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"nudges": list})
}

func (s *Server) nudgeEvent(c echo.Context) error {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil {
		return errs.E(errs.NotFound, "nudge_not_found", "no nudge %q", c.Param("id"))
	}
	var body struct {
		Kind string `json:"kind"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	n, err := s.deps.Outbox.NudgeEvent(c.Request().Context(), id, body.Kind)
	if err != nil {
		return err
	}
	auditTarget(c, "nudge %d (%s)", id, body.Kind)
	return c.JSON(http.StatusOK, n)
}
