package delivery

import "time"

// SetIdleCheckAfter makes m check idle connections with NOOP once they have
// been idle d, rather than idleCheckAfter, so that tests need not wait.
func (m *Mailer) SetIdleCheckAfter(d time.Duration) { m.idleCheck = d }
