package delivery_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/smtptest"
)

const (
	dkimDomain   = "acme-analytics.example"
	dkimSelector = "tend"
	dkimTXTName  = dkimSelector + "._domainkey." + dkimDomain
)

// testKeys are made once: RSA-2048 generation takes a while under -race.
var testKeys = sync.OnceValue(func() struct {
	rsa     *rsa.PrivateKey
	ed25519 ed25519.PrivateKey
} {
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	_, e, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return struct {
		rsa     *rsa.PrivateKey
		ed25519 ed25519.PrivateKey
	}{r, e}
})

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("PRIVATE KEY", der)
}

// dkimKey is a signing key in the PEM forms NewDKIM reads, with the DNS TXT
// record publishing it, built here independently of the code under test.
type dkimKey struct {
	name   string
	algo   string
	pem    []byte
	record string
}

func dkimKeys(t testing.TB) []dkimKey {
	t.Helper()
	k := testKeys()
	spki, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaRecord := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(spki)
	edRecord := "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k.ed25519.Public().(ed25519.PublicKey))
	return []dkimKey{
		{"RSA-2048-PKCS1", "rsa", pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.rsa)), rsaRecord},
		{"RSA-2048-PKCS8", "rsa", pkcs8(t, k.rsa), rsaRecord},
		{"Ed25519-PKCS8", "ed25519", pkcs8(t, k.ed25519), edRecord},
	}
}

func newDKIM(t testing.TB, key dkimKey) *delivery.DKIM {
	t.Helper()
	d, err := delivery.NewDKIM(dkimDomain, dkimSelector, key.pem)
	if err != nil {
		t.Fatalf("NewDKIM: %v", err)
	}
	return d
}

// campaignMsg is a message as the Sender composes it (CSM From and
// Reply-To, one-click unsubscribe), written with text and HTML parts as the
// Sender writes them.
func campaignMsg(t testing.TB, text, html string) []byte {
	t.Helper()
	e := delivery.Composed{
		From: `"Dana Reyes" <dana@acme-analytics.example>`, To: "hank@globex.example",
		ReplyTo: `"Dana Reyes" <dana.reyes@acme-analytics.example>`, Subject: "Checking in on Globex — Hank",
		UnsubscribeURL: "https://tend.acme-analytics.example/u/tok42", Text: text, HTML: html,
	}
	raw, err := delivery.Seal(e, 42, time.Date(2026, 11, 25, 9, 30, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// verifyDKIM checks data's one signature against the record published at
// dkimTXTName; the returned verification's Err is nil when it is valid.
func verifyDKIM(t *testing.T, data []byte, record string) *dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(data), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if name == dkimTXTName {
				return []string{record}, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
		},
	})
	if err != nil {
		t.Fatalf("dkim.Verify: %v", err)
	}
	if len(vs) != 1 {
		t.Fatalf("%d signatures, want 1", len(vs))
	}
	return vs[0]
}

