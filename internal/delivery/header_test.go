package delivery

import (
	"bytes"
	"mime"
	"net/mail"
	"strings"
	"testing"
	"time"
)

// TestAppendField holds folding to its rules: within headerLine bytes where
// the words allow, only before a space, never a line of white space alone,
// and unfolding gives the value back.
func TestAppendField(t *testing.T) {
	word := func(n int) string { return strings.Repeat("w", n) }
	for _, tc := range []struct {
		name, value string
		want        string
	}{
		{"empty", "", "X: \r\n"},
		{"one line", "a b c", "X: a b c\r\n"},
		// "X: " is 3 bytes: 73 more fill the line exactly.
		{"exactly a line", word(36) + " " + word(36), "X: " + word(36) + " " + word(36) + "\r\n"},
		{"a byte over", word(36) + " " + word(37), "X: " + word(36) + "\r\n " + word(37) + "\r\n"},
		{"a long word stays whole", "a " + word(100) + " a", "X: a\r\n " + word(100) + "\r\n a\r\n"},
		{"a long first word goes to the next line", word(74), "X:\r\n " + word(74) + "\r\n"},
		{"double spaces are kept", "a  b", "X: a  b\r\n"},
		{"no line of spaces alone", word(70) + "   " + word(10), "X: " + word(70) + "  \r\n " + word(10) + "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := string(appendField(nil, "X", tc.value))
			if got != tc.want {
				t.Fatalf("appendField(%q) =\n%q, want\n%q", tc.value, got, tc.want)
			}
			unfolded := strings.ReplaceAll(strings.TrimSuffix(got, "\r\n"), "\r\n", "")
			if unfolded != "X: "+tc.value {
				t.Fatalf("unfolded %q, want %q", unfolded, "X: "+tc.value)
			}
		})
	}
	// Random words: every line but one holding a single long word fits.
	for n := 1; n < 300; n += 7 {
		var value []string
		for i := 0; len(strings.Join(value, " ")) < 4*n; i++ {
			value = append(value, word(1+(i*n)%23))
		}
		got := appendField(nil, "Subject", strings.Join(value, " "))
		for _, line := range bytes.Split(bytes.TrimSuffix(got, []byte("\r\n")), []byte("\r\n")) {
			if len(line) > headerLine || len(bytes.TrimSpace(line)) == 0 {
				t.Fatalf("line %q of\n%s", line, got)
			}
		}
	}
}

// TestHeader reads a sealed campaign email's header back as a mail client
// would: names and subjects beyond ASCII, long ones folded, and line breaks
// in them encoded rather than injected as fields of their own.
func TestHeader(t *testing.T) {
	date := time.Date(2026, 11, 25, 9, 30, 0, 0, time.FixedZone("", -5*3600))
	e := Composed{
		From:           (&mail.Address{Name: "Dana Reyes-Ørsted, CSM", Address: "dana@acme.example"}).String(),
		To:             "ada@globex.example",
		ReplyTo:        (&mail.Address{Name: "Dana\r\nBcc: eve@evil.example", Address: "reply+tok@in.acme.example"}).String(),
		Subject:        "Globex: ton équipe a exporté 1 204 rapports cette semaine, et voici la suite " + strings.Repeat("é", 40),
		UnsubscribeURL: "https://tend.acme.example/u/" + strings.Repeat("t", 120),
		HTML:           "<p>Hi</p>", Text: "Hi",
	}
	body := newAlternative(7, e.Text, e.HTML)
	h, err := newHeader(e, 7, true, date, "tend.acme.example", body)
	if err != nil {
		t.Fatal(err)
	}
	data := body.appendTo(h.appendTo(nil))
	head := data[:bytes.Index(data, []byte("\r\n\r\n"))]
	for _, line := range bytes.Split(head, []byte("\r\n")) {
		// The unsubscribe URL is one word longer than a line.
		if len(line) > headerLine && !bytes.HasPrefix(line, []byte("List-Unsubscribe: ")) {
			t.Errorf("line of %d bytes: %q", len(line), line)
		}
		if bytes.ContainsAny(line, "\r\n") {
			t.Errorf("bare CR or LF in %q", line)
		}
	}
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	got := msg.Header
	if len(got["Bcc"]) > 0 {
		t.Fatalf("a line break in a name made a field: %q", got["Bcc"])
	}
	if d, err := got.Date(); err != nil || !d.Equal(date) {
		t.Errorf("Date %v (%v), want %v", d, err, date)
	}
	for field, want := range map[string]string{"From": e.From, "To": "<" + e.To + ">", "Reply-To": e.ReplyTo} {
		a, err := mail.ParseAddress(got.Get(field))
		if err != nil {
			t.Fatalf("%s %q: %v", field, got.Get(field), err)
		}
		if a.String() != want {
			t.Errorf("%s = %q, want %q", field, a.String(), want)
		}
	}
	subject, err := new(mime.WordDecoder).DecodeHeader(got.Get("Subject"))
	if err != nil || subject != e.Subject {
		t.Errorf("Subject decodes to %q (%v), want %q", subject, err, e.Subject)
	}
	for field, want := range map[string]string{
		"Message-Id":            "<tend.7@tend.acme.example>",
		"Mime-Version":          "1.0",
		"Content-Type":          body.contentType(),
		"List-Unsubscribe":      "<" + e.UnsubscribeURL + ">",
		"List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
		"X-Tend-Message":        "7",
		"X-Tend-Test":           "true",
	} {
		if v := got.Get(field); v != want {
			t.Errorf("%s = %q, want %q", field, v, want)
		}
	}
	if len(got) != 12 {
		t.Errorf("%d fields, want 12: %v", len(got), got)
	}
}

