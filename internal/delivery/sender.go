package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/mail"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/expr-lang/expr/vm"
	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	gomail "github.com/wneessen/go-mail"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/render"
)

// Transport hands messages to SMTP (the Mailer, in production): campaign
// emails, sealed by the Sender, a round at once over connections reserved
// for it (Reservation.SendRaw); forwarded replies one at a time, as go-mail
// Msgs.
type Transport interface {
	Send(ctx context.Context, msg *gomail.Msg) error
	Reserve(ctx context.Context, n int) (*Reservation, error)
}

// SenderOptions configure how mail is addressed.
type SenderOptions struct {
	// TeamSender is the From of campaigns not signed by a CSM, and of CSM
	// mail whose address is outside SendingDomain.
	TeamSender string
	// SendingDomain, when set, is the verified domain mail may come From.
	SendingDomain string
	// InboundDomain, when set, gives CSM-signed mail a Reply-To of
	// reply+TOKEN@InboundDomain so replies come back through the webhook.
	InboundDomain string
	// MessageIDDomain is the right-hand side of Message-IDs: a host name
	// or an IP address.
	MessageIDDomain string
	// MaxAttempts bounds retries of temporary (4xx) failures.
	MaxAttempts int
	// Backoff is the delay before retry n (1-based); nil uses a default.
	Backoff func(n int) time.Duration
	// Caps limit messages per contact and per account; zero values turn
	// them off.
	Caps Caps
	// DKIM, when set, signs every campaign email.
	DKIM *DKIM
}

// Sender runs batches of due messages: claim, decide (goal, unless,
// suppression, unsubscribes), render, hand to SMTP, record.
type Sender struct {
	db        *sqlx.DB
	clock     clock.Clock
	log       *slog.Logger
	outbox    *Outbox
	enroller  *campaign.Enroller
	renderer  *render.Renderer
	transport Transport
	opts      SenderOptions

	progs     sync.Map                                 // expression source → *vm.Program
	templates sync.Map                                 // version key + name → *render.Template
	versions  sync.Map                                 // versionKey → *version
	layouts   atomic.Pointer[map[string]*storedLayout] // by name; replaced whole, never changed
}

// NewSender wires a sender.
func NewSender(db *sqlx.DB, clk clock.Clock, log *slog.Logger, outbox *Outbox, enroller *campaign.Enroller,
	renderer *render.Renderer, transport Transport, opts SenderOptions) *Sender {
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 5
	}
	if strings.Contains(opts.MessageIDDomain, ":") && !strings.HasPrefix(opts.MessageIDDomain, "[") {
		// An IPv6 address: a literal in a Message-ID (RFC 5322 3.6.4).
		opts.MessageIDDomain = "[" + opts.MessageIDDomain + "]"
	}
	if opts.Backoff == nil {
		opts.Backoff = func(n int) time.Duration { return time.Duration(1<<min(n, 10)) * 30 * time.Second }
	}
	return &Sender{db: db, clock: clk, log: log, outbox: outbox, enroller: enroller, renderer: renderer, transport: transport, opts: opts}
}

// claimed is everything needed to decide about and render one message.
type claimed struct {
	ID           int64           `db:"id"`
	EnrollmentID *int64          `db:"enrollment_id"`
	EnrollStatus *string         `db:"enrollment_status"`
	CampaignID   int64           `db:"campaign_id"`
	Campaign     string          `db:"campaign"`
	Topic        string          `db:"topic"`
	Version      int             `db:"version"`
	StepID       string          `db:"step_id"`
	Channel      string          `db:"channel"`
	Test         bool            `db:"test"`
	ToAddress    string          `db:"to_address"`
	Attempts     int             `db:"attempts"`
	DueAt        time.Time       `db:"due_at"`
	RawDef       []byte          `db:"definition"` // previews only; batches use the version cache
	RawTemplates []byte          `db:"templates"`
	ContactID    *int64          `db:"contact_id"`
	ContactExt   *string         `db:"contact_external_id"`
	ContactEmail *string         `db:"contact_email"`
	ContactName  *string         `db:"contact_name"`
	ContactRole  *string         `db:"contact_role"`
	ContactTZ    *string         `db:"contact_timezone"`
	ContactLoc   *string         `db:"contact_locale"`
	ContactTr    json.RawMessage `db:"contact_traits"`
	Suppressed   *string         `db:"suppressed"`
	Unsubscribed *string         `db:"unsubscribed"`
	accountRow
}

// accountColumns selects, for rendering, an account (a) and its CSM (csm),
// either of which may be missing (LEFT JOINs), into an accountRow.
const accountColumns = `a.id AS account_id, a.external_id AS account_external_id, a.name AS account_name,
	a.plan AS account_plan, a.mrr AS account_mrr, a.seats AS account_seats, a.signup_at AS account_signup_at,
	a.stage AS account_stage, a.tier AS account_tier, a.region AS account_region, a.timezone AS account_timezone,
	a.traits AS account_traits, a.created_at AS account_created_at, a.updated_at AS account_updated_at,
	csm.id AS csm_id, csm.email AS csm_email, csm.name AS csm_name, csm.title AS csm_title,
	csm.signature_html AS csm_signature, csm.reply_to AS csm_reply_to, csm.phone AS csm_phone,
	csm.calendar_url AS csm_calendar`

// accountRow is what accountColumns selects.
type accountRow struct {
	AccountID *int64          `db:"account_id"`
	AccExt    *string         `db:"account_external_id"`
	AccName   *string         `db:"account_name"`
	AccPlan   *string         `db:"account_plan"`
	AccMRR    *float64        `db:"account_mrr"`
	AccSeats  *int            `db:"account_seats"`
	AccSignup *time.Time      `db:"account_signup_at"`
	AccStage  *string         `db:"account_stage"`
	AccTier   *string         `db:"account_tier"`
	AccRegion *string         `db:"account_region"`
	AccTZ     *string         `db:"account_timezone"`
	AccTraits json.RawMessage `db:"account_traits"`
	AccCreate *time.Time      `db:"account_created_at"`
	AccUpdate *time.Time      `db:"account_updated_at"`
	CSMID     *int64          `db:"csm_id"`
	CSMEmail  *string         `db:"csm_email"`
	CSMName   *string         `db:"csm_name"`
	CSMTitle  *string         `db:"csm_title"`
	CSMSig    *string         `db:"csm_signature"`
	CSMReply  *string         `db:"csm_reply_to"`
	CSMPhone  *string         `db:"csm_phone"`
	CSMCal    *string         `db:"csm_calendar"`
}

