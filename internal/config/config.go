// Package config reads Tend's configuration from TEND_* environment variables,
// fills in working local defaults and validates the result once, at start.
// The validated Config is passed down explicitly; nothing reads the environment
// after Load.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/delivery"
)

// DevSecret is the default signing secret. It is fine on a laptop and wrong
// anywhere else; Load reports it in Warnings.
const DevSecret = "tend-development-secret-change-me"

// Config is the whole configuration of a Tend process.
type Config struct {
	DatabaseURL string `env:"TEND_DATABASE_URL" envDefault:"postgres://postgres@127.0.0.1:5432/tend?sslmode=disable"`
	RedisURL    string `env:"TEND_REDIS_URL" envDefault:"redis://127.0.0.1:6379/0"`
	SMTPURL     string `env:"TEND_SMTP_URL" envDefault:"smtp://127.0.0.1:1025"`
	HTTPAddr    string `env:"TEND_HTTP_ADDR" envDefault:":8080"`
	// MetricsAddr, when set, is where `tend worker` serves /metrics and
	// /healthz (the API serves them on HTTPAddr).
	MetricsAddr   string `env:"TEND_METRICS_ADDR"`
	PublicURL     string `env:"TEND_PUBLIC_URL" envDefault:"http://localhost:8080"`
	Secret        string `env:"TEND_SECRET" envDefault:"tend-development-secret-change-me"`
	WebhookSecret string `env:"TEND_WEBHOOK_SECRET" envDefault:"tend-development-webhook-secret"`

	// TeamSender is the From of mail not signed by a CSM.
	TeamSender string `env:"TEND_TEAM_SENDER" envDefault:"Customer Success <success@tend.localhost>"`
	// SendingDomain, when set, is the only domain mail is sent From; CSM
	// addresses outside it go to Reply-To under the team address.
	SendingDomain string `env:"TEND_SENDING_DOMAIN"`
	// InboundDomain, when set, routes replies to CSM mail through the reply webhook.
	InboundDomain string `env:"TEND_INBOUND_DOMAIN"`
	// DKIMKeyFile, when set, is the PEM private key (RSA or Ed25519) that
	// signs campaign mail as DKIMDomain, whose DNS publishes the public key
	// at DKIMSelector._domainkey.DKIMDomain.
	DKIMKeyFile  string `env:"TEND_DKIM_KEY_FILE"`
	DKIMDomain   string `env:"TEND_DKIM_DOMAIN"`
	DKIMSelector string `env:"TEND_DKIM_SELECTOR" envDefault:"tend"`
	// PostalAddress is printed in every campaign email (CAN-SPAM).
	PostalAddress string `env:"TEND_POSTAL_ADDRESS" envDefault:"Tend demo, 1 Example Street, Springfield"`
	// SMTPConnections is the number of reused SMTP connections per process.
	// Each round of a batch's hand-over is one durable commit marking one
	// message per connection the batch holds, so a process sends at most
	// about SMTPConnections / (commit + SMTP round trip) messages a second,
	// and a crash can leave at most this many messages uncertain. 32
	// reached 5,336–5,851 msgs/s on the 2-core benchmark machine, where 8
	// stayed near 4,000, waiting on commits (see README).
	SMTPConnections int `env:"TEND_SMTP_CONNECTIONS" envDefault:"32"`
	// SMTPTimeout bounds each step of an SMTP connection's dial, each
	// message's SMTP transaction, and each NOOP or RSET.
	SMTPTimeout time.Duration `env:"TEND_SMTP_TIMEOUT" envDefault:"15s"`
	// SendLease is how long a worker may hold a message it is sending
	// before it is presumed dead (claimed messages are released, the one
	// being handed over becomes uncertain). At least
	// delivery.MinSendLease(SMTPTimeout), so that a live worker's is not.
	SendLease time.Duration `env:"TEND_SEND_LEASE" envDefault:"5m"`
	// CapPerContact and CapPerAccount limit messages (every campaign and
	// channel together) per contact and per account in CapWindow; 0 turns a
	// cap off.
	CapPerContact int           `env:"TEND_CAP_PER_CONTACT" envDefault:"3"`
	CapPerAccount int           `env:"TEND_CAP_PER_ACCOUNT" envDefault:"5"`
	CapWindow     time.Duration `env:"TEND_CAP_WINDOW" envDefault:"168h"`
	// MaxDelay is how late a message held back (by a hold) may get before it
	// is skipped with a reason.
	MaxDelay time.Duration `env:"TEND_MAX_DELAY" envDefault:"72h"`
	// DefaultTimezone applies to contacts and accounts without one.
	DefaultTimezone string `env:"TEND_DEFAULT_TIMEZONE" envDefault:"UTC"`

	// DemoClock keeps the clock's offset in PostgreSQL so `tend clock advance` works.
	DemoClock bool `env:"TEND_DEMO_CLOCK" envDefault:"false"`
	// MigrateOnStart runs pending migrations (under an advisory lock) when serve, worker or all start.
	MigrateOnStart bool `env:"TEND_MIGRATE_ON_START" envDefault:"true"`

	LogLevel  string `env:"TEND_LOG_LEVEL" envDefault:"info"`
	LogFormat string `env:"TEND_LOG_FORMAT" envDefault:"text"`

	// BodyLimit is the largest request body accepted, in bytes (413 above it).
	BodyLimit int64 `env:"TEND_BODY_LIMIT" envDefault:"10485760"`
	// RateLimit is the sustained requests per second allowed per API key; RateBurst the burst.
	RateLimit float64 `env:"TEND_RATE_LIMIT" envDefault:"200"`
	RateBurst int     `env:"TEND_RATE_BURST" envDefault:"400"`
	// TrustedProxies are the networks (CIDRs) of the reverse proxies in
	// front of the API: a request from one of them is taken to come from
	// the address it names in X-Forwarded-For (tracking hits record it).
	// From anywhere else the header is ignored, so that a client cannot
	// claim another address.
	TrustedProxies []string `env:"TEND_TRUSTED_PROXIES" envDefault:"127.0.0.0/8,::1/128" envSeparator:","`
	// IngestConcurrency is how many event batches an API process writes to
	// PostgreSQL at once; more wait their turn (account.IngestConcurrency).
	IngestConcurrency int `env:"TEND_INGEST_CONCURRENCY" envDefault:"2"`
	// EventRetention is how long raw usage events are kept (0: for ever).
	// Rollups, which profiles read, are kept for RollupRetention.
	EventRetention time.Duration `env:"TEND_EVENT_RETENTION" envDefault:"2160h"`
	// RollupRetention is how long daily usage rollups and user activity
	// are kept (0: for ever; else at least account.MinRollupRetention, so
	// that no profile changes): 400 days by default.
	RollupRetention time.Duration `env:"TEND_ROLLUP_RETENTION" envDefault:"9600h"`

	// WorkerConcurrency is the number of asynq tasks a worker process runs at once.
	WorkerConcurrency int `env:"TEND_WORKER_CONCURRENCY" envDefault:"8"`
	// FullPassInterval is how often every account is re-evaluated against
	// every segment (catching changes due to time alone).
	FullPassInterval time.Duration `env:"TEND_FULL_PASS_INTERVAL" envDefault:"5m"`
	// SweepInterval is how often the scheduler re-sends signals Redis may have lost.
	SweepInterval time.Duration `env:"TEND_SWEEP_INTERVAL" envDefault:"2s"`
	// ShutdownTimeout bounds graceful shutdown.
	ShutdownTimeout time.Duration `env:"TEND_SHUTDOWN_TIMEOUT" envDefault:"25s"`
}