// TestHeaderRefuses holds newHeader to refusing what it cannot write safely.
func TestHeaderRefuses(t *testing.T) {
	ok := Composed{From: "dana@acme.example", To: "ada@globex.example", Subject: "Hi"}
	for name, tc := range map[string]struct {
		e      func(Composed) Composed
		domain string
	}{
		"bad from":                          {func(e Composed) Composed { e.From = "dana"; return e }, "x.example"},
		"bad to":                            {func(e Composed) Composed { e.To = "ada@"; return e }, "x.example"},
		"bad reply-to":                      {func(e Composed) Composed { e.ReplyTo = "a, b"; return e }, "x.example"},
		"line break in URL":                 {func(e Composed) Composed { e.UnsubscribeURL = "https://x.example/u/t\r\nBcc: e@x"; return e }, "x.example"},
		"space in URL":                      {func(e Composed) Composed { e.UnsubscribeURL = "https://x.example/u/a b"; return e }, "x.example"},
		"line break in domain":              {func(e Composed) Composed { return e }, "x.example\r\nBcc: e@x"},
		"a subject word longer than a line": {func(e Composed) Composed { e.Subject = "Hi " + strings.Repeat("x", maxLine); return e }, "x.example"},
		"a name word longer than a line": {func(e Composed) Composed {
			e.From = (&mail.Address{Name: strings.Repeat("x", maxLine), Address: "dana@acme.example"}).String()
			return e
		}, "x.example"},
		"a URL longer than a line": {func(e Composed) Composed {
			e.UnsubscribeURL = "https://x.example/u/" + strings.Repeat("t", maxLine)
			return e
		}, "x.example"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := newHeader(tc.e(ok), 1, false, time.Now(), tc.domain, newAlternative(1, "", "")); err == nil {
				t.Fatal("newHeader accepted it")
			}
		})
	}
	if _, err := newHeader(ok, 1, false, time.Now(), "x.example", newAlternative(1, "", "")); err != nil {
		t.Fatalf("newHeader refused a good email: %v", err)
	}
	// The longest word that folds onto a line of its own is written.
	long := ok
	long.Subject = "Hi " + strings.Repeat("x", maxLine-1)
	h, err := newHeader(long, 1, false, time.Now(), "x.example", newAlternative(1, "", ""))
	if err != nil {
		t.Fatalf("newHeader refused a subject whose word fits a line: %v", err)
	}
	for _, line := range strings.Split(string(h.appendTo(nil)), "\r\n") {
		if len(line) > maxLine {
			t.Fatalf("a line of %d bytes", len(line))
		}
	}
}

// BenchmarkSeal addresses and writes a CSM-signed campaign email of about
// 4 KB of HTML, as the Sender does after rendering it.
//
//	go test -run '^$' -bench BenchmarkSeal ./internal/delivery/
func BenchmarkSeal(b *testing.B) {
	html := strings.Repeat(`<p style="margin:0 0 12px">Tip: schedule a weekly <a href="https://t.example/c/abcdefghijklmnop">export</a> so the whole team sees the numbers.</p>`+"\n", 30)
	e := Composed{
		From: `"Dana Reyes" <dana@acme.example>`, To: "ada@globex.example", ReplyTo: `"Dana Reyes" <reply+abcdefghijklmnopqrstuvwxyz@in.acme.example>`,
		Subject: "Checking in on Globex — Ada", UnsubscribeURL: "https://tend.acme.example/u/abcdefghijklmnopqrstuvwxyz0123456789",
		HTML: html, Text: strings.Repeat("Tip: schedule a weekly export so the whole team sees the numbers.\n", 30),
	}
	s, date := &Sender{}, time.Now()
	for b.Loop() {
		body := newAlternative(42, e.Text, e.HTML)
		h, err := newHeader(e, 42, false, date, "tend.acme.example", body)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.seal(h, body); err != nil {
			b.Fatal(err)
		}
	}
}
