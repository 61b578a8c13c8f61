package httpapi

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Segment's HTTP tracking API (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/),
// so unmodified Segment and RudderStack SDKs can send to Tend with
// Endpoint: <tend>/segment and an ingest key as the write key.
//
//   group    → account upsert (groupId is the account id; traits name, plan,
//              mrr, seats, created_at, stage, tier, region, csm_email, timezone
//              fill account fields, the rest become traits), and links userId
//              to the account
//   identify → contact upsert (userId is the contact id; the account is
//              context.groupId, traits.groupId or the user's earlier group call)
//   track    → usage event (event name as sent; the account as for identify;
//              messageId deduplicates)
//
// As Segment does, the valid items of a batch are kept and the bad ones are
// reported (200 with "rejected").

type segmentMessage struct {
	Type              string          `json:"type"`
	UserID            json.RawMessage `json:"userId"`
	AnonymousID       json.RawMessage `json:"anonymousId"`
	GroupID           json.RawMessage `json:"groupId"`
	Event             string          `json:"event"`
	MessageID         string          `json:"messageId"`
	Timestamp         *time.Time      `json:"timestamp"`
	OriginalTimestamp *time.Time      `json:"originalTimestamp"`
	Traits            map[string]any  `json:"traits"`
	Properties        json.RawMessage `json:"properties"`
	Context           struct {
		GroupID  json.RawMessage `json:"groupId"`
		Locale   string          `json:"locale"`
		Timezone string          `json:"timezone"`
		Traits   map[string]any  `json:"traits"`
	} `json:"context"`
}

// idString reads a Segment id, which SDKs send as a string or a number.
func idString(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

func (m *segmentMessage) user() string {
	if u := idString(m.UserID); u != "" {
		return u
	}
	return idString(m.AnonymousID)
}

func (m *segmentMessage) when() *time.Time {
	if m.Timestamp != nil {
		return m.Timestamp
	}
	return m.OriginalTimestamp
}

type segmentReply struct {
	Success  bool       `json:"success"`
	Accepted int        `json:"accepted"`
	Rejected errs.Items `json:"rejected,omitempty"`
}

func (s *Server) segmentBatch(c echo.Context) error {
	var body struct {
		Batch []json.RawMessage `json:"batch"`
	}
	b, err := readBody(c)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return badRequest("invalid_json", "the body must be {\"batch\": [...]}: %s", describeJSONError(err))
	}
	if len(body.Batch) > account.MaxBatch {
		return errs.E(errs.TooLarge, "batch_too_large", "at most %d messages per batch", account.MaxBatch)
	}
	return s.segmentIngest(c, body.Batch, "")
}

func (s *Server) segmentOne(typ string) echo.HandlerFunc {
	return func(c echo.Context) error {
		b, err := readBody(c)
		if err != nil {
			return err
		}
		return s.segmentIngest(c, []json.RawMessage{b}, typ)
	}
}

// segmentIngest applies groups first, then identifies, then tracks, so a batch
// may create an account and send its events at once.
func (s *Server) segmentIngest(c echo.Context, raw []json.RawMessage, forceType string) error {
	ctx := c.Request().Context()
	var rejected errs.Items
	msgs := make([]*segmentMessage, len(raw))
	for i, r := range raw {
		var m segmentMessage
		if err := json.Unmarshal(r, &m); err != nil {
			rejected.Add(i, "", "not a Segment message: %s", describeJSONError(err))
			continue
		}
		if forceType != "" {
			m.Type = forceType
		}
		msgs[i] = &m
	}
	accepted := 0
	var changed []int64

	// group → accounts, one at a time so one bad item does not refuse others.
	links := map[string]string{}
	for i, m := range msgs {
		if m == nil || m.Type != "group" {
			continue
		}
		in, err := groupToAccount(m)
		if err == nil {
			var ids []int64
			ids, err = s.deps.Accounts.UpsertAccounts(ctx, []account.AccountInput{in})
			changed = append(changed, ids...)
		}
		if err != nil {
			if s.rejectItem(c, &rejected, i, err) {
				continue
			}
			return err
		}
		if u := idString(m.UserID); u != "" {
			links[u] = in.ID
		}
		accepted++
	}
	if err := s.deps.Accounts.LinkUsers(ctx, links); err != nil {
		return err
	}

	// Users whose account must come from an earlier group call.
	var users []string
	for _, m := range msgs {
		if m != nil && (m.Type == "identify" || m.Type == "track") && m.user() != "" {
			users = append(users, m.user())
		}
	}
	linked, err := s.deps.Accounts.UserAccounts(ctx, users)
	if err != nil {
		return err
	}
	accountOf := func(m *segmentMessage) string {
		if g := idString(m.Context.GroupID); g != "" {
			return g
		}
		if g, ok := m.Traits["groupId"].(string); ok && g != "" {
			return g
		}
		return linked[m.user()]
	}

	for i, m := range msgs {
		if m == nil || m.Type != "identify" {
			continue
		}
		in, err := identifyToContact(m, accountOf(m))
		if err == nil {
			err = s.deps.Accounts.UpsertContacts(ctx, []account.ContactInput{in})
		}
		if err != nil {
			if s.rejectItem(c, &rejected, i, err) {
				continue
			}
			return err
		}
		accepted++
	}

	var events []account.EventInput
	var eventIndex []int
	for i, m := range msgs {
		switch {
		case m == nil:
		case m.Type == "track":
			events = append(events, account.EventInput{
				AccountID: accountOf(m), ContactID: m.user(), Name: m.Event,
				Properties: m.Properties, Timestamp: m.when(), MessageID: m.MessageID,
			})
			eventIndex = append(eventIndex, i)
		case m.Type == "group" || m.Type == "identify":
		default:
			rejected.Add(i, "type", "type %q is not supported; Tend takes identify, group and track", m.Type)
		}
	}
	if len(events) > 0 {
		res, err := s.deps.Accounts.IngestEvents(ctx, events, true)
		if err != nil {
			return err
		}
		for _, it := range res.Rejected {
			if it.Field == "account_id" {
				it.Reason = "no account for this event: send a group call first, or context.groupId (" + it.Reason + ")"
			}
			it.Index = eventIndex[it.Index]
			rejected = append(rejected, it)
		}
		accepted += res.Accepted + res.Duplicates
		changed = append(changed, res.Changed...)
	}
	s.changed(ctx, changed)
	auditTarget(c, "%d segment messages", len(raw))
	return c.JSON(http.StatusOK, segmentReply{Success: true, Accepted: accepted, Rejected: rejected})
}

