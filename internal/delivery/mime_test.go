package delivery

import (
	"io"
	"math/rand/v2"
	"mime/quotedprintable"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/smtptest"
)

// checkQP holds appendQP's encoding of s to what RFC 2045 asks of
// quoted-printable, and to decoding (by mime/quotedprintable) to s with its
// line breaks CRLF.
func checkQP(t *testing.T, s string) {
	t.Helper()
	got := string(appendQP(nil, s))
	for i, line := range strings.Split(got, "\r\n") {
		if len(line) > qpMaxLine {
			t.Fatalf("appendQP(%q): line %d is %d bytes: %q", s, i, len(line), line)
		}
		if strings.HasSuffix(line, " ") || strings.HasSuffix(line, "\t") {
			t.Fatalf("appendQP(%q): line %d ends in white space: %q", s, i, line)
		}
		for j := 0; j < len(line); j++ {
			c := line[j]
			if c != ' ' && c != '\t' && (c < '!' || c > '~') {
				t.Fatalf("appendQP(%q): line %d has byte %#x: %q", s, i, c, line)
			}
			if c == '=' && j+1 < len(line) && (j+3 > len(line) || !isHex(line[j+1]) || !isHex(line[j+2])) {
				t.Fatalf("appendQP(%q): line %d has a bad escape: %q", s, i, line)
			}
		}
	}
	if strings.HasSuffix(got, "=") || strings.Contains(got, "=_") {
		t.Fatalf("appendQP(%q) = %q ends in a soft break or holds the boundary's \"=_\"", s, got)
	}
	if strings.Contains(strings.ReplaceAll(got, "\r\n", ""), "\r") || strings.Count(got, "\n") != strings.Count(got, "\r\n") {
		t.Fatalf("appendQP(%q) = %q: a line break other than CRLF", s, got)
	}
	decoded, err := io.ReadAll(quotedprintable.NewReader(strings.NewReader(got)))
	if err != nil {
		t.Fatalf("decode appendQP(%q) = %q: %v", s, got, err)
	}
	// Every line break decodes as CRLF. (mime/quotedprintable's Writer is
	// no oracle: after a lone "\r" and bytes it writes =XX, it drops the
	// next "\n".)
	want := strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n"), "\n", "\r\n")
	if string(decoded) != string(want) {
		t.Fatalf("appendQP(%q) = %q decodes to %q, want %q", s, got, decoded, want)
	}
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' }

func TestAppendQP(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"plain text", "plain text"},
		{`<a href="x">`, `<a href=3D"x">`},
		{"café", "caf=C3=A9"},
		{"trailing space \nand tab\t", "trailing space=20\r\nand tab=09"},
		{"a\r\nb\rc\nd\n", "a\r\nb\r\nc\r\nd\r\n"},
		{"\n\n", "\r\n\r\n"},
		{strings.Repeat("x", 76), strings.Repeat("x", 76)},
		{strings.Repeat("x", 77), strings.Repeat("x", 75) + "=\r\nxx"},
		{strings.Repeat("x", 74) + "==", strings.Repeat("x", 74) + "=\r\n=3D=3D"},
		{strings.Repeat("x", 73) + "=", strings.Repeat("x", 73) + "=3D"},
		{strings.Repeat("x", 75) + " ", strings.Repeat("x", 75) + "=\r\n=20"},
	} {
		if got := string(appendQP(nil, tc.in)); got != tc.want {
			t.Errorf("appendQP(%q) = %q, want %q", tc.in, got, tc.want)
		}
		checkQP(t, tc.in)
	}
	// Random text over the bytes that matter: line breaks, white space,
	// "=", UTF-8, controls, and long runs of plain bytes around the line
	// limit.
	pieces := []string{"a", "bc", "=", " ", "\t", "\r", "\n", "\r\n", "é", "\x00", "\xff", ".", strings.Repeat("y", 70), strings.Repeat("z", 74)}
	r := rand.New(rand.NewPCG(1, 2))
	for range 3000 {
		var s strings.Builder
		for range r.IntN(40) {
			s.WriteString(pieces[r.IntN(len(pieces))])
		}
		checkQP(t, s.String())
	}
}

func FuzzAppendQP(f *testing.F) {
	for _, s := range []string{"", "a=b", "x \n", strings.Repeat("é", 40), strings.Repeat("x", 75) + "\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkQP(t, s) })
}

// TestAlternative reads a message sealed as the Sender seals a campaign
// email back as a mail client would.
func TestAlternative(t *testing.T) {
	text := "Hi Ada,\n\nYour workspace = ready. Café " + strings.Repeat("long ", 40) + "\n"
	html := `<html><body><p style="color: red">Hi Ada, ` + strings.Repeat("é", 50) + "</p>\n</body></html>"
	a := newAlternative(42, text, html)
	out, err := sealer(time.Now(), "tend.example").seal(Composed{From: "dana@acme.example", To: "ada@globex.example", Subject: "Hi", Text: text, HTML: html}, 42, false)
	if err != nil {
		t.Fatal(err)
	}
	msg := string(out.data)
	// One blank line ends the header fields, right before the first part.
	if i := strings.Index(msg, "\r\n\r\n"); i < 0 || !strings.HasPrefix(msg[i:], "\r\n\r\n--"+a.boundary+"\r\n") {
		t.Fatalf("the header fields do not end right before the first part:\n%s", msg)
	}
	if strings.Count(msg, a.boundary) != 4 { // the header, two parts, the close
		t.Fatalf("boundary %q appears %d times in\n%s", a.boundary, strings.Count(msg, a.boundary), msg)
	}
	for typ, want := range map[string]string{"text/plain": strings.ReplaceAll(text, "\n", "\r\n"), "text/html": strings.ReplaceAll(html, "\n", "\r\n")} {
		got, err := smtptest.Message{Data: []byte(msg)}.Part(typ)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s part = %q, want %q", typ, got, want)
		}
	}
}

// BenchmarkAppendQP encodes 6 KB of HTML-like text.
//
//	go test -run '^$' -bench BenchmarkAppendQP ./internal/delivery/
func BenchmarkAppendQP(b *testing.B) {
	text := strings.Repeat(`Tip: schedule a weekly <a href="https://x.example/a?b=c">export</a> so the whole team sees the numbers.`+"\n", 60)
	buf := make([]byte, 0, 2*len(text))
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		buf = appendQP(buf[:0], text)
	}
}
