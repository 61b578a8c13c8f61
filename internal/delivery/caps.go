package delivery

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/lib/pq"
)

// Caps limit how many messages, across every campaign and channel, reach one
// contact and one account in a rolling window. A capped message is not
// dropped: it moves to the first moment the cap allows (then into its
// campaign's send window), or is skipped once that is more than the maximum
// delay past its due time.
type Caps struct {
	PerContact int
	PerAccount int
	Window     time.Duration
	MaxDelay   time.Duration
}

// capLedger holds the send times counted against each contact and account of
// a batch, and counts the batch's own sends as they happen.
type capLedger struct {
	caps      Caps
	contacts  map[int64][]time.Time
	accounts  map[int64][]time.Time
	accountOf map[int64]int64
}

// loadCaps reads the recent sends of the batch's contacts and accounts in two
// queries.
func (s *Sender) loadCaps(ctx context.Context, msgs []claimed, now time.Time) (*capLedger, error) {
	l := &capLedger{caps: s.opts.Caps, contacts: map[int64][]time.Time{}, accounts: map[int64][]time.Time{}, accountOf: map[int64]int64{}}
	if l.caps.PerContact <= 0 && l.caps.PerAccount <= 0 {
		return l, nil
	}
	var contactIDs, accountIDs []int64
	for _, m := range msgs {
		if m.ContactID != nil && m.AccountID != nil && !m.Test {
			contactIDs = append(contactIDs, *m.ContactID)
			accountIDs = append(accountIDs, *m.AccountID)
			l.accountOf[*m.ContactID] = *m.AccountID
		}
	}
	if len(contactIDs) == 0 {
		return l, nil
	}
	var rows []struct {
		ContactID int64     `db:"contact_id"`
		AccountID int64     `db:"account_id"`
		At        time.Time `db:"sent_at"`
	}
	err := s.db.SelectContext(ctx, &rows, `
		SELECT m.contact_id, ct.account_id, m.sent_at
		FROM message m JOIN contact ct ON ct.id = m.contact_id
		WHERE ct.account_id = ANY($1) AND m.status IN ('sent', 'sending', 'uncertain') AND NOT m.test
		  AND m.sent_at > $2`, pq.Array(accountIDs), now.Add(-l.caps.Window))
	if err != nil {
		return nil, fmt.Errorf("delivery: caps: %w", err)
	}
	for _, r := range rows {
		l.contacts[r.ContactID] = append(l.contacts[r.ContactID], r.At)
		l.accounts[r.AccountID] = append(l.accounts[r.AccountID], r.At)
	}
	return l, nil
}

// next returns when a message to the contact is allowed (now when it is).
func (l *capLedger) next(contactID int64, now time.Time) (time.Time, string) {
	at, why := now, ""
	check := func(times []time.Time, limit int, what string) {
		if limit <= 0 || len(times) < limit {
			return
		}
		sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
		// The oldest sends that must age out before one more fits.
		free := times[len(times)-limit].Add(l.caps.Window)
		if free.After(at) {
			at, why = free, fmt.Sprintf("%s cap (%d per %s)", what, limit, l.caps.Window)
		}
	}
	check(l.contacts[contactID], l.caps.PerContact, "contact")
	check(l.accounts[l.accountOf[contactID]], l.caps.PerAccount, "account")
	return at, why
}

// count records a send made by this batch.
func (l *capLedger) count(contactID int64, at time.Time) {
	l.contacts[contactID] = append(l.contacts[contactID], at)
	if acc, ok := l.accountOf[contactID]; ok {
		l.accounts[acc] = append(l.accounts[acc], at)
	}
}

// HeldBack counts, among contacts a campaign of the topic would reach, those
// that would not get a message now: suppressed addresses, unsubscribes (the
// topic or everything), accounts on hold, and contacts already at a
// frequency cap.
type HeldBack struct {
	Suppressed   int `db:"suppressed" json:"suppressed"`
	Unsubscribed int `db:"unsubscribed" json:"unsubscribed"`
	OnHold       int `db:"on_hold" json:"on_hold"`
	Capped       int `db:"capped" json:"capped"`
}

// HeldBack answers, for a dry run, how many of the contacts would be held
// back and why (each contact counted under its first reason).
func (s *Sender) HeldBack(ctx context.Context, topic string, contactIDs []int64) (HeldBack, error) {
	var h HeldBack
	if len(contactIDs) == 0 {
		return h, nil
	}
	c := s.opts.Caps
	now := s.clock.Now()
	err := s.db.GetContext(ctx, &h, `
		WITH x AS (
			SELECT ct.id, ct.account_id,
				EXISTS (SELECT 1 FROM suppression sp WHERE sp.email = ct.email) AS suppressed,
				EXISTS (SELECT 1 FROM contact_unsubscribe u WHERE u.contact_id = ct.id AND u.topic IN ($2, '*')) AS unsubscribed,
				EXISTS (SELECT 1 FROM account_hold h WHERE h.account_id = ct.account_id AND h.released_at IS NULL
				        AND (h.until IS NULL OR h.until > $3)) AS on_hold,
				($5 > 0 AND (SELECT count(*) FROM message m WHERE m.contact_id = ct.id AND NOT m.test
				            AND m.status IN ('sent', 'sending', 'uncertain') AND m.sent_at > $4) >= $5)
				OR ($6 > 0 AND (SELECT count(*) FROM message m JOIN contact c2 ON c2.id = m.contact_id
				            WHERE c2.account_id = ct.account_id AND NOT m.test
				            AND m.status IN ('sent', 'sending', 'uncertain') AND m.sent_at > $4) >= $6) AS capped
			FROM contact ct WHERE ct.id = ANY($1)
		)
		SELECT count(*) FILTER (WHERE suppressed) AS suppressed,
		       count(*) FILTER (WHERE unsubscribed AND NOT suppressed) AS unsubscribed,
		       count(*) FILTER (WHERE on_hold AND NOT unsubscribed AND NOT suppressed) AS on_hold,
		       count(*) FILTER (WHERE capped AND NOT on_hold AND NOT unsubscribed AND NOT suppressed) AS capped
		FROM x`, pq.Array(contactIDs), topic, now, now.Add(-c.Window), c.PerContact, c.PerAccount)
	if err != nil {
		return h, fmt.Errorf("delivery: held back: %w", err)
	}
	return h, nil
}
