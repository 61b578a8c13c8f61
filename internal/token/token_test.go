package token

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/tendhq/tend/internal/errs"
)

var secret = []byte("test-secret-0123456789abcdef")

func TestRoundTrip(t *testing.T) {
	s := NewSigner(secret)
	long := "https://example.com/" + strings.Repeat("a", 3000) + "?q=1&r=%20#frag"
	tests := []struct {
		name string
		tok  string
		want Token
	}{
		{"open", s.Open(42), Token{Kind: KindOpen, MessageID: 42}},
		{"open zero", s.Open(0), Token{Kind: KindOpen, MessageID: 0}},
		{"open max", s.Open(math.MaxInt64), Token{Kind: KindOpen, MessageID: math.MaxInt64}},
		{"unsubscribe", s.Unsubscribe(7), Token{Kind: KindUnsubscribe, MessageID: 7}},
		{"click", s.Click(123456789, "https://example.com/docs?a=1&b=2"), Token{Kind: KindClick, MessageID: 123456789, URL: "https://example.com/docs?a=1&b=2"}},
		{"click http", s.Click(1, "http://example.com"), Token{Kind: KindClick, MessageID: 1, URL: "http://example.com"}},
		{"click long url", s.Click(9, long), Token{Kind: KindClick, MessageID: 9, URL: long}},
		{"click unicode", s.Click(9, "https://例え.jp/パス"), Token{Kind: KindClick, MessageID: 9, URL: "https://例え.jp/パス"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if strings.ContainsAny(tt.tok, "+/=") {
				t.Fatalf("token %q is not URL-safe base64 without padding", tt.tok)
			}
			got, err := s.Parse(tt.tok)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got != tt.want {
				t.Fatalf("Parse = %+v, want %+v", got, tt.want)
			}
			got, err = s.ParseAs(tt.want.Kind, tt.tok)
			if err != nil || got != tt.want {
				t.Fatalf("ParseAs = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestCompact(t *testing.T) {
	s := NewSigner(secret)
	// 1 header byte + 4 varint bytes + 16 MAC bytes = 21 bytes = 28 characters.
	if tok := s.Open(10_000_000); len(tok) != 28 {
		t.Fatalf("open token %q is %d characters, want 28", tok, len(tok))
	}
}

func TestDeterministic(t *testing.T) {
	a, b := NewSigner(secret), NewSigner(append([]byte(nil), secret...))
	if a.Click(5, "https://x.example") != b.Click(5, "https://x.example") {
		t.Fatal("the same secret must sign the same token")
	}
}

func TestReply(t *testing.T) {
	s := NewSigner(secret)
	tok := s.Reply(99)
	if tok != strings.ToLower(tok) || strings.ContainsAny(tok, "=+/_-") {
		t.Fatalf("reply token %q must be lowercase base32 without padding", tok)
	}
	for _, in := range []string{tok, strings.ToUpper(tok)} {
		got, err := s.ParseReply(in)
		if err != nil || got != (Token{Kind: KindReply, MessageID: 99}) {
			t.Fatalf("ParseReply(%q) = %+v, %v", in, got, err)
		}
	}
	if got, err := s.ParseAs(KindReply, tok); err != nil || got.MessageID != 99 {
		t.Fatalf("ParseAs(reply) = %+v, %v", got, err)
	}
	// A reply token's bytes re-encoded as base64url are still not a link token.
	raw, err := b32.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Parse(b64.EncodeToString(raw)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a reply token parsed as a link token: %v", err)
	}
	// And a link token re-encoded as base32 is not a reply token.
	raw, err = b64.DecodeString(s.Open(99))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ParseReply(b32.EncodeToString(raw)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an open token parsed as a reply token: %v", err)
	}
}

// flip returns tok with the byte at i (negative: from the end) of its decoded
// form changed.
func flip(t *testing.T, tok string, i int) string {
	t.Helper()
	raw, err := b64.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	if i < 0 {
		i += len(raw)
	}
	raw[i] ^= 0x01
	return b64.EncodeToString(raw)
}

// TestRejected covers what a forger without the secret can try.
func TestRejected(t *testing.T) {
	s := NewSigner(secret)
	other := NewSigner([]byte("another-secret-0123456789abcdef"))
	click := s.Click(42, "https://example.com/ok")
	rawClick, _ := b64.DecodeString(click)

	// Payload of the click with the URL swapped, MAC kept.
	swapped := append([]byte(nil), rawClick[:len(rawClick)-macLen-len("https://example.com/ok")]...)
	swapped = append(swapped, "https://evil.example/"...)
	swapped = append(swapped, rawClick[len(rawClick)-macLen:]...)

	// An open token turned into an unsubscribe token by editing the header byte.
	rawOpen, _ := b64.DecodeString(s.Open(42))
	rawOpen[0] = version<<4 | byte(KindUnsubscribe)

	tests := []struct {
		name string
		tok  string
	}{
		{"empty", ""},
		{"garbage", "not a token!"},
		{"garbage base64", "aGVsbG8gd29ybGQ"},
		{"padded", click + "="},
		{"standard base64 alphabet", click + "+"},
		{"altered header", flip(t, click, 0)},
		{"altered message id", flip(t, click, 1)},
		{"altered url", flip(t, click, 5)},
		{"altered mac", flip(t, click, -1)},
		{"url swapped", b64.EncodeToString(swapped)},
		{"kind changed", b64.EncodeToString(rawOpen)},
		{"truncated", click[:len(click)-4]},
		{"mac only", click[len(click)-22:]},
		{"wrong secret", other.Click(42, "https://example.com/ok")},
		{"wrong secret open", other.Open(42)},
		{"too long", strings.Repeat("A", MaxLen+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Parse(tt.tok)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tt.tok, got)
			}
			if !errors.Is(err, ErrInvalid) || errs.KindOf(err) != errs.NotFound {
				t.Fatalf("error %v must wrap ErrInvalid", err)
			}
		})
	}
}

// A token signed with a key but carrying a payload Tend never makes (a
// non-http URL, an unknown kind, trailing bytes) is still refused.
func TestRejectedPayloads(t *testing.T) {
	s := NewSigner(secret)
	signed := func(payload []byte) string {
		return b64.EncodeToString(append(payload, s.mac(payload)...))
	}
	tests := []struct {
		name    string
		payload []byte
	}{
		{"javascript url", append([]byte{version<<4 | byte(KindClick), 1}, "javascript:alert(1)"...)},
		{"relative url", append([]byte{version<<4 | byte(KindClick), 1}, "/path"...)},
		{"empty url", []byte{version<<4 | byte(KindClick), 1}},
		{"unknown kind", []byte{version<<4 | 9, 1}},
		{"unknown version", []byte{2<<4 | byte(KindOpen), 1}},
		{"trailing bytes", []byte{version<<4 | byte(KindOpen), 1, 0}},
		{"bad varint", []byte{version<<4 | byte(KindOpen), 0x80}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := s.Parse(signed(tt.payload)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse = %+v, %v; want ErrInvalid", got, err)
			}
		})
	}
}

func TestKindConfusion(t *testing.T) {
	s := NewSigner(secret)
	toks := map[Kind]string{
		KindOpen:        s.Open(1),
		KindClick:       s.Click(1, "https://example.com"),
		KindUnsubscribe: s.Unsubscribe(1),
		KindReply:       s.Reply(1),
	}
	for have, tok := range toks {
		for _, want := range []Kind{KindOpen, KindClick, KindUnsubscribe, KindReply} {
			_, err := s.ParseAs(want, tok)
			if have == want && err != nil {
				t.Errorf("ParseAs(%s, %s token): %v", want, have, err)
			}
			if have != want && !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseAs(%s, %s token) accepted it", want, have)
			}
		}
	}
	// The open and unsubscribe tokens of one message differ.
	if toks[KindOpen] == toks[KindUnsubscribe] {
		t.Fatal("open and unsubscribe tokens are equal")
	}
}

func TestNewSignerEmptySecret(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("NewSigner(nil) did not panic")
		}
	}()
	NewSigner(nil)
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{KindOpen: "open", KindClick: "click", KindUnsubscribe: "unsubscribe", KindReply: "reply", 0: "kind(0)"} {
		if k.String() != want {
			t.Errorf("%d.String() = %q, want %q", byte(k), k.String(), want)
		}
	}
}

func FuzzParse(f *testing.F) {
	s := NewSigner(secret)
	f.Add(s.Click(3, "https://example.com/x"))
	f.Add(s.Open(3))
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		got, err := s.Parse(tok)
		if err != nil {
			return
		}
		// Anything accepted must be exactly what the signer makes.
		var again string
		switch got.Kind {
		case KindOpen:
			again = s.Open(got.MessageID)
		case KindClick:
			again = s.Click(got.MessageID, got.URL)
		case KindUnsubscribe:
			again = s.Unsubscribe(got.MessageID)
		}
		if again != tok {
			t.Fatalf("accepted %q, which the signer would write %q", tok, again)
		}
	})
}

func BenchmarkClick(b *testing.B) {
	s := NewSigner(secret)
	for b.Loop() {
		_ = s.Click(123456, "https://example.com/some/path?utm_source=tend")
	}
}

func BenchmarkParse(b *testing.B) {
	s := NewSigner(secret)
	tok := s.Click(123456, "https://example.com/some/path?utm_source=tend")
	for b.Loop() {
		if _, err := s.Parse(tok); err != nil {
			b.Fatal(err)
		}
	}
}