// info returns the row's account and CSM, without a profile; nil when there
// is no account.
func (r *accountRow) info() *accountInfo {
	if r.AccountID == nil || r.AccExt == nil {
		return nil
	}
	info := &accountInfo{account: account.Account{ID: *r.AccountID, ExternalID: *r.AccExt, Name: deref(r.AccName),
		Plan: deref(r.AccPlan), Stage: deref(r.AccStage), Tier: deref(r.AccTier), Region: deref(r.AccRegion),
		CSMEmail: deref(r.CSMEmail), Timezone: deref(r.AccTZ), Traits: r.AccTraits}}
	if r.AccMRR != nil {
		info.account.MRR = *r.AccMRR
	}
	if r.AccSeats != nil {
		info.account.Seats = *r.AccSeats
	}
	if r.AccSignup != nil {
		info.account.SignupAt = *r.AccSignup
	}
	if r.AccCreate != nil && r.AccUpdate != nil {
		info.account.CreatedAt, info.account.UpdatedAt = *r.AccCreate, *r.AccUpdate
	}
	if r.CSMID != nil {
		info.csm = &account.CSM{ID: *r.CSMID, Email: deref(r.CSMEmail), Name: deref(r.CSMName), Title: deref(r.CSMTitle),
			SignatureHTML: deref(r.CSMSig), ReplyTo: deref(r.CSMReply), Phone: deref(r.CSMPhone), CalendarURL: deref(r.CSMCal)}
	}
	return info
}

// Sent is what SendBatch did.
type Sent struct {
	// Delivered counts the emails handed to SMTP and the nudges delivered.
	Delivered int
	// Changed lists the accounts sent an email, whose profiles (emails_30d)
	// and health changed: recorded (see account.MarkChanged), to be signalled
	// to the segment engine.
	Changed []int64
	// Outcomes counts the batch's messages by what became of them: a final
	// status (sent, failed, skipped, uncertain; delivered for a nudge), or
	// retry (a temporary SMTP failure) and deferred (capped) for those
	// scheduled again.
	Outcomes map[string]int
}

// SendBatch sends the given messages (those still scheduled and due; others
// are left alone).
//
// It claims and loads the batch in one statement, decides about and renders
// every message, then hands the emails to SMTP in rounds (see handOver).
// Finally it advances the batch's enrollments and marks the accounts it
// emailed changed.
func (s *Sender) SendBatch(ctx context.Context, ids []int64) (Sent, error) {
	token := NewToken()
	msgs, err := s.outbox.claim(ctx, ids, token)
	if err != nil || len(msgs) == 0 {
		return Sent{}, err
	}
	accounts, err := s.prepareBatch(ctx, msgs)
	if err != nil {
		s.release(ctx, token, msgs)
		return Sent{}, err
	}
	ledger, err := s.loadCaps(ctx, msgs, s.clock.Now())
	if err != nil {
		s.release(ctx, token, msgs)
		return Sent{}, err
	}
	engagement, err := s.loadEngagement(ctx, msgs)
	if err != nil {
		s.release(ctx, token, msgs)
		return Sent{}, err
	}
	touched := map[int64]bool{}
	sent := 0
	b := &batch{token: token, caps: ledger, engagement: engagement}
	var ready []*email
	for i := range msgs {
		m := &msgs[i]
		if ctx.Err() != nil {
			// Shutting down: what was not handed over goes back, untouched.
			s.release(ctx, token, msgs[i:])
			break
		}
		if m.EnrollmentID != nil {
			touched[*m.EnrollmentID] = true
		}
		e, delivered, err := s.prepare(ctx, m, accounts, b)
		if err != nil {
			s.log.Error("delivery: message failed to process", "message", m.ID, "err", err)
		}
		if delivered {
			sent++
		}
		if e != nil {
			ready = append(ready, e)
		}
	}
	// What the loop decided is recorded even when shutting down, like the
	// outcomes (Settle below): short statements about messages prepared.
	fin := context.WithoutCancel(ctx)
	if err := s.enroller.Convert(fin, s.db, b.converted); err != nil {
		s.log.Error("delivery: converted enrollments failed to end; their next messages will convert them", "err", err)
	}
	if err := s.outbox.Defer(fin, token, b.deferred); err != nil {
		// Still claimed: the reaper gives them back when the lease ends.
		s.log.Error("delivery: capped messages failed to go back to scheduled", "messages", len(b.deferred), "err", err)
	}
	nudged, err := s.outbox.deliverNudges(fin, token, b.nudges)
	if err != nil {
		// Still claimed: the reaper gives them back when the lease ends.
		s.log.Error("delivery: nudges failed to deliver", "nudges", len(b.nudges), "err", err)
	}
	sent += nudged
	handed, handErr := s.handOver(ctx, b, ready)
	sent += handed
	if handErr != nil {
		s.log.Error("delivery: hand-over failed; the emails not handed over yet were not sent", "err", handErr)
	}
	if nudged > 0 {
		b.tally("delivered", nudged)
	}
	b.tally("deferred", len(b.deferred))
	res := Sent{Delivered: sent, Outcomes: b.outcomes}
	if err := s.settle(fin, b); err != nil {
		return res, err
	}
	// After Settle committed, both: the accounts emailed are marked changed
	// (an evaluation starting now counts the emails; should this fail,
	// emails_30d catches up at the account's next change, or when its
	// cached profile's validity runs out: at most account.MaxValidity), and
	// the enrollments move on.
	var failed []error
	if len(b.mailed) > 0 {
		changed := slices.Collect(maps.Keys(b.mailed))
		slices.Sort(changed)
		if err := account.MarkChanged(fin, s.db, changed); err != nil {
			failed = append(failed, fmt.Errorf("delivery: %w", err))
		} else {
			res.Changed = changed
		}
	}
	if len(touched) > 0 {
		ids := make([]int64, 0, len(touched))
		for id := range touched {
			ids = append(ids, id)
		}
		if err := postgres.InTx(fin, s.db, func(tx *sqlx.Tx) error {
			return s.enroller.Advance(fin, tx, ids)
		}); err != nil {
			failed = append(failed, err)
		}
	}
	return res, errors.Join(append(failed, handErr)...)
}

