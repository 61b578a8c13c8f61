package httpapi

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/health"
)

func (s *Server) accountHealth(c echo.Context) error {
	ctx := c.Request().Context()
	a, err := s.deps.Accounts.Get(ctx, c.Param("id"))
	if err != nil {
		return err
	}
	ex, err := s.deps.Health.Explain(ctx, a.ID)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, ex)
}

func (s *Server) getHealthModel(c echo.Context) error {
	m, err := s.deps.Health.Model(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, m)
}

// putHealthModel replaces the model; with ?dry_run=true it answers how many
// accounts would change band and changes nothing.
func (s *Server) putHealthModel(c echo.Context) error {
	ctx := c.Request().Context()
	var m health.Model
	if err := bind(c, &m); err != nil {
		return err
	}
	switch c.QueryParam("dry_run") {
	case "true", "1":
		res, err := s.deps.Health.DryRun(ctx, m)
		if err != nil {
			return err
		}
		auditTarget(c, "health model (dry run)")
		return c.JSON(http.StatusOK, res)
	case "", "false", "0":
	default:
		return badRequest("invalid_query", "dry_run must be true or false")
	}
	k, _ := keyOf(c)
	v, err := s.deps.Health.PutModel(ctx, m, k.Name)
	if err != nil {
		return err
	}
	if s.deps.Signals != nil {
		s.deps.Signals.HealthModelChanged(ctx, v.Version)
	}
	auditTarget(c, "health model version %d", v.Version)
	return c.JSON(http.StatusOK, v)
}

func (s *Server) healthSummary(c echo.Context) error {
	sum, err := s.deps.Health.Summary(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, sum)
}
