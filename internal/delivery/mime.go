package delivery

import (
	"strconv"
	"strings"
)

// Tend writes a campaign email's body, a multipart/alternative of the text
// and HTML parts, itself, as it writes the header fields (header.go); go-mail
// is the SMTP transport. go-mail quoted-printable-encodes every part through
// mime/quotedprintable, which goes a byte at a time through a buffered
// writer and then copies the result once more: about a tenth of the CPU a
// campaign email costs. appendQP does the same encoding in one pass over
// runs of bytes that need none.

// alternative is an email's body: its text and HTML parts, each
// quoted-printable, in a multipart/alternative (RFC 2046 5.1.4; the text
// first, so that a client showing the last part it can shows the HTML).
type alternative struct {
	text, html string
	// boundary separates the parts. It begins with "=_", which
	// quoted-printable never writes ("=" is always followed by two hex
	// digits or a line break), so no part can contain it.
	boundary string
}

// newAlternative is the body of outbox message id.
func newAlternative(id int64, text, html string) alternative {
	return alternative{text: text, html: html, boundary: "=_tend_" + strconv.FormatInt(id, 10)}
}

// contentType is the value of the message's Content-Type header.
func (a alternative) contentType() string {
	return `multipart/alternative; boundary="` + a.boundary + `"`
}

// size is a guess at how many bytes appendTo adds, to size a buffer:
// quoted-printable spends three bytes on each "=" (frequent in HTML) and
// on each byte beyond ASCII, and three on each 76-byte line. Text beyond
// ASCII takes up to three times its length; the buffer then grows.
func (a alternative) size() int {
	return len(a.text) + len(a.html)*5/4 + 4*len(a.boundary) + 256
}

// appendTo appends the body to b: the blank line that ends the headers,
// then the parts.
func (a alternative) appendTo(b []byte) []byte {
	b = append(b, "\r\n"...)
	for _, p := range [...]struct{ typ, body string }{{"text/plain", a.text}, {"text/html", a.html}} {
		b = append(b, "--"...)
		b = append(b, a.boundary...)
		b = append(b, "\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Type: "...)
		b = append(b, p.typ...)
		b = append(b, "; charset=UTF-8\r\n\r\n"...)
		b = appendQP(b, p.body)
		b = append(b, "\r\n"...)
	}
	b = append(b, "--"...)
	b = append(b, a.boundary...)
	return append(b, "--\r\n"...)
}

// qpMaxLine is the longest line quoted-printable may write, not counting
// its CRLF (RFC 2045 6.7 rule 5).
const qpMaxLine = 76

// qpPlain holds the bytes quoted-printable writes as themselves: printable
// ASCII but "=", and space and tab where they do not end a line.
var qpPlain = func() (t [256]bool) {
	for c := '!'; c <= '~'; c++ {
		t[c] = c != '='
	}
	t[' '], t['\t'] = true, true
	return t
}()

// appendQP appends s to b quoted-printable, for text: "\r\n", "\n" and a
// lone "\r" are each a line break, written CRLF; "=", every byte outside
// printable ASCII but space and tab, and a space or tab ending a line are
// written =XX; lines longer than 76 bytes are broken with soft line breaks,
// never inside an =XX.
func appendQP(b []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	breaks := "\n"
	if strings.IndexByte(s, '\r') >= 0 {
		breaks = "\r\n"
	}
	for len(s) > 0 {
		// The line runs to the next break.
		end := strings.IndexAny(s, breaks)
		if end < 0 {
			end = len(s)
		}
		line, broke := s[:end], end < len(s)
		switch {
		case !broke:
			s = ""
		case s[end] == '\r' && end+1 < len(s) && s[end+1] == '\n':
			s = s[end+2:]
		default:
			s = s[end+1:]
		}
		n := 0 // bytes on the output line
		for i := 0; i < len(line); {
			// A run of bytes written as themselves, up to the last: a
			// line's last byte may be a space or tab, written =XX.
			stop := min(len(line)-1, i+qpMaxLine-1-n)
			j := i
			for j < stop && qpPlain[line[j]] {
				j++
			}
			if j > i {
				b = append(b, line[i:j]...)
				n += j - i
				i = j
				if n == qpMaxLine-1 && i < len(line)-1 {
					b = append(b, "=\r\n"...)
					n = 0
				}
				continue
			}
			c := line[i]
			last := i == len(line)-1
			w := 3
			if qpPlain[c] && !(last && (c == ' ' || c == '\t')) {
				w = 1
			}
			// Room for a soft break must remain unless this is the line's
			// last byte.
			if n+w > qpMaxLine-1 && !(last && n+w <= qpMaxLine) {
				b = append(b, "=\r\n"...)
				n = 0
			}
			if w == 1 {
				b = append(b, c)
			} else {
				b = append(b, '=', hex[c>>4], hex[c&0x0f])
			}
			n += w
			i++
		}
		if broke {
			b = append(b, "\r\n"...)
		}
	}
	return b
}
