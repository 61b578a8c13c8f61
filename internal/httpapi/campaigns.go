package httpapi

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/errs"
)

// mayWriteCampaign: marketing writes drips, product writes broadcasts,
// admin writes both.
func mayWriteCampaign(c echo.Context, kind string) error {
	k, _ := keyOf(c)
	switch {
	case k.Role == apikey.Admin,
		k.Role == apikey.Marketing,
		k.Role == apikey.Product && kind == campaign.KindBroadcast:
		return nil
	}
	return errs.E(errs.Forbidden, "forbidden", "a %s key may not write %s campaigns", k.Role, kind)
}

func (s *Server) postCampaign(c echo.Context) error {
	var d campaign.Definition
	if err := bind(c, &d); err != nil {
		return err
	}
	if err := mayWriteCampaign(c, d.Kind); err != nil {
		return err
	}
	ctx := c.Request().Context()
	changes, err := s.deps.Campaigns.Apply(ctx, campaign.Bundle{Campaigns: []campaign.Definition{d}}, false)
	if err != nil {
		return err
	}
	got, err := s.deps.Campaigns.Get(ctx, d.Name)
	if err != nil {
		return err
	}
	auditTarget(c, "campaign %s (version %d)", got.Name, got.CurrentVersion)
	status := http.StatusOK
	if changes[len(changes)-1].Action == "create" {
		status = http.StatusCreated
	}
	return c.JSON(status, map[string]any{"campaign": got, "change": changes[len(changes)-1]})
}

func (s *Server) getCampaign(c echo.Context) error {
	got, err := s.deps.Campaigns.Get(c.Request().Context(), c.Param("name"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, got)
}

func (s *Server) listCampaigns(c echo.Context) error {
	list, err := s.deps.Campaigns.List(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"campaigns": list})
}

func (s *Server) campaignAction(action string) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx := c.Request().Context()
		cur, err := s.deps.Campaigns.Get(ctx, c.Param("name"))
		if err != nil {
			return err
		}
		if err := mayWriteCampaign(c, cur.Kind); err != nil {
			return err
		}
		if action == "activate" && c.QueryParam("dry_run") == "true" {
			return s.dryRun(c, cur)
		}
		got, err := s.deps.Campaigns.SetStatus(ctx, cur.Name, action)
		if err != nil {
			return err
		}
		if action == "activate" {
			if _, err := s.deps.Enroller.EnrollExisting(ctx, got.Name); err != nil {
				return err
			}
		}
		auditTarget(c, "campaign %s", got.Name)
		return c.JSON(http.StatusOK, got)
	}
}

func (s *Server) campaignStats(c echo.Context) error {
	ctx := c.Request().Context()
	got, err := s.deps.Campaigns.Get(ctx, c.Param("name"))
	if err != nil {
		return err
	}
	steps, enrollments, err := s.deps.Outbox.Stats(ctx, got.ID)
	if err != nil {
		return err
	}
	totals := map[string]int{}
	for _, st := range steps {
		totals["scheduled"] += st.Scheduled
		totals["sent"] += st.Sent
		totals["failed"] += st.Failed
		totals["skipped"] += st.Skipped
		totals["uncertain"] += st.Uncertain
		totals["opened"] += st.Opened
		totals["clicked"] += st.Clicked
	}
	totals["converted"] = enrollments["converted"]
	return c.JSON(http.StatusOK, map[string]any{"campaign": got.Name, "totals": totals, "steps": steps, "enrollments": enrollments})
}

// templateName reads the template name from the wildcard route, which may
// contain slashes (at-risk/checkin).
func templateName(c echo.Context) string {
	return strings.Trim(c.Param("*"), "/")
}

