package delivery

import (
	"bytes"
	"mime"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/clock"
)

// sealer is a Sender that seals emails dated date, with Message-IDs in
// domain.
func sealer(date time.Time, domain string) *Sender {
	return NewSender(nil, clock.NewManual(date), nil, nil, nil, nil, nil, SenderOptions{MessageIDDomain: domain})
}

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
	// Random words, some with two spaces between them: every line fits.
	for n := 1; n < 300; n += 7 {
		var value []string
		for i := 0; len(strings.Join(value, " ")) < 4*n; i++ {
			value = append(value, word(1+(i*n)%23))
			if i%5 == 4 {
				value = append(value, "") // two spaces in a row
			}
		}
		got := appendField(nil, "Subject", strings.Join(value, " "))
		if unfolded := strings.ReplaceAll(strings.TrimSuffix(string(got), "\r\n"), "\r\n", ""); unfolded != "Subject: "+strings.Join(value, " ") {
			t.Fatalf("%q unfolds to %q", got, unfolded)
		}
		for _, line := range bytes.Split(bytes.TrimSuffix(got, []byte("\r\n")), []byte("\r\n")) {
			// Spaces after a line's last word stay on it.
			if len(bytes.TrimRight(line, " ")) > headerLine || len(bytes.TrimSpace(line)) == 0 {
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
	out, err := sealer(date, "tend.acme.example").seal(e, 7, true)
	if err != nil {
		t.Fatal(err)
	}
	if out.from != "dana@acme.example" || len(out.to) != 1 || out.to[0] != "ada@globex.example" {
		t.Errorf("envelope from %q to %q", out.from, out.to)
	}
	data := out.data
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
		"Content-Type":          newAlternative(7, "", "").contentType(),
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

// TestHeaderRefuses holds seal to refusing what it cannot write safely, and
// to writing what it can, at the edges.
func TestHeaderRefuses(t *testing.T) {
	ok := Composed{From: "dana@acme.example", To: "ada@globex.example", Subject: "Hi"}
	// "List-Unsubscribe: <" and ">" take 20 bytes of a line.
	url := func(n int) string { return "https://x.example/u/" + strings.Repeat("t", n-20) }
	for name, tc := range map[string]struct {
		e      func(Composed) Composed
		domain string
	}{
		"bad from":             {func(e Composed) Composed { e.From = "dana"; return e }, "x.example"},
		"bad to":               {func(e Composed) Composed { e.To = "ada@"; return e }, "x.example"},
		"bad reply-to":         {func(e Composed) Composed { e.ReplyTo = "a, b"; return e }, "x.example"},
		"line break in URL":    {func(e Composed) Composed { e.UnsubscribeURL = "https://x.example/u/t\r\nBcc:e@x"; return e }, "x.example"},
		"space in URL":         {func(e Composed) Composed { e.UnsubscribeURL = "https://x.example/u/a b"; return e }, "x.example"},
		"bracket in URL":       {func(e Composed) Composed { e.UnsubscribeURL = "https://x.example/u/a>,<mailto:e@x"; return e }, "x.example"},
		"line break in domain": {func(e Composed) Composed { return e }, "x.example\r\nBcc:e@x"},
		"no domain":            {func(e Composed) Composed { return e }, ""},
		"a subject line a byte too long": {func(e Composed) Composed {
			e.Subject = "Hi " + strings.Repeat("x", maxLine-1) + "  y" // " x…x " on a line
			return e
		}, "x.example"},
		"a name word longer than a line": {func(e Composed) Composed {
			e.From = (&mail.Address{Name: strings.Repeat("x", maxLine), Address: "dana@acme.example"}).String()
			return e
		}, "x.example"},
		"a URL a byte too long": {func(e Composed) Composed { e.UnsubscribeURL = url(maxLine - 20 + 1); return e }, "x.example"},
	} {
		t.Run(name, func(t *testing.T) {
			if out, err := sealer(time.Now(), tc.domain).seal(tc.e(ok), 1, false); err == nil {
				t.Fatalf("seal accepted it:\n%s", out.data)
			}
		})
	}
	// An IPv6 address is a literal in Message-IDs.
	out, err := sealer(time.Now(), "::1").seal(ok, 1, false)
	if err != nil {
		t.Fatalf("an IPv6 Message-ID domain: %v", err)
	}
	if !bytes.Contains(out.data, []byte("\r\nMessage-ID: <tend.1@[::1]>\r\n")) {
		t.Fatalf("an IPv6 Message-ID domain:\n%s", out.data)
	}
	// The longest lines seal allows.
	for name, e := range map[string]Composed{
		"good":               ok,
		"a subject word":     {From: ok.From, To: ok.To, Subject: "Hi " + strings.Repeat("x", maxLine-1)},
		"a word and a space": {From: ok.From, To: ok.To, Subject: "Hi " + strings.Repeat("x", maxLine-2) + "  y"},
		"a URL":              {From: ok.From, To: ok.To, Subject: "Hi", UnsubscribeURL: url(maxLine - 20)},
	} {
		out, err := sealer(time.Now(), "x.example").seal(e, 1, false)
		if err != nil {
			t.Fatalf("%s: seal refused it: %v", name, err)
		}
		if n := longestLine(out.data); n > maxLine {
			t.Fatalf("%s: a line of %d bytes", name, n)
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
	s := sealer(time.Now(), "tend.acme.example")
	for b.Loop() {
		if _, err := s.seal(e, 42, false); err != nil {
			b.Fatal(err)
		}
	}
}
