package delivery

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"strconv"
	"strings"
	"time"
)

// Tend writes a campaign email's header fields itself, as it writes the
// body (mime.go); go-mail is the SMTP transport. Building a go-mail Msg to
// write a dozen fields cost about 14 µs and most of the allocations a
// message, and stamped Date from the wall clock, not the injected one.

// header is a campaign email's header fields and envelope.
type header struct {
	date time.Time
	// from, to, replyTo ("" for none) and subject are the fields' values
	// as written, before folding: addresses formatted, the subject
	// Q-encoded as a whole when any of it is not printable ASCII.
	from, to, replyTo, subject string
	// messageID is the Message-ID without its angle brackets.
	messageID string
	// unsubscribe is the one-click unsubscribe URL (RFC 8058); "" for none.
	unsubscribe string
	id          int64
	test        bool
	contentType string
	// sender and recipient are the envelope's addresses.
	sender, recipient string
}

// newHeader addresses e, the rendered email of outbox message id (a test
// send when test), dated date, its body of type contentType. It refuses an
// address that does not parse, and a URL or Message-ID that cannot be
// written as it is.
func newHeader(e Composed, id int64, test bool, date time.Time, messageIDDomain, contentType string) (header, error) {
	h := header{date: date, messageID: "tend." + strconv.FormatInt(id, 10) + "@" + messageIDDomain,
		unsubscribe: e.UnsubscribeURL, id: id, test: test, contentType: contentType}
	from, err := parseHeaderAddress("from", e.From)
	if err != nil {
		return header{}, err
	}
	to, err := parseHeaderAddress("to", e.To)
	if err != nil {
		return header{}, err
	}
	h.from, h.to, h.sender, h.recipient = from.String(), to.String(), from.Address, to.Address
	if e.ReplyTo != "" {
		replyTo, err := parseHeaderAddress("reply-to", e.ReplyTo)
		if err != nil {
			return header{}, err
		}
		h.replyTo = replyTo.String()
	}
	// Q-encoding leaves printable ASCII as it is and splits what it
	// encodes into encoded-words of at most 75 bytes, between spaces.
	h.subject = mime.QEncoding.Encode("UTF-8", e.Subject)
	if messageIDDomain == "" {
		return header{}, errors.New("no Message-ID domain")
	}
	if err := checkToken("message-id", h.messageID); err != nil {
		return header{}, err
	}
	if e.UnsubscribeURL != "" {
		if err := checkToken("unsubscribe URL", e.UnsubscribeURL); err != nil {
			return header{}, err
		}
	}
	return h, nil
}

// parseHeaderAddress parses one address of a header field.
func parseHeaderAddress(field, s string) (*mail.Address, error) {
	a, err := mail.ParseAddress(s)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", field, s, err)
	}
	return a, nil
}

// checkToken refuses a value written between angle brackets as it is (a
// URL, a Message-ID), which must be printable ASCII without spaces, angle
// brackets or quotes.
func checkToken(field, s string) error {
	if s == "" {
		return errors.New(field + " is empty")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '<' || c == '>' || c == '"' {
			return fmt.Errorf("%s %q: byte %d may not be written in a header", field, s, i)
		}
	}
	return nil
}

// maxLine is the longest a line of a message may be, not counting its CRLF
// (RFC 5322 2.1.1).
const maxLine = 998

// longestLine is the length of b's longest line, not counting its CRLF.
func longestLine(b []byte) int {
	longest := 0
	for len(b) > 0 {
		n := bytes.Index(b, []byte("\r\n"))
		if n < 0 {
			n = len(b)
		}
		longest = max(longest, n)
		b = b[min(n+2, len(b)):]
	}
	return longest
}

// headerLine is how long a header line may be, not counting its CRLF, where
// the words of its value allow: RFC 2047 allows 76 on lines holding
// encoded-words, RFC 5322 2.1.1 78 on others.
const headerLine = 76

// appendTo appends the header fields to b, each ending in CRLF; the blank
// line that ends them is the body's (alternative.appendTo).
func (h header) appendTo(b []byte) []byte {
	b = append(b, "Date: "...)
	b = h.date.AppendFormat(b, time.RFC1123Z)
	b = append(b, "\r\n"...)
	b = appendField(b, "From", h.from)
	b = appendField(b, "To", h.to)
	if h.replyTo != "" {
		b = appendField(b, "Reply-To", h.replyTo)
	}
	b = appendField(b, "Subject", h.subject)
	b = append(b, "Message-ID: <"...)
	b = append(b, h.messageID...)
	b = append(b, ">\r\nMIME-Version: 1.0\r\nContent-Type: "...)
	b = append(b, h.contentType...)
	b = append(b, "\r\n"...)
	if h.unsubscribe != "" {
		b = append(b, "List-Unsubscribe: <"...)
		b = append(b, h.unsubscribe...)
		b = append(b, ">\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"...)
	}
	b = append(b, "X-Tend-Message: "...)
	b = strconv.AppendInt(b, h.id, 10)
	b = append(b, "\r\n"...)
	if h.test {
		b = append(b, "X-Tend-Test: true\r\n"...)
	}
	return b
}

// appendField appends the header field "name: value" and its CRLF, folded
// (RFC 5322 2.2.3) before a space, or before the value, wherever the line
// would grow past headerLine bytes. value holds no CR or LF (Address.String
// and Q-encoding encode them). A word longer than a line stays whole.
func appendField(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, ':')
	n := len(name) + 1 // bytes on the line
	for {
		word, rest, more := strings.Cut(value, " ")
		// A line must not hold only white space: an empty word (two
		// spaces in a row) is never folded onto a line of its own.
		if word != "" && n+1+len(word) > headerLine {
			b = append(b, "\r\n"...)
			n = 0
		}
		b = append(b, ' ')
		b = append(b, word...)
		n += 1 + len(word)
		if !more {
			break
		}
		value = rest
	}
	return append(b, "\r\n"...)
}