// release puts claimed messages that were not handed over back to scheduled.
func (s *Sender) release(ctx context.Context, token string, msgs []claimed) {
	ids := make([]int64, len(msgs))
	for i := range msgs {
		ids[i] = msgs[i].ID
	}
	if err := s.outbox.Release(context.WithoutCancel(ctx), ids, token); err != nil {
		s.log.Error("delivery: release failed; the reaper will release the messages", "err", err)
	}
}

// prepareBatch makes sure the batch's campaign versions and the stored
// layouts are known, and returns its accounts with their CSMs and profiles.
func (s *Sender) prepareBatch(ctx context.Context, msgs []claimed) (map[int64]*accountInfo, error) {
	if err := s.loadVersions(ctx, msgs); err != nil {
		return nil, err
	}
	if err := s.refreshLayouts(ctx); err != nil {
		return nil, err
	}
	out := map[int64]*accountInfo{}
	for i := range msgs {
		if info := msgs[i].info(); info != nil && out[info.account.ID] == nil {
			out[info.account.ID] = info
		}
	}
	return out, s.withProfiles(ctx, out)
}

// accountInfo is an account with its CSM and profile, for rendering.
type accountInfo struct {
	account account.Account
	csm     *account.CSM
	profile *account.Profile
}

// loadAccounts returns the given accounts with their CSMs and profiles.
func (s *Sender) loadAccounts(ctx context.Context, ids []int64) (map[int64]*accountInfo, error) {
	var rows []accountRow
	err := s.db.SelectContext(ctx, &rows, `
		SELECT `+accountColumns+`
		FROM account a LEFT JOIN csm ON csm.id = a.csm_id WHERE a.id = ANY($1)`, pq.Array(ids))
	if err != nil {
		return nil, fmt.Errorf("delivery: load accounts: %w", err)
	}
	out := map[int64]*accountInfo{}
	for i := range rows {
		if info := rows[i].info(); info != nil {
			out[info.account.ID] = info
		}
	}
	return out, s.withProfiles(ctx, out)
}

// withProfiles adds their profiles to accounts.
func (s *Sender) withProfiles(ctx context.Context, accounts map[int64]*accountInfo) error {
	if len(accounts) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(accounts))
	for id := range accounts {
		ids = append(ids, id)
	}
	profiles, err := account.CachedProfiles(ctx, s.db, ids, s.clock.Now(), account.AllMaps)
	if err != nil {
		return err
	}
	for id, info := range accounts {
		info.profile = profiles[id].Profile
	}
	return nil
}

// versionKey names a campaign version.
type versionKey struct {
	campaign int64
	version  int
}

// version is a campaign version as the sender uses it. Versions are never
// changed once written, so the sender keeps those it has read.
type version struct {
	def       campaign.Definition
	err       error  // the definition cannot be read
	templates []byte // the copies of its templates, parsed when first used (see template)
}

// loadVersions reads the campaign versions of msgs the sender does not know
// yet (none, once warm).
func (s *Sender) loadVersions(ctx context.Context, msgs []claimed) error {
	var camps pq.Int64Array
	var vers pq.Int64Array
	seen := map[versionKey]bool{}
	for i := range msgs {
		k := versionKey{msgs[i].CampaignID, msgs[i].Version}
		if _, ok := s.versions.Load(k); !ok && !seen[k] {
			seen[k] = true
			camps, vers = append(camps, k.campaign), append(vers, int64(k.version))
		}
	}
	if len(camps) == 0 {
		return nil
	}
	var rows []struct {
		CampaignID int64  `db:"campaign_id"`
		Version    int    `db:"version"`
		Definition []byte `db:"definition"`
		Templates  []byte `db:"templates"`
	}
	err := s.db.SelectContext(ctx, &rows, `
		SELECT v.campaign_id, v.version, v.definition, v.templates
		FROM campaign_version v JOIN unnest($1::bigint[], $2::int[]) AS k(campaign_id, version)
		  ON v.campaign_id = k.campaign_id AND v.version = k.version`, camps, vers)
	if err != nil {
		return fmt.Errorf("delivery: load campaign versions: %w", err)
	}
	for _, r := range rows {
		def, err := campaign.Decode(r.Definition)
		s.versions.Store(versionKey{r.CampaignID, r.Version}, &version{def: def, err: err, templates: r.Templates})
	}
	return nil
}

// version returns m's campaign version, if loadVersions found it.
func (s *Sender) version(m *claimed) *version {
	v, _ := s.versions.Load(versionKey{m.CampaignID, m.Version})
	ver, _ := v.(*version)
	return ver
}

// engagementKey is an enrollment and one of its contacts.
type engagementKey struct{ enrollment, contact int64 }