func (s *Server) putTemplate(c echo.Context) error {
	var body struct {
		Kind   string `json:"kind"`
		Source string `json:"source"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	t, err := s.deps.Campaigns.PutTemplate(c.Request().Context(), campaign.TemplateInput{Name: templateName(c), Kind: body.Kind, Source: body.Source})
	if err != nil {
		return err
	}
	auditTarget(c, "template %s", t.Name)
	return c.JSON(http.StatusOK, t)
}

func (s *Server) getTemplate(c echo.Context) error {
	t, err := s.deps.Campaigns.GetTemplate(c.Request().Context(), templateName(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, t)
}

func (s *Server) listMessages(c echo.Context) error {
	status := c.QueryParam("status")
	switch status {
	case "scheduled", "claimed", "sending", "sent", "failed", "skipped", "uncertain":
	default:
		return errs.E(errs.Invalid, "invalid_parameter", "status is one of scheduled, claimed, sending, sent, failed, skipped, uncertain")
	}
	limit, err := queryInt(c, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	after, err := queryInt(c, "after", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	msgs, err := s.deps.Outbox.ByStatus(c.Request().Context(), status, int64(after), limit)
	if err != nil {
		return err
	}
	out := map[string]any{"messages": msgs}
	if len(msgs) == limit {
		out["next_after"] = msgs[len(msgs)-1].ID
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) resolveMessage(c echo.Context) error {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil {
		return errs.E(errs.NotFound, "message_not_found", "no message %q", c.Param("id"))
	}
	var body struct {
		Action string `json:"action"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	v, err := s.deps.Outbox.Resolve(c.Request().Context(), id, body.Action)
	if err != nil {
		return err
	}
	if body.Action == "resend" {
		s.sendNow(c, []int64{id})
	}
	auditTarget(c, "message %d (%s)", id, body.Action)
	return c.JSON(http.StatusOK, v)
}

func (s *Server) contactMessages(c echo.Context) error {
	ctx := c.Request().Context()
	if _, err := s.deps.Accounts.GetContact(ctx, c.Param("id")); err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	msgs, err := s.deps.Outbox.OfContact(ctx, c.Param("id"), limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"messages": msgs})
}

// sendNow signals the pool to send these messages at once (the sweep would
// find them within seconds anyway).
func (s *Server) sendNow(c echo.Context, ids []int64) {
	if s.deps.Signals != nil {
		if err := s.deps.Signals.SendMessages(c.Request().Context(), ids); err != nil {
			s.deps.Log.Warn("signal send failed; the sweep will catch up", "err", err)
		}
	}
}

type stepRequest struct {
	Step      string `json:"step"`
	ContactID string `json:"contact_id"`
	To        string `json:"to,omitempty"`
}

func (s *Server) previewCampaign(c echo.Context) error {
	var body stepRequest
	if err := bind(c, &body); err != nil {
		return err
	}
	out, err := s.deps.Sender.Preview(c.Request().Context(), c.Param("name"), body.Step, body.ContactID)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) testCampaign(c echo.Context) error {
	var body stepRequest
	if err := bind(c, &body); err != nil {
		return err
	}
	id, err := s.deps.Sender.CreateTest(c.Request().Context(), c.Param("name"), body.Step, body.ContactID, body.To)
	if err != nil {
		return err
	}
	s.sendNow(c, []int64{id})
	auditTarget(c, "test of %s/%s to %s", c.Param("name"), body.Step, body.To)
	return c.JSON(http.StatusAccepted, map[string]any{"message_id": id, "status": "scheduled"})
}

// dryRun answers who activating a campaign would reach now, per variant, and
// how many caps and suppressions would hold back, changing nothing.
func (s *Server) dryRun(c echo.Context, cur campaign.Campaign) error {
	ctx := c.Request().Context()
	def, reach, err := s.deps.Enroller.Reach(ctx, cur.Name)
	if err != nil {
		return err
	}
	var all []int64
	accounts, contacts := 0, 0
	for _, r := range reach {
		all = append(all, r.IDs...)
		accounts += r.Accounts
		contacts += r.Contacts
	}
	held, err := s.deps.Sender.HeldBack(ctx, def.Topic, all)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{
		"campaign": cur.Name, "kind": cur.Kind, "dry_run": true,
		"accounts": accounts, "contacts": contacts, "variants": reach, "held_back": held,
	})
}
