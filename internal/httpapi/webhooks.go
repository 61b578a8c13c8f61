package httpapi

import (
	"encoding/json"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/engagement"
)

// signedBody reads the body and checks its X-Tend-Signature.
func (s *Server) signedBody(c echo.Context) ([]byte, error) {
	b, err := readBody(c)
	if err != nil {
		return nil, err
	}
	if err := engagement.VerifySignature(s.deps.WebhookSecret, b, c.Request().Header.Get("X-Tend-Signature")); err != nil {
		return nil, err
	}
	return b, nil
}

// bounceWebhook takes one bounce or {"bounces": [...]}.
func (s *Server) bounceWebhook(c echo.Context) error {
	b, err := s.signedBody(c)
	if err != nil {
		return err
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(b, &probe); err != nil {
		return badRequest("invalid_json", "the body must be a JSON object: %s", describeJSONError(err))
	}
	var in []engagement.Bounce
	if list, ok := probe["bounces"]; ok {
		err = strictJSON(list, &in)
	} else {
		var one engagement.Bounce
		err = strictJSON(b, &one)
		in = []engagement.Bounce{one}
	}
	if err != nil {
		return err
	}
	if err := s.deps.Tracker.Bounces(c.Request().Context(), in); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"accepted": len(in)})
}

// replyWebhook takes an inbound reply, records it and forwards it to the CSM.
func (s *Server) replyWebhook(c echo.Context) error {
	b, err := s.signedBody(c)
	if err != nil {
		return err
	}
	var r engagement.Reply
	if err := strictJSON(b, &r); err != nil {
		return err
	}
	res, err := s.deps.Tracker.RecordReply(c.Request().Context(), r, s.deps.Sender)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}