// Signed mail goes through the Mailer (SendRaw) to a real SMTP server and
// what the server received verifies; tampering with it does not.
func TestDKIMSignedMailVerifiesAfterSMTP(t *testing.T) {
	t.Parallel()
	for _, key := range dkimKeys(t) {
		t.Run(key.name, func(t *testing.T) {
			t.Parallel()
			d := newDKIM(t, key)
			if name, record := d.DNSRecord(); name != dkimTXTName || record != key.record || d.Algorithm() != key.algo {
				t.Fatalf("DNSRecord = %q %q, Algorithm = %q; want %q %q %q", name, record, d.Algorithm(), dkimTXTName, key.record, key.algo)
			}
			srv := smtptest.Start(t)
			m := newMailer(t, srv.URL(), delivery.MailerOptions{})

			msg := campaignMsg(t, "Hi Hank,\n\nYour renewal is on 1 July. Shall we talk before then?\n\nDana",
				"<p>Hi Hank,</p><p>Your renewal is on <b>1 July</b>. Shall we talk before then?</p><p>Dana</p>")
			signed, err := d.Sign(msg)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if !bytes.HasPrefix(signed, []byte("DKIM-Signature: ")) {
				t.Fatalf("the signature is not prepended: %.80q", signed)
			}
			if err := m.SendRaw(t.Context(), "dana@acme-analytics.example", []string{"<hank@globex.example>"}, signed); err != nil {
				t.Fatalf("SendRaw: %v", err)
			}
			got := srv.Messages()
			if len(got) != 1 || got[0].From != "dana@acme-analytics.example" || !slices.Equal(got[0].To, []string{"hank@globex.example"}) {
				t.Fatalf("received %+v", got)
			}
			received := got[0].Data

			v := verifyDKIM(t, received, key.record)
			if v.Err != nil {
				t.Fatalf("the received message does not verify: %v", v.Err)
			}
			if v.Domain != dkimDomain || time.Since(v.Time) > time.Minute {
				t.Fatalf("verified d=%q t=%v", v.Domain, v.Time)
			}
			signedKeys := make([]string, len(v.HeaderKeys))
			for i, k := range v.HeaderKeys {
				signedKeys[i] = strings.ToLower(k)
			}
			for _, want := range []string{"from", "to", "subject", "date", "message-id", "reply-to", "mime-version",
				"content-type", "list-unsubscribe", "list-unsubscribe-post"} {
				if !slices.Contains(signedKeys, want) {
					t.Errorf("h= lacks %s: %v", want, signedKeys)
				}
			}
			tags := strings.ReplaceAll(got[0].Header.Get("DKIM-Signature"), " ", "")
			for _, want := range []string{"a=" + key.algo + "-sha256;", "c=relaxed/relaxed;", "d=" + dkimDomain + ";", "s=" + dkimSelector + ";"} {
				if !strings.Contains(tags, want) {
					t.Errorf("DKIM-Signature lacks %s: %s", want, tags)
				}
			}

			// Relaxed canonicalisation tolerates what relays do to
			// whitespace...
			respaced := bytes.Replace(received, []byte("\r\nSubject: "), []byte("\r\nSubject:   \t "), 1)
			if v := verifyDKIM(t, respaced, key.record); v.Err != nil {
				t.Errorf("re-spaced Subject: %v", v.Err)
			}
			// ...but not a change of content.
			for name, tampered := range map[string][]byte{
				"subject":          bytes.Replace(received, []byte("\r\nSubject: "), []byte("\r\nSubject: Re: "), 1),
				"body":             bytes.Replace(received, []byte("1 July"), []byte("2 July"), 1),
				"list-unsubscribe": bytes.Replace(received, []byte("/u/tok42"), []byte("/u/tok43"), 1),
				"from":             bytes.Replace(received, []byte("\r\nFrom: "), []byte("\r\nFrom: \"Mallory\" <m@evil.example>, "), 1),
			} {
				if bytes.Equal(tampered, received) {
					t.Fatalf("tampering with the %s changed nothing", name)
				}
				if v := verifyDKIM(t, tampered, key.record); v.Err == nil {
					t.Errorf("a tampered %s still verifies", name)
				}
			}
			// A wrong key in DNS fails too.
			other := dkimKeys(t)[2].record
			if key.algo == "ed25519" {
				other = dkimKeys(t)[0].record
			}
			if v := verifyDKIM(t, received, other); v.Err == nil {
				t.Error("verifies against another key")
			}
		})
	}
}

// Only the listed fields the message has are signed; From is required.
func TestDKIMSignsOnlyPresentHeaders(t *testing.T) {
	t.Parallel()
	key := dkimKeys(t)[2]
	d := newDKIM(t, key)
	msg := []byte("from: a@acme-analytics.example\r\nX-Other: 1\r\nSUBJECT: hello\r\n\tfolded\r\n\r\nbody\r\n")
	signed, err := d.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	v := verifyDKIM(t, signed, key.record)
	if v.Err != nil || !slices.Equal(v.HeaderKeys, []string{"from", "subject"}) {
		t.Fatalf("err %v, h=%v; want valid over from:subject", v.Err, v.HeaderKeys)
	}
	for _, noFrom := range []string{
		"To: b@globex.example\r\nSubject: hi\r\n\r\nbody\r\n",
		"To: b@globex.example\r\n\r\nFrom: in the body\r\n",
		"",
	} {
		if _, err := d.Sign([]byte(noFrom)); err == nil || !strings.Contains(err.Error(), "From") {
			t.Errorf("Sign(%q) = %v, want an error about From", noFrom, err)
		}
	}
}