// loadEngagement reads, for the messages of a batch whose step has an
// unless, their contact's human opens and clicks of earlier messages of the
// same enrollment: one query a batch.
func (s *Sender) loadEngagement(ctx context.Context, msgs []claimed) (map[engagementKey]*campaign.StepState, error) {
	out := map[engagementKey]*campaign.StepState{}
	var enrollments, contacts pq.Int64Array
	for i := range msgs {
		m := &msgs[i]
		if m.Test || m.EnrollmentID == nil || m.ContactID == nil {
			continue
		}
		ver := s.version(m)
		if ver == nil || ver.err != nil {
			continue
		}
		if step := stepOf(ver.def, m.StepID); step == nil || step.Unless == "" {
			continue
		}
		k := engagementKey{*m.EnrollmentID, *m.ContactID}
		if out[k] == nil {
			out[k] = &campaign.StepState{Opened: map[string]bool{}, Clicked: map[string]bool{}}
			enrollments, contacts = append(enrollments, k.enrollment), append(contacts, k.contact)
		}
	}
	if len(enrollments) == 0 {
		return out, nil
	}
	var rows []struct {
		Enrollment int64  `db:"enrollment_id"`
		Contact    int64  `db:"contact_id"`
		Step       string `db:"step_id"`
		Kind       string `db:"kind"`
	}
	if err := s.db.SelectContext(ctx, &rows, `
		SELECT DISTINCT m.enrollment_id, m.contact_id, m.step_id, e.kind
		FROM unnest($1::bigint[], $2::bigint[]) AS k(enrollment_id, contact_id)
		JOIN message m ON m.enrollment_id = k.enrollment_id AND m.contact_id = k.contact_id
		JOIN engagement_event e ON e.message_id = m.id
		WHERE e.human AND e.kind IN ('open', 'click')`, enrollments, contacts); err != nil {
		return nil, fmt.Errorf("delivery: engagement: %w", err)
	}
	for _, r := range rows {
		st := out[engagementKey{r.Enrollment, r.Contact}]
		if r.Kind == "open" {
			st.Opened[r.Step] = true
		} else {
			st.Clicked[r.Step] = true
			st.Opened[r.Step] = true // a click implies the message was opened
		}
	}
	return out, nil
}

// batch carries a batch's claim token and the outcomes not yet written:
// they go out with the next hand-over, or with Settle at the end; a round's
// retries and bounces are written by refused as the round ends.
type batch struct {
	token      string
	done       []Outcome
	nudges     []pendingNudge // rendered in-app steps, delivered together
	deferred   []Deferral     // capped messages, put back together
	retries    []Deferral     // a round's messages refused for now (see refused)
	bounced    []bounce       // a round's hard bounces (see refused)
	converted  []int64        // enrollments whose goal holds
	mailed     map[int64]bool // accounts sent an email
	outcomes   map[string]int // see Sent.Outcomes
	caps       *capLedger
	engagement map[engagementKey]*campaign.StepState // see loadEngagement
}

func (b *batch) record(id int64, status, reason string) {
	b.done = append(b.done, Outcome{ID: id, Status: status, Reason: reason})
	b.tally(status, 1)
}

// tally counts n messages under outcome.
func (b *batch) tally(outcome string, n int) {
	if n == 0 {
		return
	}
	if b.outcomes == nil {
		b.outcomes = map[string]int{}
	}
	b.outcomes[outcome] += n
}

// email is a rendered message waiting for its hand-over to SMTP.
type email struct {
	m   *claimed
	to  string
	out outgoing
}

// prepare decides about and renders one claimed message. It returns the
// email to hand over, or nil when the message was settled otherwise
// (skipped, failed, deferred, or an in-app nudge, then reported delivered).
func (s *Sender) prepare(ctx context.Context, m *claimed, accounts map[int64]*accountInfo, b *batch) (*email, bool, error) {
	skip := func(reason string) (*email, bool, error) {
		b.record(m.ID, StatusSkipped, reason)
		return nil, false, nil
	}
	ver := s.version(m)
	if ver == nil || ver.err != nil {
		b.record(m.ID, StatusFailed, "the campaign version cannot be read")
		return nil, false, nil
	}
	def := ver.def
	m.RawTemplates = ver.templates
	var info *accountInfo
	if m.AccountID != nil {
		info = accounts[*m.AccountID]
	}
	contact := account.Contact{}
	if m.ContactID != nil {
		contact = account.Contact{ID: *m.ContactID, ExternalID: deref(m.ContactExt), Email: deref(m.ContactEmail),
			Name: deref(m.ContactName), Role: deref(m.ContactRole), Timezone: deref(m.ContactTZ), Locale: deref(m.ContactLoc), Traits: m.ContactTr}
	}
	to := contact.Email
	if m.Test {
		to = m.ToAddress
	}

	if !m.Test {
		switch {
		case def.Kind == campaign.KindDrip && m.EnrollStatus != nil && *m.EnrollStatus != campaign.EnrollmentActive:
			return skip("the enrollment is " + *m.EnrollStatus)
		case info == nil:
			return skip("the account no longer exists")
		}
		if def.Goal != "" {
			ok, err := s.eval(def.Goal, campaign.CompileGoal, info.profile)
			switch {
			case err != nil:
				// Like unless below, and a segment predicate that fails for
				// an account: what cannot be evaluated sends nothing. The
				// account may have converted; the step is skipped with the
				// error, the enrollment goes on.
				return skip("goal could not be evaluated: " + err.Error())
			case ok:
				// Converted with the batch's others, after the loop.
				if m.EnrollmentID != nil {
					b.converted = append(b.converted, *m.EnrollmentID)
				}
				return skip("converted: the goal holds")
			}
		}
		if step := stepOf(def, m.StepID); step != nil && step.Unless != "" {
			held, err := s.unless(m, def, step, info.profile, contact, b.engagement[engagementKey{deref64(m.EnrollmentID), deref64(m.ContactID)}])
			if err != nil {
				return skip("unless could not be evaluated: " + err.Error())
			}
			if held {
				return skip("unless held: " + step.Unless)
			}
		}
		switch {
		case m.Unsubscribed != nil && *m.Unsubscribed == "*":
			return skip("the contact unsubscribed from everything")
		case m.Unsubscribed != nil:
			return skip("the contact unsubscribed from topic " + *m.Unsubscribed)
		case m.Channel == campaign.ChannelInApp:
			// In-app needs no address; suppressions are about mail.
		case to == "":
			return skip("the contact has no email address")
		case m.Suppressed != nil:
			return skip("the address is suppressed: " + *m.Suppressed)
		}
		now := s.clock.Now()
		if at, why := b.caps.next(*m.ContactID, now); at.After(now) {
			loc := s.enroller.Location(contact.Timezone, info.account.Timezone)
			at = def.Window.Next(at, loc)
			if at.After(m.DueAt.Add(s.opts.Caps.MaxDelay)) {
				return skip("capped: the " + why + " allows no slot within the maximum delay")
			}
			// Put back with the batch's others, after the loop (SendBatch).
			b.deferred = append(b.deferred, Deferral{ID: m.ID, At: at, Reason: "capped: " + why + "; moved to the next allowed slot"})
			return nil, false, nil
		}
	}

	if m.Channel == campaign.ChannelInApp {
		ok, err := s.nudge(ctx, m, def, info, contact, b)
		return nil, ok, err
	}
	e, err := s.render(m, def, info, contact, to)
	if err != nil {
		b.record(m.ID, StatusFailed, "render: "+err.Error())
		return nil, false, nil
	}
	out, err := s.seal(e, m.ID, m.Test)
	if err != nil {
		b.record(m.ID, StatusFailed, err.Error())
		return nil, false, nil
	}
	if !m.Test && m.ContactID != nil {
		// Counted now, so that the batch's later messages to the contact
		// and the account see it: it is going out.
		b.caps.count(*m.ContactID, s.clock.Now())
	}
	return &email{m: m, to: to, out: out}, false, nil
}

