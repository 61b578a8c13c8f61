package delivery

import (
	"time"

	gomail "github.com/wneessen/go-mail"
)

// SetIdleCheckAfter makes m check idle connections with NOOP once they have
// been idle d, rather than idleCheckAfter, so that tests need not wait.
func (m *Mailer) SetIdleCheckAfter(d time.Duration) { m.idleCheck = d }

// Seal writes msg, given the text and HTML parts of outbox message id, as the
// Sender writes a campaign email before signing it: msg's headers, then the
// body.
func Seal(msg *gomail.Msg, id int64, text, html string) ([]byte, error) {
	body := newAlternative(id, text, html)
	msg.SetGenHeader(gomail.HeaderContentType, body.contentType())
	out, err := (&Sender{}).seal(msg, body)
	return out.data, err
}
