package httpapi

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/account"
)

func (s *Server) postAccounts(c echo.Context) error {
	in, err := bindOneOrMany[account.AccountInput](c, "accounts")
	if err != nil {
		return err
	}
	changed, err := s.deps.Accounts.UpsertAccounts(c.Request().Context(), in)
	if err != nil {
		return err
	}
	s.changed(c.Request().Context(), changed)
	auditTarget(c, "%d accounts", len(in))
	if len(in) == 1 {
		auditTarget(c, "account %s", in[0].ID)
	}
	return c.JSON(http.StatusOK, map[string]any{"upserted": len(in), "changed": len(changed)})
}

// accountView is GET /v1/accounts/{id}: the account and its profile.
type accountView struct {
	account.Account
	Profile  *account.Profile `json:"profile"`
	Contacts int              `json:"contacts"`
	Segments []string         `json:"segments"`
	Hold     any              `json:"hold"`
}

func (s *Server) getAccount(c echo.Context) error {
	ctx := c.Request().Context()
	a, err := s.deps.Accounts.Get(ctx, c.Param("id"))
	if err != nil {
		return err
	}
	p, err := s.deps.Accounts.ProfileOf(ctx, a.ID)
	if err != nil {
		return err
	}
	contacts, err := s.deps.Accounts.ContactsOf(ctx, a.ID)
	if err != nil {
		return err
	}
	segs, err := s.deps.Segments.CurrentOf(ctx, a.ID)
	if err != nil {
		return err
	}
	hold, err := s.deps.Outbox.ActiveHold(ctx, a.ID)
	if err != nil {
		return err
	}
	v := accountView{Account: a, Profile: p, Contacts: len(contacts), Segments: segs}
	if hold != nil {
		v.Hold = hold
	}
	return c.JSON(http.StatusOK, v)
}

func (s *Server) postContacts(c echo.Context) error {
	in, err := bindOneOrMany[account.ContactInput](c, "contacts")
	if err != nil {
		return err
	}
	if err := s.deps.Accounts.UpsertContacts(c.Request().Context(), in); err != nil {
		return err
	}
	auditTarget(c, "%d contacts", len(in))
	if len(in) == 1 {
		auditTarget(c, "contact %s", in[0].ID)
	}
	return c.JSON(http.StatusOK, map[string]any{"upserted": len(in)})
}

func (s *Server) getContact(c echo.Context) error {
	ct, err := s.deps.Accounts.GetContact(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, ct)
}

func (s *Server) postCSMs(c echo.Context) error {
	in, err := bindOneOrMany[account.CSMInput](c, "csms")
	if err != nil {
		return err
	}
	out, err := s.deps.Accounts.UpsertCSMs(c.Request().Context(), in)
	if err != nil {
		return err
	}
	auditTarget(c, "%d csms", len(in))
	if len(in) == 1 {
		auditTarget(c, "csm %s", in[0].Email)
		return c.JSON(http.StatusOK, out[0])
	}
	return c.JSON(http.StatusOK, map[string]any{"csms": out})
}

func (s *Server) postEvents(c echo.Context) error {
	var body struct {
		Events []account.EventInput `json:"events"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	res, err := s.deps.Accounts.IngestEvents(c.Request().Context(), body.Events, false)
	if err != nil {
		return err
	}
	s.changed(c.Request().Context(), res.Changed)
	auditTarget(c, "%d events", len(body.Events))
	return c.JSON(http.StatusAccepted, res)
}

func (s *Server) postMetrics(c echo.Context) error {
	var body struct {
		Metrics []account.MetricInput `json:"metrics"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	changed, err := s.deps.Accounts.RecordMetrics(c.Request().Context(), body.Metrics)
	if err != nil {
		return err
	}
	s.changed(c.Request().Context(), changed)
	auditTarget(c, "%d metric snapshots", len(body.Metrics))
	return c.JSON(http.StatusAccepted, map[string]any{"accepted": len(body.Metrics)})
}