// handOver hands a batch's rendered emails to SMTP in rounds. It reserves
// SMTP connections (waiting for one, taking more that are free), and in each
// round records, in one commit, the outcomes of the round before and which
// messages it is about to hand over, one per connection it holds; then it
// sends those at once, each on its own connection, and notes their
// outcomes. It gives connections back only once the outcomes of the
// messages they carried are recorded: a batch's messages marked sending are
// never more than the connections it holds, and only they can be left
// uncertain by a crash. It returns how many emails it handed over.
//
// Should a hand-over fail to be recorded, the emails not sent go back to
// scheduled and the error is returned.
func (s *Sender) handOver(ctx context.Context, b *batch, queue []*email) (int, error) {
	if len(queue) == 0 {
		return 0, nil
	}
	rctx := context.WithoutCancel(ctx)
	conns, err := s.transport.Reserve(ctx, len(queue))
	if err != nil {
		// Shutting down (nothing else makes a reservation fail): the
		// emails go back, untouched.
		s.releaseEmails(ctx, b.token, queue, false)
		return 0, nil
	}
	defer conns.Release()
	handed := 0
	for len(queue) > 0 {
		if ctx.Err() != nil {
			s.releaseEmails(ctx, b.token, queue, false)
			break
		}
		conns.Grow(len(queue))
		round := queue[:min(len(queue), conns.Len())]
		next := make([]int64, len(round))
		for i, e := range round {
			next[i] = e.m.ID
		}
		marked, lost, err := s.outbox.HandOver(ctx, b.token, b.done, next)
		if err != nil {
			// None of these reached SMTP, whether or not the commit
			// happened.
			s.releaseEmails(ctx, b.token, queue, true)
			_ = s.settle(rctx, b) // else SendBatch's Settle tries again
			return handed, err
		}
		s.unrecorded(lost)
		b.done = nil
		// The previous round's outcomes are recorded: connections beyond
		// this round's can go.
		conns.Shrink(len(round))
		queue = queue[len(round):]
		errs := make([]error, len(round))
		var wg sync.WaitGroup
		for i, e := range round {
			if marked[e.m.ID] {
				wg.Go(func() { errs[i] = e.out.send(ctx, conns) })
			}
		}
		wg.Wait()
		for i, e := range round {
			if !marked[e.m.ID] {
				continue // its claim was lost: another worker has it
			}
			handed++
			s.outcome(e, errs[i], b)
		}
		// The writes the refusals call for are bounded, as the commits
		// are, so that the outcomes are recorded within the lease (see
		// MinSendLease).
		octx, cancel := context.WithTimeout(rctx, handOverTimeout)
		s.refused(octx, b)
		cancel()
	}
	// Recorded before the connections go back; see above.
	return handed, s.settle(rctx, b)
}

// settle records the batch's outcomes not recorded yet.
func (s *Sender) settle(ctx context.Context, b *batch) error {
	lost, err := s.outbox.Settle(ctx, b.token, b.done)
	if err != nil {
		return err
	}
	s.unrecorded(lost)
	b.done = nil
	return nil
}

// unrecorded logs the outcomes that found their messages taken by the
// reaper: the lease had ended (a lease shorter than MinSendLease, or a
// database slower than handOverTimeout). A message that was being handed
// over is uncertain now, and this is what became of it.
func (s *Sender) unrecorded(lost []Outcome) {
	for _, o := range lost {
		s.log.Warn("delivery: an outcome could not be recorded: the lease on its message had ended and the reaper had taken it "+
			"(released it, or made it uncertain if it was being handed to SMTP)",
			"message", o.ID, "outcome", o.Status, "reason", o.Reason)
	}
}

// releaseEmails puts emails never handed to SMTP back to scheduled; marked
// says some may have been marked sending by a hand-over whose outcome is
// unknown.
func (s *Sender) releaseEmails(ctx context.Context, token string, queue []*email, marked bool) {
	ids := make([]int64, len(queue))
	for i, e := range queue {
		ids[i] = e.m.ID
	}
	if !marked {
		if err := s.outbox.Release(context.WithoutCancel(ctx), ids, token); err != nil {
			s.log.Error("delivery: release failed; the reaper releases the messages when their lease ends", "messages", ids, "err", err)
		}
		return
	}
	if err := s.outbox.withdraw(context.WithoutCancel(ctx), ids, token); err != nil {
		// Whatever the reaper then says of them, none was sent.
		s.log.Error("delivery: messages of a failed hand-over could not be put back; none was handed to SMTP: "+
			"when their lease ends the reaper releases those still claimed, and makes uncertain any the hand-over did mark sending, "+
			"which are safe to resend (POST /v1/messages/{id}/resolve {\"action\": \"resend\"})", "messages", ids, "err", err)
	}
}

