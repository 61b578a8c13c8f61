package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/delivery"
)

func TestLoadDefaults(t *testing.T) {
	cfg, err := Load(map[string]string{})
	if err != nil {
		t.Fatalf("defaults must validate: %v", err)
	}
	if cfg.DatabaseURL != "postgres://postgres@127.0.0.1:5432/tend?sslmode=disable" || cfg.HTTPAddr != ":8080" {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
	if len(cfg.Warnings()) == 0 {
		t.Fatal("the development secret must be warned about")
	}
	if nets, err := cfg.TrustedNets(); err != nil || len(nets) != 2 || nets[0].String() != "127.0.0.0/8" || nets[1].String() != "::1/128" {
		t.Fatalf("trusted proxies by default = %v, %v; want loopback only", nets, err)
	}
}

func TestLoadReportsEveryBadVariable(t *testing.T) {
	_, err := Load(map[string]string{
		"TEND_DATABASE_URL":       "mysql://x",
		"TEND_SECRET":             "short",
		"TEND_LOG_LEVEL":          "loud",
		"TEND_METRICS_ADDR":       "metrics",
		"TEND_INGEST_CONCURRENCY": "0",
		"TEND_EVENT_RETENTION":    "1h",
		"TEND_ROLLUP_RETENTION":   "720h",
		"TEND_TRUSTED_PROXIES":    "10.0.0.0/8,lb.internal",
	})
	if err == nil {
		t.Fatal("want an error")
	}
	for _, name := range []string{"TEND_DATABASE_URL", "TEND_SECRET", "TEND_LOG_LEVEL", "TEND_METRICS_ADDR", "TEND_INGEST_CONCURRENCY", "TEND_EVENT_RETENTION", "TEND_ROLLUP_RETENTION", "TEND_TRUSTED_PROXIES"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
}

func TestLoadRejectsUnparsable(t *testing.T) {
	if _, err := Load(map[string]string{"TEND_WORKER_CONCURRENCY": "many"}); err == nil || !strings.Contains(err.Error(), "TEND_WORKER_CONCURRENCY") {
		t.Fatalf("want an error naming the variable, got %v", err)
	}
}

func TestDKIMIsAllOrNothing(t *testing.T) {
	key := filepath.Join(t.TempDir(), "dkim.pem")
	if err := os.WriteFile(key, []byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(map[string]string{"TEND_DKIM_KEY_FILE": key, "TEND_DKIM_DOMAIN": "acme.example"})
	if err != nil {
		t.Fatalf("a key file and a domain must validate: %v", err)
	}
	if cfg.DKIMSelector != "tend" {
		t.Fatalf("selector = %q, want the default tend", cfg.DKIMSelector)
	}
	if cfg, err := Load(map[string]string{}); err != nil || cfg.DKIMKeyFile != "" || cfg.DKIMDomain != "" {
		t.Fatalf("DKIM must be off by default: %+v, %v", cfg, err)
	}
	tests := []struct {
		env  map[string]string
		want []string // variables the error must name
	}{
		{map[string]string{"TEND_DKIM_KEY_FILE": key}, []string{"TEND_DKIM_DOMAIN"}},
		{map[string]string{"TEND_DKIM_DOMAIN": "acme.example"}, []string{"TEND_DKIM_KEY_FILE"}},
		{map[string]string{"TEND_DKIM_KEY_FILE": key + ".missing", "TEND_DKIM_DOMAIN": "acme.example"}, []string{"TEND_DKIM_KEY_FILE"}},
		{map[string]string{"TEND_DKIM_KEY_FILE": t.TempDir(), "TEND_DKIM_DOMAIN": "acme.example"}, []string{"TEND_DKIM_KEY_FILE"}},
		{map[string]string{"TEND_DKIM_KEY_FILE": key, "TEND_DKIM_DOMAIN": "acme example"}, []string{"TEND_DKIM_DOMAIN"}},
		{map[string]string{"TEND_DKIM_KEY_FILE": key, "TEND_DKIM_DOMAIN": "-acme.example"}, []string{"TEND_DKIM_DOMAIN"}},
		{map[string]string{"TEND_DKIM_KEY_FILE": key, "TEND_DKIM_DOMAIN": "acme.example", "TEND_DKIM_SELECTOR": "s;x=1"}, []string{"TEND_DKIM_SELECTOR"}},
		{map[string]string{"TEND_DKIM_KEY_FILE": key, "TEND_DKIM_DOMAIN": "acme..example", "TEND_DKIM_SELECTOR": "a b"}, []string{"TEND_DKIM_DOMAIN", "TEND_DKIM_SELECTOR"}},
	}
	for _, tt := range tests {
		_, err := Load(tt.env)
		if err == nil {
			t.Errorf("%v: want an error", tt.env)
			continue
		}
		for _, name := range tt.want {
			if !strings.Contains(err.Error(), name) {
				t.Errorf("%v: the error does not name %s: %v", tt.env, name, err)
			}
		}
	}
}

// The send lease must outlast a hand-over to SMTP at the SMTP timeout: a
// shorter one would let the reaper make a message a live worker is still
// handing over uncertain.
func TestTheSendLeaseOutlastsAHandOver(t *testing.T) {
	cfg, err := Load(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if least := delivery.MinSendLease(cfg.SMTPTimeout); cfg.SendLease < least || least < delivery.MaxHandOver(cfg.SMTPTimeout) {
		t.Fatalf("the default lease %s, the least for the default SMTP timeout %s: %s", cfg.SendLease, cfg.SMTPTimeout, least)
	}
	for _, tt := range []struct {
		env map[string]string
		ok  bool
	}{
		{map[string]string{"TEND_SEND_LEASE": "10s"}, false},
		{map[string]string{"TEND_SEND_LEASE": (delivery.MinSendLease(15*time.Second) - time.Second).String()}, false},
		{map[string]string{"TEND_SEND_LEASE": delivery.MinSendLease(15 * time.Second).String()}, true},
		{map[string]string{"TEND_SMTP_TIMEOUT": "1m", "TEND_SEND_LEASE": "5m"}, false},
		{map[string]string{"TEND_SMTP_TIMEOUT": "2s", "TEND_SEND_LEASE": "1m"}, true},
	} {
		_, err := Load(tt.env)
		switch {
		case tt.ok && err != nil:
			t.Errorf("%v: %v", tt.env, err)
		case !tt.ok && (err == nil || !strings.Contains(err.Error(), "TEND_SEND_LEASE: want at least")):
			t.Errorf("%v: want an error saying how long the lease must be, got %v", tt.env, err)
		}
	}
	if _, err := Load(map[string]string{"TEND_SMTP_TIMEOUT": "100ms"}); err == nil || !strings.Contains(err.Error(), "TEND_SMTP_TIMEOUT") {
		t.Errorf("a 100ms SMTP timeout: want an error naming TEND_SMTP_TIMEOUT, got %v", err)
	}
}

// Rollups are kept 400 days unless told otherwise; 0 keeps them, and the
// shortest retention allowed is the one that changes no profile.
func TestRollupRetention(t *testing.T) {
	cfg, err := Load(map[string]string{})
	if err != nil || cfg.RollupRetention != 400*24*time.Hour {
		t.Fatalf("default rollup retention = %s, %v; want 400 days", cfg.RollupRetention, err)
	}
	for _, ok := range []string{"0", "2160h"} {
		if _, err := Load(map[string]string{"TEND_ROLLUP_RETENTION": ok}); err != nil {
			t.Errorf("TEND_ROLLUP_RETENTION=%s: %v", ok, err)
		}
	}
	if _, err := Load(map[string]string{"TEND_ROLLUP_RETENTION": "2159h"}); err == nil || !strings.Contains(err.Error(), "TEND_ROLLUP_RETENTION") {
		t.Fatalf("TEND_ROLLUP_RETENTION=2159h: want an error naming it, got %v", err)
	}
}