// rejectItem turns a domain validation error about one item, or a value of
// it PostgreSQL refused, into a rejected entry at index i. It reports false
// for errors that are not the item's fault.
func (s *Server) rejectItem(c echo.Context, rejected *errs.Items, i int, err error) bool {
	if s.valueRefused(err, c.Response().Header().Get(echo.HeaderXRequestID), c.Path()) {
		rejected.Add(i, "", "%s", errInvalidValue.Message)
		return true
	}
	var de *errs.Error
	if !errors.As(err, &de) || (de.Kind != errs.Invalid && de.Kind != errs.TooLarge) {
		return false
	}
	if items, ok := de.Details["items"].([]errs.ItemError); ok {
		for _, it := range items {
			it.Index = i
			*rejected = append(*rejected, it)
		}
		return true
	}
	rejected.Add(i, "", "%s", de.Message)
	return true
}

// Account fields that a group call's traits may set.
func groupToAccount(m *segmentMessage) (account.AccountInput, error) {
	in := account.AccountInput{ID: idString(m.GroupID)}
	if in.ID == "" {
		return in, errs.E(errs.Invalid, "missing_group_id", "a group call needs groupId")
	}
	// The user is linked to the account once it is stored: checked first,
	// so that a bad one refuses the item whole.
	if p := postgres.TextProblem(idString(m.UserID)); p != "" {
		return in, errs.Items{{Field: "userId", Reason: p}}.Err("messages")
	}
	rest := map[string]any{}
	for k, v := range m.Traits {
		str, isStr := v.(string)
		num, isNum := v.(float64)
		switch {
		case k == "name" && isStr:
			in.Name = &str
		case k == "plan" && isStr:
			in.Plan = &str
		case (k == "mrr" || k == "monthly_spend") && isNum:
			in.MRR = &num
		case k == "seats" && isNum:
			// Beyond int, the conversion is undefined: kept beyond the
			// range the account check allows.
			n := int(max(-1, min(num, math.MaxInt32+1)))
			in.Seats = &n
		case (k == "created_at" || k == "createdAt" || k == "signup_at") && isStr:
			t, err := time.Parse(time.RFC3339, str)
			if err != nil {
				return in, errs.E(errs.Invalid, "invalid_trait", "traits.%s must be an RFC 3339 time", k)
			}
			in.SignupAt = &t
		case k == "stage" && isStr:
			in.Stage = &str
		case k == "tier" && isStr:
			in.Tier = &str
		case k == "region" && isStr:
			in.Region = &str
		case k == "csm_email" && isStr:
			in.CSMEmail = &str
		case k == "timezone" && isStr:
			in.Timezone = &str
		default:
			rest[k] = v
		}
	}
	if len(rest) > 0 {
		b, _ := json.Marshal(rest)
		in.Traits = b
	}
	return in, nil
}

func identifyToContact(m *segmentMessage, accountID string) (account.ContactInput, error) {
	in := account.ContactInput{ID: idString(m.UserID), AccountID: accountID}
	if in.ID == "" {
		return in, errs.E(errs.Invalid, "missing_user_id", "an identify call needs userId")
	}
	if accountID == "" {
		return in, errs.E(errs.Invalid, "unknown_account", "no account for user %q: send a group call first, or context.groupId", in.ID)
	}
	traits := m.Traits
	if traits == nil {
		traits = m.Context.Traits
	}
	rest := map[string]any{}
	var first, last string
	for k, v := range traits {
		str, isStr := v.(string)
		switch {
		case k == "email" && isStr:
			in.Email = &str
		case k == "name" && isStr:
			in.Name = &str
		case (k == "firstName" || k == "first_name") && isStr:
			first = str
		case (k == "lastName" || k == "last_name") && isStr:
			last = str
		case (k == "role" || k == "title") && isStr:
			in.Role = &str
		case k == "timezone" && isStr:
			in.Timezone = &str
		case k == "groupId":
		default:
			rest[k] = v
		}
	}
	if in.Name == nil && (first != "" || last != "") {
		n := strings.TrimSpace(first + " " + last)
		in.Name = &n
	}
	if in.Timezone == nil && m.Context.Timezone != "" {
		in.Timezone = &m.Context.Timezone
	}
	if m.Context.Locale != "" {
		in.Locale = &m.Context.Locale
	}
	if len(rest) > 0 {
		b, _ := json.Marshal(rest)
		in.Traits = b
	}
	return in, nil
}