// outcome notes what became of an email handed to SMTP, to be recorded
// with the batch's next hand-over or its Settle; a refusal's side effects
// (suppressing a hard-bounced address, scheduling a retry) are noted for
// refused, which writes the round's together.
func (s *Sender) outcome(e *email, sendErr error, b *batch) {
	m := e.m
	if sendErr == nil {
		b.record(m.ID, StatusSent, "")
		if !m.Test && m.AccountID != nil {
			if b.mailed == nil {
				b.mailed = map[int64]bool{}
			}
			b.mailed[*m.AccountID] = true
		}
		return
	}
	var se *SendError
	if !errors.As(sendErr, &se) {
		se = &SendError{Stage: StageAfterData, Err: sendErr}
	}
	switch {
	case se.Uncertain():
		b.record(m.ID, StatusUncertain, "the SMTP server did not confirm the message: "+se.Error())
	case IsHardBounce(se):
		reason := "hard bounce: " + se.Error()
		b.record(m.ID, StatusFailed, reason)
		b.bounced = append(b.bounced, bounce{id: m.ID, email: e.to, reason: reason})
	case se.Temporary && m.Attempts+1 < s.opts.MaxAttempts:
		b.retries = append(b.retries, Deferral{ID: m.ID, At: s.clock.Now().Add(s.opts.Backoff(m.Attempts + 1)), Reason: se.Error()})
	default:
		b.record(m.ID, StatusFailed, se.Error())
	}
}

// bounce is a hard-bounced address to suppress, and the message it bounced.
type bounce struct {
	id            int64
	email, reason string
}

// refused writes the side effects of a round's refusals, one statement
// for each kind: the hard-bounced addresses are suppressed, and the
// messages refused for now are scheduled again. The refusals' outcomes are
// recorded whatever happens here: a message left sending would be made
// uncertain by the reaper, said to be perhaps delivered when the server
// refused it. A retry that cannot be written makes its message failed, with
// the server's answer (should the retry have been written all the same, it
// holds, and that outcome finds the message no longer claimed). Each write
// is all or nothing for the round: one that fails leaves none of the
// round's addresses suppressed, or fails every message of it refused for
// now.
func (s *Sender) refused(ctx context.Context, b *batch) {
	if len(b.bounced) > 0 {
		emails, reasons, ids := make([]string, len(b.bounced)), make([]string, len(b.bounced)), make([]int64, len(b.bounced))
		for i, x := range b.bounced {
			emails[i], reasons[i], ids[i] = x.email, x.reason, x.id
		}
		if err := account.Suppress(ctx, s.db, emails, reasons, s.clock.Now()); err != nil {
			s.log.Error("delivery: messages failed (hard bounce), but their addresses were not suppressed", "messages", ids, "err", err)
		}
		b.bounced = b.bounced[:0]
	}
	if len(b.retries) > 0 {
		if err := s.outbox.Retry(ctx, b.token, b.retries); err != nil {
			ids := make([]int64, len(b.retries))
			for i, r := range b.retries {
				ids[i] = r.ID
				b.record(r.ID, StatusFailed, "temporary failure, not retried (the retry could not be scheduled): "+r.Reason)
			}
			s.log.Error("delivery: messages were refused for now, and their retries could not be scheduled", "messages", ids, "err", err)
		} else {
			b.tally("retry", len(b.retries))
		}
		b.retries = b.retries[:0]
	}
}

// nudge renders an in-app step for the contact's inbox.
func (s *Sender) nudge(ctx context.Context, m *claimed, def campaign.Definition, info *accountInfo, c account.Contact, b *batch) (bool, error) {
	if m.ContactID == nil {
		b.record(m.ID, StatusFailed, "the contact is gone")
		return false, nil
	}
	n, expiry, err := s.renderNudge(m, def, info, c)
	if err != nil {
		b.record(m.ID, StatusFailed, "render: "+err.Error())
		return false, nil
	}
	if !m.Test {
		b.caps.count(*m.ContactID, s.clock.Now())
	}
	// Delivered with the batch's other nudges, after the loop (SendBatch).
	b.nudges = append(b.nudges, pendingNudge{MessageID: m.ID, ContactID: *m.ContactID, Title: n.Title, Body: n.Body,
		CTALabel: n.CTALabel, CTAURL: n.CTAURL, ExpiresAt: s.clock.Now().Add(expiry)})
	return false, nil
}

// renderNudge renders an in-app step, and says how long it stays.
func (s *Sender) renderNudge(m *claimed, def campaign.Definition, info *accountInfo, c account.Contact) (render.Nudge, time.Duration, error) {
	step, t, err := s.stepTemplate(m, def)
	if err != nil {
		return render.Nudge{}, 0, err
	}
	d, _ := s.data(m, def, info, c)
	n, err := s.renderer.Nudge(t, d)
	expiry := DefaultNudgeExpiry
	if step.Expires != "" {
		if w, err := campaign.ParseWait(step.Expires); err == nil {
			expiry = time.Duration(w.Days)*24*time.Hour + w.D
		}
	}
	return n, expiry, err
}

// stepTemplate returns a message's step and the parsed template it uses.
func (s *Sender) stepTemplate(m *claimed, def campaign.Definition) (*campaign.Step, *render.Template, error) {
	step := stepOf(def, m.StepID)
	if step == nil || step.Template == "" {
		return nil, nil, fmt.Errorf("step %q has no template", m.StepID)
	}
	t, err := s.template(m, step.Template)
	return step, t, err
}

