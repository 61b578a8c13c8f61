// Package token signs and checks the tracking tokens that Tend puts in the
// links of the messages it sends: the open pixel (/t/o/TOKEN), click
// redirects (/t/c/TOKEN), the unsubscribe page (/u/TOKEN) and the reply
// address (reply+TOKEN@inbound-domain).
//
// A token names its kind and the outbox message it belongs to; a click token
// also carries the destination URL, so the redirect can only lead to a URL
// that was signed into that message (no open redirect). The payload is
// authenticated with HMAC-SHA256, keyed by a key derived from TEND_SECRET and
// truncated to 16 bytes, so a token cannot be forged, altered, cut short or
// turned into another kind without the secret. Tokens are not encrypted: the
// message id and the URL can be read by whoever holds the token, and they do
// not expire (an unsubscribe link must keep working).
//
// Layout, before encoding: one header byte (version<<4 | kind), the message id
// as a uvarint, the URL bytes (click tokens only), then the 16-byte MAC of all
// that. Open, click and unsubscribe tokens are base64url without padding;
// reply tokens are lowercase base32 without padding, because mail systems may
// change the case of an address's local part.
package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash"
	"net/url"
	"strings"
	"sync"

	"github.com/tendhq/tend/internal/errs"
)

// Kind is what a token is for.
type Kind byte

// The kinds of token. The values are part of the wire format: never renumber.
const (
	KindOpen        Kind = 1
	KindClick       Kind = 2
	KindUnsubscribe Kind = 3
	KindReply       Kind = 4
)

func (k Kind) String() string {
	switch k {
	case KindOpen:
		return "open"
	case KindClick:
		return "click"
	case KindUnsubscribe:
		return "unsubscribe"
	case KindReply:
		return "reply"
	}
	return fmt.Sprintf("kind(%d)", byte(k))
}

const (
	version = 1
	macLen  = 16
	// MaxLen bounds the length of a token string that Parse will look at;
	// a click token for a very long URL still fits.
	MaxLen = 8192
)

// ErrInvalid is the error every rejected token wraps: forged, altered,
// truncated, of an unknown version, or of the wrong kind. Its message is safe
// to show; the wrapping error says why, for logs.
var ErrInvalid = errs.E(errs.NotFound, "invalid_token", "this link is not valid")

var (
	b64 = base64.RawURLEncoding.Strict()
	b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)
)

// Token is a verified token.
type Token struct {
	Kind      Kind
	MessageID int64
	URL       string // the destination, for a click token
}

// Signer makes and verifies tokens. It is safe for concurrent use.
type Signer struct {
	macs sync.Pool // of hash.Hash: HMAC-SHA256 keyed by the derived key
}

// NewSigner returns a signer keyed by secret (TEND_SECRET; config requires at
// least 16 characters). The MAC key is derived from the secret, so the same
// secret may key other things without their MACs being interchangeable. It
// panics on an empty secret, with which anyone could forge tokens.
func NewSigner(secret []byte) *Signer {
	if len(secret) == 0 {
		panic("token: empty secret")
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("tend/token/v1"))
	key := m.Sum(nil)
	s := &Signer{}
	s.macs.New = func() any { return hmac.New(sha256.New, key) }
	return s
}

// Open returns the open-pixel token of a message.
func (s *Signer) Open(msgID int64) string { return b64.EncodeToString(s.seal(KindOpen, msgID, "")) }

// Click returns the token of a tracked link to rawURL in a message.
func (s *Signer) Click(msgID int64, rawURL string) string {
	return b64.EncodeToString(s.seal(KindClick, msgID, rawURL))
}

// Unsubscribe returns the unsubscribe token of a message.
func (s *Signer) Unsubscribe(msgID int64) string {
	return b64.EncodeToString(s.seal(KindUnsubscribe, msgID, ""))
}

// Reply returns the reply token of a message, for the local part of a
// Reply-To address (reply+TOKEN@inbound-domain): lowercase base32, so that it
// survives a mail system that changes its case.
func (s *Signer) Reply(msgID int64) string { return b32.EncodeToString(s.seal(KindReply, msgID, "")) }

