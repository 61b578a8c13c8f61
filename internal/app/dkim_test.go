package app_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/tendhq/tend/internal/app"
	"github.com/tendhq/tend/internal/config"
	"github.com/tendhq/tend/internal/testsvc"
)

// With TEND_DKIM_* set, campaign mail leaves signed, and what the SMTP
// server received verifies against the published key.
func TestCampaignMailIsDKIMSigned(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "dkim.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	record := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(spki)

	tn := start(t, map[string]string{
		"TEND_DKIM_KEY_FILE": keyFile,
		"TEND_DKIM_DOMAIN":   "acme-analytics.example",
		"TEND_DKIM_SELECTOR": "mail2026",
	})
	tn.setup()
	tn.risk("high")
	if !tn.smtp.WaitFor(1, 15*time.Second) {
		t.Fatalf("no email; messages: %v", tn.messages("hank"))
	}
	m := tn.smtp.Messages()[0]
	if m.From != "dana@acme-analytics.example" || !slices.Equal(m.To, []string{"hank@globex.example"}) {
		t.Fatalf("envelope %s → %v", m.From, m.To)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if name != "mail2026._domainkey.acme-analytics.example" {
				t.Errorf("looked up %q", name)
			}
			return []string{record}, nil
		},
	})
	if err != nil || len(vs) != 1 {
		t.Fatalf("verify: %v, %d signatures", err, len(vs))
	}
	if vs[0].Err != nil {
		t.Fatalf("the campaign mail does not verify: %v\n%s", vs[0].Err, m.Data)
	}
	for _, want := range []string{"from", "subject", "list-unsubscribe", "list-unsubscribe-post", "reply-to", "message-id"} {
		if !slices.Contains(vs[0].HeaderKeys, want) {
			t.Errorf("h= lacks %s: %v", want, vs[0].HeaderKeys)
		}
	}
	tn.eventually("step one recorded as sent", 10*time.Second, func() bool { return tn.status("hank", "checkin") == "sent" })
}

// A key file that is not a usable key stops the process at start, naming
// the variable.
func TestBadDKIMKeyStopsStart(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	rd := testsvc.NewRedis(t)
	keyFile := filepath.Join(t.TempDir(), "dkim.pem")
	if err := os.WriteFile(keyFile, []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI not a private key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(map[string]string{
		"TEND_DATABASE_URL":  db.URL,
		"TEND_REDIS_URL":     rd.URL,
		"TEND_DKIM_KEY_FILE": keyFile,
		"TEND_DKIM_DOMAIN":   "acme-analytics.example",
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		a.Close()
		t.Fatal("want an error")
	}
	if !strings.Contains(err.Error(), "TEND_DKIM_KEY_FILE") || !strings.Contains(err.Error(), "no PEM block") {
		t.Fatalf("error = %v, want one naming TEND_DKIM_KEY_FILE and the problem", err)
	}
}