// data is what a message's template sees, and whether the CSM signs it.
func (s *Sender) data(m *claimed, def campaign.Definition, info *accountInfo, c account.Contact) (render.Data, *account.CSM) {
	d := render.Data{Contact: render.ContactFrom(c), Campaign: render.CampaignData{Name: m.Campaign, Step: m.StepID}, Profile: &account.Profile{}}
	if info == nil {
		return d, nil
	}
	d.Account, d.Profile = render.AccountFrom(info.account), info.profile
	if info.csm == nil || def.Sender != campaign.SenderCSM {
		return d, nil // .CSM stays empty: the team sends
	}
	d.CSM = render.CSMFrom(*info.csm)
	return d, info.csm
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func deref64(n *int64) int64 {
	if n == nil {
		return 0
	}
	return *n
}

func stepOf(def campaign.Definition, id string) *campaign.Step {
	for i := range def.Steps {
		if def.Steps[i].ID == id {
			return &def.Steps[i]
		}
	}
	return nil
}

func (s *Sender) program(src string, compile func() (*vm.Program, error)) (*vm.Program, error) {
	if p, ok := s.progs.Load(src); ok {
		return p.(*vm.Program), nil
	}
	p, err := compile()
	if err != nil {
		return nil, err
	}
	s.progs.Store(src, p)
	return p, nil
}

func (s *Sender) eval(src string, compile func(string, clock.Clock) (*vm.Program, error), env any) (bool, error) {
	p, err := s.program("goal:"+src, func() (*vm.Program, error) { return compile(src, s.clock) })
	if err != nil {
		return false, err
	}
	out, err := vm.Run(p, env)
	if err != nil {
		return false, err
	}
	b, _ := out.(bool)
	return b, nil
}

// unless evaluates a step's unless with the contact's human opens and
// clicks of this enrollment's earlier steps (st; nil for none).
func (s *Sender) unless(m *claimed, def campaign.Definition, step *campaign.Step, prof *account.Profile, c account.Contact, st *campaign.StepState) (bool, error) {
	earlier := map[string]bool{}
	for _, st := range def.Steps {
		if st.ID == step.ID {
			break
		}
		earlier[st.ID] = true
	}
	p, err := s.program(fmt.Sprintf("unless:%d:%d:%s", m.CampaignID, m.Version, step.ID), func() (*vm.Program, error) {
		return campaign.CompileUnless(step.Unless, earlier, s.clock)
	})
	if err != nil {
		return false, err
	}
	if st == nil {
		st = &campaign.StepState{Opened: map[string]bool{}, Clicked: map[string]bool{}}
	}
	env := campaign.UnlessEnv{Profile: prof, Contact: campaign.ContactEnv{ID: c.ExternalID, Email: c.Email, Name: c.Name, Role: c.Role, Timezone: c.Timezone, Locale: c.Locale}, State: st}
	out, err := vm.Run(p, env)
	if err != nil {
		return false, err
	}
	b, _ := out.(bool)
	return b, nil
}

// template returns the parsed copy of a template a campaign version carries.
func (s *Sender) template(m *claimed, name string) (*render.Template, error) {
	key := fmt.Sprintf("%d:%d:%s", m.CampaignID, m.Version, name)
	if t, ok := s.templates.Load(key); ok {
		return t.(*render.Template), nil
	}
	var copies map[string]campaign.TemplateInput
	if err := json.Unmarshal(m.RawTemplates, &copies); err != nil {
		return nil, err
	}
	src, ok := copies[name]
	if !ok {
		return nil, fmt.Errorf("version %d of %s has no template %q", m.Version, m.Campaign, name)
	}
	t, err := render.Parse(name, render.Kind(src.Kind), src.Source)
	if err != nil {
		return nil, err
	}
	s.templates.Store(key, t)
	return t, nil
}

// Composed is a rendered, addressed email.
type Composed struct {
	From           string `json:"from"`
	ReplyTo        string `json:"reply_to,omitempty"`
	To             string `json:"to"`
	Subject        string `json:"subject"`
	HTML           string `json:"html"`
	Text           string `json:"text"`
	UnsubscribeURL string `json:"unsubscribe_url,omitempty"`
	// Nudge is set instead of the email fields for an in-app step.
	Nudge *render.Nudge `json:"nudge,omitempty"`
}

// render renders a message and addresses it: From the CSM (or the team),
// Reply-To per DESIGN.md "Replies".
func (s *Sender) render(m *claimed, def campaign.Definition, info *accountInfo, c account.Contact, to string) (Composed, error) {
	_, t, err := s.stepTemplate(m, def)
	if err != nil {
		return Composed{}, err
	}
	d, csm := s.data(m, def, info, c)
	signAsCSM := csm != nil
	e, err := s.renderer.Email(t, d, m.ID, render.EmailOptions{SignAsCSM: signAsCSM, Test: m.Test, Layout: s.layoutFor(t.Layout)})
	if err != nil {
		return Composed{}, err
	}
	out := Composed{From: s.opts.TeamSender, To: to, Subject: e.Subject, HTML: e.HTML, Text: e.Text, UnsubscribeURL: e.UnsubscribeURL}
	if def.Sender != campaign.SenderCSM {
		out.From = def.Sender
	}
	if signAsCSM {
		csmAddr := (&mail.Address{Name: csm.Name, Address: csm.Email}).String()
		if s.opts.SendingDomain == "" || strings.HasSuffix(strings.ToLower(csm.Email), "@"+strings.ToLower(s.opts.SendingDomain)) {
			out.From = csmAddr
		} else {
			// The CSM's own domain is not ours to send from: a team From
			// carrying the CSM's name, replies to the CSM.
			team, err := mail.ParseAddress(s.opts.TeamSender)
			if err != nil {
				return Composed{}, fmt.Errorf("team sender: %w", err)
			}
			out.From = (&mail.Address{Name: csm.Name, Address: team.Address}).String()
		}
		out.ReplyTo = csmAddr
		if csm.ReplyTo != "" {
			out.ReplyTo = (&mail.Address{Name: csm.Name, Address: csm.ReplyTo}).String()
		}
		if s.opts.InboundDomain != "" && s.renderer.Signer != nil {
			out.ReplyTo = (&mail.Address{Name: csm.Name, Address: "reply+" + s.renderer.Signer.Reply(m.ID) + "@" + s.opts.InboundDomain}).String()
		}
	}
	return out, nil
}

// outgoing is a composed message ready for the transport: its bytes and
// envelope.
type outgoing struct {
	from string
	to   []string
	data []byte
}

// seal writes e, the rendered email of outbox message id (a test send when
// test), for the transport: header fields with List-Unsubscribe one-click
// (RFC 8058) and a Message-ID derived from the outbox row (header.go), then
// the body (mime.go), DKIM-signed when a key is configured. It runs before
// the handover, so that a message that cannot be written or signed fails
// without being handed over, and so that the connection it goes out on is
// not held while it is written.
func (s *Sender) seal(e Composed, id int64, test bool) (outgoing, error) {
	body := newAlternative(id, e.Text, e.HTML)
	h, err := newHeader(e, id, test, s.clock.Now(), s.opts.MessageIDDomain, body.contentType())
	if err != nil {
		return outgoing{}, err
	}
	// 1 KB is room for the header fields.
	data := h.appendTo(make([]byte, 0, body.size()+1024))
	if n := longestLine(data); n > maxLine {
		return outgoing{}, fmt.Errorf("a header line of %d bytes, longer than %d: a word of the subject or a name too long, or an unsubscribe URL", n, maxLine)
	}
	data = body.appendTo(data)
	if s.opts.DKIM != nil {
		if data, err = s.opts.DKIM.Sign(data); err != nil {
			return outgoing{}, err
		}
	}
	return outgoing{from: h.sender, to: []string{h.recipient}, data: data}, nil
}

func (o outgoing) send(ctx context.Context, conns *Reservation) error {
	return conns.SendRaw(ctx, o.from, o.to, o.data)
}

// Preview renders the step of a campaign's current version for a contact,
// sending nothing.
func (s *Sender) Preview(ctx context.Context, campaignName, stepID, contactID string) (Composed, error) {
	m, def, info, c, err := s.synthetic(ctx, campaignName, stepID, contactID)
	if err != nil {
		return Composed{}, err
	}
	m.Test = true
	if step := stepOf(def, stepID); step.Channel == campaign.ChannelInApp {
		n, _, err := s.renderNudge(m, def, info, c)
		if err != nil {
			return Composed{}, err
		}
		return Composed{To: c.ExternalID, Nudge: &n}, nil
	}
	if err := s.refreshLayouts(ctx); err != nil {
		return Composed{}, err
	}
	return s.render(m, def, info, c, c.Email)
}

// synthetic builds the claimed view of a message that does not exist yet,
// for previews.
func (s *Sender) synthetic(ctx context.Context, campaignName, stepID, contactID string) (*claimed, campaign.Definition, *accountInfo, account.Contact, error) {
	var m claimed
	err := s.db.GetContext(ctx, &m, `
		SELECT 0 AS id, c.id AS campaign_id, c.name AS campaign, c.topic, c.current_version AS version,
		       '' AS step_id, 'email' AS channel, true AS test, '' AS to_address, 0 AS attempts,
		       v.definition, v.templates
		FROM campaign c JOIN campaign_version v ON v.campaign_id = c.id AND v.version = c.current_version
		WHERE c.name = $1`, campaignName)
	if err != nil {
		return nil, campaign.Definition{}, nil, account.Contact{}, postgres.NotFound(err, "delivery: preview",
			errs.E(errs.NotFound, "campaign_not_found", "no campaign named %q", campaignName))
	}
	m.StepID = stepID // checked against the definition below, never sent to SQL
	def, err := campaign.Decode(m.RawDef)
	if err != nil {
		return nil, def, nil, account.Contact{}, err
	}
	if stepOf(def, stepID) == nil {
		return nil, def, nil, account.Contact{}, errs.E(errs.Invalid, "unknown_step", "campaign %q has no step %q", campaignName, stepID).With("field", "step")
	}
	var c account.Contact
	var accountID int64
	noContact := errs.E(errs.NotFound, "contact_not_found", "no contact with id %q", contactID).With("field", "contact_id")
	if postgres.TextProblem(contactID) != "" {
		return nil, def, nil, c, noContact // no contact has such an id, and PostgreSQL would refuse it
	}
	row := s.db.QueryRowxContext(ctx, `
		SELECT id, external_id, email, name, role, timezone, locale, traits, account_id FROM contact WHERE external_id = $1`, contactID)
	if err := row.Scan(&c.ID, &c.ExternalID, &c.Email, &c.Name, &c.Role, &c.Timezone, &c.Locale, &c.Traits, &accountID); err != nil {
		return nil, def, nil, c, postgres.NotFound(err, "delivery: preview", noContact)
	}
	m.ContactID, m.AccountID = &c.ID, &accountID
	accounts, err := s.loadAccounts(ctx, []int64{accountID})
	if err != nil {
		return nil, def, nil, c, err
	}
	return &m, def, accounts[accountID], c, nil
}

// CreateTest writes a test send of a campaign step to an address,
// personalised for a contact: marked test, not counted in stats, not
// subject to the drip's conditions. It returns the message id.
func (s *Sender) CreateTest(ctx context.Context, campaignName, stepID, contactID, to string) (int64, error) {
	if a, err := mail.ParseAddress(to); err != nil || a.Address != to {
		return 0, errs.E(errs.Invalid, "invalid_address", "%q is not an email address", to).With("field", "to")
	}
	m, def, _, _, err := s.synthetic(ctx, campaignName, stepID, contactID)
	if err != nil {
		return 0, err
	}
	if stepOf(def, stepID).Channel != campaign.ChannelEmail {
		return 0, errs.E(errs.Invalid, "not_an_email_step", "test sends are for email steps; preview an in-app step instead").With("field", "step")
	}
	var id int64
	now := s.clock.Now()
	err = s.db.GetContext(ctx, &id, `
		INSERT INTO message (campaign_id, version, step_id, contact_id, channel, to_address, test, status, due_at, created_at, updated_at)
		VALUES ($1, $2, $3, $4, 'email', $5, true, 'scheduled', $6, $6, $6) RETURNING id`,
		m.CampaignID, m.Version, stepID, *m.ContactID, to, now)
	if err != nil {
		return 0, fmt.Errorf("delivery: create test: %w", err)
	}
	return id, nil
}

// ForwardReply sends a contact's reply on to the CSM's own mailbox, from the
// team address with Reply-To the contact, so answering it reaches them.
func (s *Sender) ForwardReply(ctx context.Context, to, replyTo, subject, text string) error {
	msg := gomail.NewMsg()
	if err := msg.From(s.opts.TeamSender); err != nil {
		return err
	}
	if err := msg.To(to); err != nil {
		return err
	}
	if err := msg.ReplyTo(replyTo); err != nil {
		return err
	}
	msg.Subject(subject)
	msg.SetGenHeader("X-Tend-Forwarded-Reply", "true")
	msg.SetBodyString(gomail.TypeTextPlain, text)
	return s.transport.Send(ctx, msg)
}