// Load reads the environment (or the given map, when not nil) and validates.
func Load(environ map[string]string) (Config, error) {
	var cfg Config
	opts := env.Options{}
	if environ != nil {
		opts.Environment = environ
	}
	if err := env.ParseWithOptions(&cfg, opts); err != nil {
		return Config{}, describeParseError(err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks every field and reports all problems at once, each saying
// which variable to fix and how.
func (c Config) Validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}
	if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" || strings.Trim(u.Path, "/") == "" {
		bad("TEND_DATABASE_URL", "want postgres://user@host:port/dbname?sslmode=disable, got %q", c.DatabaseURL)
	}
	if u, err := url.Parse(c.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
		bad("TEND_REDIS_URL", "want redis://host:port/db, got %q", c.RedisURL)
	}
	if u, err := url.Parse(c.SMTPURL); err != nil || (u.Scheme != "smtp" && u.Scheme != "smtps" && u.Scheme != "smtp+starttls") || u.Host == "" {
		bad("TEND_SMTP_URL", "want smtp://[user:pass@]host:port (or smtps://, smtp+starttls://), got %q", c.SMTPURL)
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		bad("TEND_HTTP_ADDR", "want host:port or :port, got %q", c.HTTPAddr)
	}
	if _, _, err := net.SplitHostPort(c.MetricsAddr); c.MetricsAddr != "" && err != nil {
		bad("TEND_METRICS_ADDR", "want host:port or :port (or nothing: no metrics listener for a worker), got %q", c.MetricsAddr)
	}
	if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("TEND_PUBLIC_URL", "want the absolute http(s) URL users reach the API at, got %q", c.PublicURL)
	}
	if _, err := c.TrustedNets(); err != nil {
		bad("TEND_TRUSTED_PROXIES", "%v", err)
	}
	if len(c.Secret) < 16 {
		bad("TEND_SECRET", "must be at least 16 characters (use `openssl rand -hex 32`)")
	}
	if len(c.WebhookSecret) < 16 {
		bad("TEND_WEBHOOK_SECRET", "must be at least 16 characters")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("TEND_LOG_LEVEL", "want debug, info, warn or error, got %q", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("TEND_LOG_FORMAT", "want text or json, got %q", c.LogFormat)
	}
	if c.BodyLimit < 1024 {
		bad("TEND_BODY_LIMIT", "want at least 1024 bytes, got %d", c.BodyLimit)
	}
	if c.RateLimit <= 0 || c.RateBurst < 1 {
		bad("TEND_RATE_LIMIT/TEND_RATE_BURST", "want a positive rate and a burst of at least 1")
	}
	if c.EventRetention != 0 && c.EventRetention < 24*time.Hour {
		bad("TEND_EVENT_RETENTION", "want 0 (keep raw events) or at least 24h, got %s", c.EventRetention)
	}
	if c.RollupRetention != 0 && c.RollupRetention < account.MinRollupRetention {
		bad("TEND_ROLLUP_RETENTION", "want 0 (keep rollups) or at least %s (a 60-day health backfill and the 30-day usage windows), got %s",
			account.MinRollupRetention, c.RollupRetention)
	}
	if c.IngestConcurrency < 1 {
		bad("TEND_INGEST_CONCURRENCY", "want at least 1, got %d", c.IngestConcurrency)
	}
	if c.WorkerConcurrency < 1 {
		bad("TEND_WORKER_CONCURRENCY", "want at least 1, got %d", c.WorkerConcurrency)
	}
	if _, err := mail.ParseAddress(c.TeamSender); err != nil {
		bad("TEND_TEAM_SENDER", "want an address such as \"Acme Success <success@acme.example>\", got %q", c.TeamSender)
	}
	if c.SMTPConnections < 1 || c.SMTPConnections > 100 {
		bad("TEND_SMTP_CONNECTIONS", "want 1 to 100, got %d", c.SMTPConnections)
	}
	if c.CapPerContact < 0 || c.CapPerAccount < 0 {
		bad("TEND_CAP_PER_CONTACT/TEND_CAP_PER_ACCOUNT", "want 0 (off) or a positive number")
	}
	if c.CapWindow < time.Hour {
		bad("TEND_CAP_WINDOW", "want a duration of at least 1h, such as 168h")
	}
	if c.MaxDelay < time.Minute {
		bad("TEND_MAX_DELAY", "want a duration of at least 1m, such as 72h")
	}
	if c.SMTPTimeout < time.Second {
		bad("TEND_SMTP_TIMEOUT", "want a duration of at least 1s, such as 15s")
	} else if least := delivery.MinSendLease(c.SMTPTimeout); c.SendLease < least {
		bad("TEND_SEND_LEASE", "want at least %s with TEND_SMTP_TIMEOUT=%s, got %s: a message's hand-over to SMTP, with its retry "+
			"on a stale connection and the commits around it, can take that long, and a message still being handed over "+
			"when its lease ends is made uncertain", least, c.SMTPTimeout, c.SendLease)
	}
	if _, err := time.LoadLocation(c.DefaultTimezone); err != nil || c.DefaultTimezone == "" {
		bad("TEND_DEFAULT_TIMEZONE", "want an IANA time zone such as Europe/Paris, got %q", c.DefaultTimezone)
	}
	if c.DKIMKeyFile != "" || c.DKIMDomain != "" {
		// All or nothing; the key itself is read when the app is wired.
		if c.DKIMKeyFile == "" {
			bad("TEND_DKIM_KEY_FILE", "required with TEND_DKIM_DOMAIN: the path to the PEM private key that signs mail")
		} else if st, err := os.Stat(c.DKIMKeyFile); err != nil || !st.Mode().IsRegular() {
			bad("TEND_DKIM_KEY_FILE", "want a readable PEM private key file, got %q", c.DKIMKeyFile)
		}
		if c.DKIMDomain == "" {
			bad("TEND_DKIM_DOMAIN", "required with TEND_DKIM_KEY_FILE: the domain that signs (d=), such as acme.example")
		} else if !dnsName(c.DKIMDomain) {
			bad("TEND_DKIM_DOMAIN", "want a domain name such as acme.example, got %q", c.DKIMDomain)
		}
		if !dnsName(c.DKIMSelector) {
			bad("TEND_DKIM_SELECTOR", "want a DNS label such as tend (the key is at SELECTOR._domainkey.DOMAIN), got %q", c.DKIMSelector)
		}
	}
	if strings.TrimSpace(c.PostalAddress) == "" {
		bad("TEND_POSTAL_ADDRESS", "campaign email must carry a postal address (CAN-SPAM)")
	}
	if c.FullPassInterval < time.Second {
		bad("TEND_FULL_PASS_INTERVAL", "want a duration of at least 1s, such as 5m")
	}
	if c.SweepInterval < 100*time.Millisecond {
		bad("TEND_SWEEP_INTERVAL", "want a duration of at least 100ms, such as 2s")
	}
	if c.ShutdownTimeout <= 0 {
		bad("TEND_SHUTDOWN_TIMEOUT", "want a positive duration such as 25s")
	}
	if len(errs) > 0 {
		return fmt.Errorf("config: fix these environment variables:\n  %w", joinLines(errs))
	}
	return nil
}

