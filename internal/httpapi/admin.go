package httpapi

import (
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/errs"
)

func (s *Server) getAudit(c echo.Context) error {
	before, err := queryInt(c, "before", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	entries, err := s.deps.Audit.List(c.Request().Context(), int64(before), limit)
	if err != nil {
		return err
	}
	out := map[string]any{"entries": entries}
	if len(entries) == limit {
		out["next_before"] = entries[len(entries)-1].ID
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) listKeys(c echo.Context) error {
	keys, err := s.deps.Keys.List(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"keys": keys})
}

func (s *Server) createKey(c echo.Context) error {
	var body struct {
		Name string `json:"name"`
		Role string `json:"role"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	role, err := apikey.ParseRole(body.Role)
	if err != nil {
		return err
	}
	k, secret, err := s.deps.Keys.Create(c.Request().Context(), body.Name, role)
	if err != nil {
		return err
	}
	auditTarget(c, "key %d (%s, %s)", k.ID, k.Name, k.Role)
	return c.JSON(http.StatusCreated, map[string]any{"key": k, "secret": secret})
}

func (s *Server) revokeKey(c echo.Context) error {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil {
		return errs.E(errs.NotFound, "key_not_found", "no API key with id %q", c.Param("id"))
	}
	k, err := s.deps.Keys.Revoke(c.Request().Context(), id)
	if err != nil {
		return err
	}
	auditTarget(c, "key %d (%s)", k.ID, k.Name)
	return c.JSON(http.StatusOK, k)
}

// queryInt reads an optional integer query parameter within [lo, hi].
func queryInt(c echo.Context, name string, def, lo, hi int) (int, error) {
	v := c.QueryParam(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, errs.E(errs.Invalid, "invalid_parameter", "query parameter %s must be a whole number from %d to %d", name, lo, hi)
	}
	return n, nil
}
