package delivery

import (
	"time"
)

// SetIdleCheckAfter makes m check idle connections with NOOP once they have
// been idle d, rather than idleCheckAfter, so that tests need not wait.
func (m *Mailer) SetIdleCheckAfter(d time.Duration) { m.idleCheck = d }

// Seal writes e, the rendered email of outbox message id, dated date, as
// the Sender writes a campaign email before signing it, with Message-IDs in
// tend.example.
func Seal(e Composed, id int64, date time.Time) ([]byte, error) {
	out, err := sealer(date, "tend.example").seal(e, id, false)
	return out.data, err
}