// dnsName reports whether s is a DNS name: dot-separated labels of letters,
// digits, '-' (not at either end) and '_'.
func dnsName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// TrustedNets parses TrustedProxies.
func (c Config) TrustedNets() ([]*net.IPNet, error) {
	var nets []*net.IPNet
	for _, s := range c.TrustedProxies {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("want comma-separated CIDRs such as 10.0.0.0/8, got %q", s)
		}
		nets = append(nets, n)
	}
	return nets, nil
}

// Warnings lists settings that work but should not reach production.
func (c Config) Warnings() []string {
	var w []string
	if c.Secret == DevSecret {
		w = append(w, "TEND_SECRET is the development default: set a random secret before real use")
	}
	if c.PostalAddress == "Tend demo, 1 Example Street, Springfield" {
		w = append(w, "TEND_POSTAL_ADDRESS is the demo default: set your company's postal address before sending real mail")
	}
	if c.DemoClock {
		w = append(w, "TEND_DEMO_CLOCK is on: time can be moved with `tend clock advance`")
	}
	return w
}

// describeParseError names the environment variable behind each value the
// library could not parse, instead of the Go field name.
func describeParseError(err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return fmt.Errorf("config: %w", err)
	}
	t := reflect.TypeOf(Config{})
	var errs []error
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			if f, ok := t.FieldByName(pe.Name); ok {
				errs = append(errs, fmt.Errorf("%s: cannot read a %s from it: %w", f.Tag.Get("env"), pe.Type, pe.Err))
				continue
			}
		}
		errs = append(errs, e)
	}
	return fmt.Errorf("config: fix these environment variables:\n  %w", joinLines(errs))
}

func joinLines(errs []error) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "\n  "))
}
