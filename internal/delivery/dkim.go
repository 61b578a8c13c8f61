// DKIM: signing outgoing campaign mail (RFC 6376) with an RSA (RFC 8301) or
// Ed25519 (RFC 8463) key, with github.com/emersion/go-msgauth/dkim.

package delivery

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// dkimHeaders are the header fields signed when present, in h= order. From
// is required; List-Unsubscribe and List-Unsubscribe-Post must be signed for
// mailbox providers to honour one-click unsubscribe (RFC 8058 section 4).
var dkimHeaders = []string{
	"from", "to", "subject", "date", "message-id", "reply-to",
	"mime-version", "content-type", "list-unsubscribe", "list-unsubscribe-post",
}

// minRSABits is the smallest RSA key verifiers accept (RFC 8301 section 3.2).
const minRSABits = 1024

// DKIM signs messages for one domain and selector. It is safe for concurrent
// use.
type DKIM struct {
	domain   string
	selector string
	key      crypto.Signer // *rsa.PrivateKey or ed25519.PrivateKey
}

// NewDKIM reads a private key in PEM form — PKCS#1 ("RSA PRIVATE KEY") or
// PKCS#8 ("PRIVATE KEY") RSA of at least 1024 bits, or PKCS#8 Ed25519 — to
// sign as d=domain, s=selector: the public key must be published in DNS as
// the TXT record selector._domainkey.domain (see DNSRecord).
func NewDKIM(domain, selector string, keyPEM []byte) (*DKIM, error) {
	if !tagSafe(domain) {
		return nil, fmt.Errorf("dkim: domain %q: want a domain name such as acme.example", domain)
	}
	if !tagSafe(selector) {
		return nil, fmt.Errorf("dkim: selector %q: want a DNS label such as tend", selector)
	}
	key, err := parseDKIMKey(keyPEM)
	if err != nil {
		return nil, err
	}
	return &DKIM{domain: strings.ToLower(domain), selector: selector, key: key}, nil
}

// tagSafe reports whether s can stand as a DKIM tag value: not empty, no
// space, control character, ';' or '='. Whether it is a good DNS name is
// the configuration's business.
func tagSafe(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return r <= ' ' || r == ';' || r == '=' || r == 0x7f
	})
}

func parseDKIMKey(keyPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("dkim: key: no PEM block found (want -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)")
	}
	var parsed any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		if _, encrypted := block.Headers["DEK-Info"]; encrypted {
			return nil, errors.New("dkim: key: the RSA key is encrypted; store it unencrypted (openssl rsa -in KEY -out KEY.plain)")
		}
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, errors.New("dkim: key: the key is encrypted; store it unencrypted (openssl pkey -in KEY -out KEY.plain)")
	case "EC PRIVATE KEY":
		return nil, errors.New("dkim: key: ECDSA keys cannot sign DKIM; use RSA (2048 bits) or Ed25519")
	case "OPENSSH PRIVATE KEY":
		return nil, errors.New("dkim: key: OpenSSH key format; convert it to PKCS#8 (ssh-keygen -p -m PKCS8 -f KEY)")
	default:
		return nil, fmt.Errorf("dkim: key: PEM block %q is not a private key (want PRIVATE KEY or RSA PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("dkim: key: %s: %w", block.Type, err)
	}
	switch k := parsed.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("dkim: key: RSA key of %d bits; verifiers reject keys under %d bits (use 2048)", bits, minRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("dkim: key: %T keys cannot sign DKIM; use RSA (2048 bits) or Ed25519", parsed)
	}
}

// Algorithm is the key's DKIM algorithm: "rsa" or "ed25519".
func (d *DKIM) Algorithm() string {
	if _, ok := d.key.(ed25519.PrivateKey); ok {
		return "ed25519"
	}
	return "rsa"
}

// DNSRecord is the TXT record that publishes the public key: its name
// (selector._domainkey.domain) and its value ("v=DKIM1; k=...; p=...").
func (d *DKIM) DNSRecord() (name, value string) {
	var p []byte
	switch k := d.key.Public().(type) {
	case ed25519.PublicKey:
		p = k // RFC 8463 section 4.2: the raw 32 bytes
	default:
		p, _ = x509.MarshalPKIXPublicKey(k) // cannot fail for an RSA key
	}
	return d.selector + "._domainkey." + d.domain,
		"v=DKIM1; k=" + d.Algorithm() + "; p=" + base64.StdEncoding.EncodeToString(p)
}

// Sign returns msg, a whole message with CRLF line ends (as Sender.seal
// writes it), with a DKIM-Signature header field prepended: relaxed/relaxed
// canonicalisation, SHA-256, over those of From, To, Subject, Date,
// Message-ID, Reply-To, MIME-Version, Content-Type, List-Unsubscribe and
// List-Unsubscribe-Post the message has. It must have a From.
func (d *DKIM) Sign(msg []byte) ([]byte, error) {
	keys := signedHeaders(msg)
	if len(keys) == 0 || keys[0] != "from" {
		return nil, errors.New("dkim: the message has no From header field")
	}
	s, err := dkim.NewSigner(&dkim.SignOptions{
		Domain:                 d.domain,
		Selector:               d.selector,
		Signer:                 d.key,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             keys,
	})
	if err != nil {
		return nil, fmt.Errorf("dkim: %w", err)
	}
	if _, err := s.Write(msg); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("dkim: %w", err)
	}
	if err := s.Close(); err != nil {
		return nil, fmt.Errorf("dkim: sign: %w", err)
	}
	sig := s.Signature()
	out := make([]byte, 0, len(sig)+len(msg))
	return append(append(out, sig...), msg...), nil
}

// signedHeaders returns the names in dkimHeaders that msg's header has, in
// that order.
func signedHeaders(msg []byte) []string {
	present := make(map[string]bool, len(dkimHeaders))
	for rest := msg; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break // the end of the header
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // a folded continuation
		}
		if i := bytes.IndexByte(line, ':'); i > 0 {
			present[strings.ToLower(string(bytes.TrimRight(line[:i], " \t")))] = true
		}
	}
	keys := make([]string, 0, len(dkimHeaders))
	for _, k := range dkimHeaders {
		if present[k] {
			keys = append(keys, k)
		}
	}
	return keys
}