// rsa512 is a PKCS#1 RSA key too short for DKIM (RFC 8301).
const rsa512 = `-----BEGIN RSA PRIVATE KEY-----
MIIBOgIBAAJBALgiPZ1Z85p7fPhJ/1P1h5ywT/wo6lNUARHhuil0jkCNYElw0dP4
niFq6Z72z6mVXDM0xW47Q9FOY9v7DM5sUe8CAwEAAQJAIoTYxCzezDEmRm2o3haD
a85p0D3jX+e5o56LhcYB/PuyM2lKGKzEmY1nlE8NNdPBUxeY3V5YHuxnQypF2Hmi
QQIhAO6LtXlhCL/rY9G9WNNXuhudsfrwxwBfGpeeUMXYVqZ/AiEAxZtR9q8Nw1My
86xNu4p4dlM7HRET932cJO5UHfsN/JECIDp9LPje7utHxwjVOWNQfkRpLQuPX+va
ZcXJPprUCaL3AiEAxZFJHY5gAE4Kvz4iacNENWl5zNHqWKOpnfL6/w6nKUECIGdM
8NDUUkWKcKSOjXKAdCv93Zk0XichL3L5AjsMQ74X
-----END RSA PRIVATE KEY-----
`

func TestNewDKIMKeyErrors(t *testing.T) {
	t.Parallel()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	good := dkimKeys(t)[2].pem
	encryptedPKCS1 := []byte("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n-----END RSA PRIVATE KEY-----\n")
	tests := []struct {
		name, domain, selector string
		pem                    []byte
		want                   string // in the error
	}{
		{"empty", dkimDomain, dkimSelector, nil, "no PEM block"},
		{"not PEM", dkimDomain, dkimSelector, []byte("p=MIIBIjANBgkqhkiG9w0BAQEFAAOC"), "no PEM block"},
		{"certificate", dkimDomain, dkimSelector, pemBlock("CERTIFICATE", []byte{1, 2, 3}), `"CERTIFICATE" is not a private key`},
		{"public key", dkimDomain, dkimSelector, pemBlock("PUBLIC KEY", []byte{1, 2, 3}), `"PUBLIC KEY" is not a private key`},
		{"ECDSA PKCS#8", dkimDomain, dkimSelector, pkcs8(t, ec), "ecdsa.PrivateKey keys cannot sign DKIM"},
		{"ECDSA SEC1", dkimDomain, dkimSelector, pemBlock("EC PRIVATE KEY", sec1), "ECDSA keys cannot sign DKIM"},
		{"encrypted PKCS#8", dkimDomain, dkimSelector, pemBlock("ENCRYPTED PRIVATE KEY", []byte{1, 2, 3}), "encrypted"},
		{"encrypted PKCS#1", dkimDomain, dkimSelector, encryptedPKCS1, "encrypted"},
		{"OpenSSH", dkimDomain, dkimSelector, pemBlock("OPENSSH PRIVATE KEY", []byte{1, 2, 3}), "OpenSSH"},
		{"corrupt PKCS#8", dkimDomain, dkimSelector, pemBlock("PRIVATE KEY", []byte{1, 2, 3}), "PRIVATE KEY"},
		{"corrupt PKCS#1", dkimDomain, dkimSelector, pemBlock("RSA PRIVATE KEY", []byte{1, 2, 3}), "RSA PRIVATE KEY"},
		{"RSA-512", dkimDomain, dkimSelector, []byte(rsa512), "512 bits"},
		{"no domain", "", dkimSelector, good, "domain"},
		{"bad domain", "acme analytics.example", dkimSelector, good, "domain"},
		{"no selector", dkimDomain, "", good, "selector"},
		{"bad selector", dkimDomain, "tend;x=1", good, "selector"},
	}
	for _, tt := range tests {
		d, err := delivery.NewDKIM(tt.domain, tt.selector, tt.pem)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "dkim: ") {
			t.Errorf("%s: NewDKIM = %v, %v; want an error containing %q", tt.name, d, err, tt.want)
		}
	}
}

// BenchmarkDKIMSign signs a campaign message of about 10 KB (4 KB of HTML,
// its text part, quoted-printable) as the Sender does before SendRaw.
//
//	go test -run '^$' -bench BenchmarkDKIMSign ./internal/delivery/
func BenchmarkDKIMSign(b *testing.B) {
	keys := dkimKeys(b)
	for _, key := range []dkimKey{keys[1], keys[2]} {
		b.Run(key.name, func(b *testing.B) {
			d := newDKIM(b, key)
			raw := campaignMsg(b, strings.Repeat("Tip: schedule a weekly export so the whole team sees the numbers.\n", 60), benchHTML())
			b.SetBytes(int64(len(raw)))
			start := time.Now()
			for b.Loop() {
				if _, err := d.Sign(raw); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "µs/op")
		})
	}
}
