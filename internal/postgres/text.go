package postgres

import (
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lib/pq"
)

// What PostgreSQL stores. A value outside these rules fails the statement
// that carries it (and, in a batch, every other row with it), so input is
// checked against them before it reaches SQL: refused when a client sent it,
// cleaned when an outsider wrote it (a mail header, a bounce reason).

// TextProblem says why PostgreSQL would refuse s as text — it contains a NUL
// or is not valid UTF-8 — worded to follow a field name; "" when it would not.
func TextProblem(s string) string {
	switch {
	case strings.IndexByte(s, 0) >= 0:
		return "contains a NUL character (\\u0000), which text cannot hold"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	return ""
}

// BoundedTextProblem is TextProblem for text of at most max bytes.
func BoundedTextProblem(s string, max int) string {
	if len(s) > max {
		return "is longer than " + strconv.Itoa(max) + " characters"
	}
	return TextProblem(s)
}

// CleanText returns s as text PostgreSQL stores: invalid UTF-8 replaced by
// U+FFFD, NUL characters dropped.
func CleanText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
}

// TruncateText cuts s to at most n bytes, on a character boundary, and
// cleans it (see CleanText).
func TruncateText(s string, n int) string {
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	return CleanText(s)
}

// ValueRefused tells whether err is PostgreSQL refusing a value it was given:
// text that is not UTF-8 or holds a NUL (22021, 22P05), a time or number out
// of range (22008, 22003), input it cannot read as its type (22P02: jsonb
// with a lone surrogate escape, say). Checks before SQL are the defence;
// this tells their misses apart from the server's own failures.
func ValueRefused(err error) bool {
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) {
		return false
	}
	switch pqErr.Code {
	case "22021", "22P05", "22008", "22003", "22P02":
		return true
	}
	return false
}

// The years a time may fall in, in UTC and in its own offset: PostgreSQL's
// timestamptz has no year 0 (Go's year 0 is 1 BC, written "0000", which it
// refuses), and JSON times, how many statements pass rows, have four digits.
const (
	MinYear = 1
	MaxYear = 9999
)

// TimeProblem says why t cannot be stored (see MinYear), worded to follow a
// field name; "" when it can.
func TimeProblem(t time.Time) string {
	for _, y := range []int{t.Year(), t.UTC().Year()} {
		if y < MinYear || y > MaxYear {
			return "must be a time in the years 0001 to 9999"
		}
	}
	return ""
}

// Limits on JSON numbers (see JSONProblem).
const (
	maxJSONNumberLen = 1000
	maxJSONExponent  = 1000
)

// JSONProblem says why PostgreSQL would refuse raw, valid JSON, as jsonb, or
// the profile could not read it back, worded to follow a field name; "" when
// neither. jsonb refuses what encoding/json accepts: invalid UTF-8, the
// escape \u0000, a UTF-16 surrogate escape not in a pair, and numbers beyond
// numeric's range; and a number beyond float64's range does not decode.
// Check json.Valid first: JSONProblem reads escapes and numbers as valid JSON
// writes them.
func JSONProblem(raw []byte) string {
	if !utf8.Valid(raw) {
		return "is not valid UTF-8"
	}
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case inString && c == '"':
			inString = false
		case inString && c == '\\':
			if r := escaped(raw, i); r >= 0 {
				switch {
				case r == 0:
					return "contains \\u0000, which PostgreSQL's jsonb cannot hold"
				case r >= 0xD800 && r <= 0xDBFF:
					if low := escaped(raw, i+6); low < 0xDC00 || low > 0xDFFF {
						return "contains a UTF-16 surrogate escape without its pair"
					}
					i += 6
				case r >= 0xDC00 && r <= 0xDFFF:
					return "contains a UTF-16 surrogate escape without its pair"
				}
				i += 4
			}
			i++ // the escaped character
		case inString:
		case c == '"':
			inString = true
		case c == '-' || c >= '0' && c <= '9':
			j := i
			for j < len(raw) && strings.IndexByte("+-.0123456789eE", raw[j]) >= 0 {
				j++
			}
			if !numberFits(string(raw[i:j])) {
				return "holds a number out of range"
			}
			i = j - 1
		}
	}
	return ""
}

// escaped returns the character of the \uXXXX escape at raw[i:], or -1 when
// there is none.
func escaped(raw []byte, i int) rune {
	if i+6 > len(raw) || raw[i] != '\\' || raw[i+1] != 'u' {
		return -1
	}
	v, err := strconv.ParseUint(string(raw[i+2:i+6]), 16, 32)
	if err != nil {
		return -1
	}
	return rune(v)
}

// numberFits tells whether a JSON number is a finite float64 with an
// exponent and a length well within PostgreSQL numeric's range (at most
// 16383 digits after the point).
func numberFits(n string) bool {
	if len(n) > maxJSONNumberLen {
		return false
	}
	if _, err := strconv.ParseFloat(n, 64); err != nil {
		return false
	}
	if i := strings.IndexAny(n, "eE"); i >= 0 {
		e, err := strconv.Atoi(n[i+1:])
		return err == nil && e <= maxJSONExponent && e >= -maxJSONExponent
	}
	return true
}