// Parse verifies an open, click or unsubscribe token. A caller that expects
// one kind should use ParseAs.
func (s *Signer) Parse(tok string) (Token, error) {
	if len(tok) > MaxLen {
		return Token{}, fmt.Errorf("token: longer than %d characters: %w", MaxLen, ErrInvalid)
	}
	raw, err := b64.DecodeString(tok)
	if err != nil {
		return Token{}, fmt.Errorf("token: not base64url: %w", ErrInvalid)
	}
	t, err := s.open(raw)
	if err != nil {
		return Token{}, err
	}
	if t.Kind == KindReply {
		return Token{}, fmt.Errorf("token: a reply token in a link: %w", ErrInvalid)
	}
	return t, nil
}

// ParseAs verifies a token and requires it to be of the given kind, so that,
// say, an open token cannot be used as an unsubscribe token.
func (s *Signer) ParseAs(kind Kind, tok string) (Token, error) {
	var (
		t   Token
		err error
	)
	if kind == KindReply {
		t, err = s.ParseReply(tok)
	} else {
		t, err = s.Parse(tok)
	}
	if err != nil {
		return Token{}, err
	}
	if t.Kind != kind {
		return Token{}, fmt.Errorf("token: %s token where %s was expected: %w", t.Kind, kind, ErrInvalid)
	}
	return t, nil
}

// ParseReply verifies a reply token, in any letter case.
func (s *Signer) ParseReply(tok string) (Token, error) {
	if len(tok) > MaxLen {
		return Token{}, fmt.Errorf("token: longer than %d characters: %w", MaxLen, ErrInvalid)
	}
	tok = strings.ToLower(tok)
	raw, err := b32.DecodeString(tok)
	// base32 has no strict mode: refuse non-zero trailing bits by hand, so
	// that one token has one spelling (up to case).
	if err != nil || b32.EncodeToString(raw) != tok {
		return Token{}, fmt.Errorf("token: not base32: %w", ErrInvalid)
	}
	t, err := s.open(raw)
	if err != nil {
		return Token{}, err
	}
	if t.Kind != KindReply {
		return Token{}, fmt.Errorf("token: %s token in a reply address: %w", t.Kind, ErrInvalid)
	}
	return t, nil
}

// seal builds header | uvarint(msgID) | url | mac.
func (s *Signer) seal(kind Kind, msgID int64, rawURL string) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(rawURL)+macLen)
	b = append(b, version<<4|byte(kind))
	b = binary.AppendUvarint(b, uint64(msgID))
	b = append(b, rawURL...)
	return append(b, s.mac(b)...)
}

// open checks the MAC, then decodes the payload it covers.
func (s *Signer) open(raw []byte) (Token, error) {
	if len(raw) < 2+macLen {
		return Token{}, fmt.Errorf("token: too short: %w", ErrInvalid)
	}
	payload, sum := raw[:len(raw)-macLen], raw[len(raw)-macLen:]
	if !hmac.Equal(sum, s.mac(payload)) {
		return Token{}, fmt.Errorf("token: bad signature: %w", ErrInvalid)
	}
	// The payload is ours from here on; the checks below guard against a
	// format change, not a forger.
	if payload[0]>>4 != version {
		return Token{}, fmt.Errorf("token: unknown version %d: %w", payload[0]>>4, ErrInvalid)
	}
	t := Token{Kind: Kind(payload[0] & 0x0f)}
	id, n := binary.Uvarint(payload[1:])
	if n <= 0 {
		return Token{}, fmt.Errorf("token: bad message id: %w", ErrInvalid)
	}
	t.MessageID = int64(id)
	rest := payload[1+n:]
	switch t.Kind {
	case KindClick:
		t.URL = string(rest)
		if u, err := url.Parse(t.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return Token{}, fmt.Errorf("token: click target is not an http(s) URL: %w", ErrInvalid)
		}
	case KindOpen, KindUnsubscribe, KindReply:
		if len(rest) != 0 {
			return Token{}, fmt.Errorf("token: trailing bytes: %w", ErrInvalid)
		}
	default:
		return Token{}, fmt.Errorf("token: unknown kind %d: %w", byte(t.Kind), ErrInvalid)
	}
	return t, nil
}

func (s *Signer) mac(payload []byte) []byte {
	m := s.macs.Get().(hash.Hash)
	defer s.macs.Put(m)
	m.Reset()
	m.Write(payload)
	var sum [sha256.Size]byte
	return m.Sum(sum[:0])[:macLen]
}
