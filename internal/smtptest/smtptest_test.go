package smtptest_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/tendhq/tend/internal/smtptest"
)

// send runs one SMTP transaction on c and returns the first error, with
// the step it happened at.
func send(c *smtp.Client, from, to, body string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "mail", err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return "rcpt", err
	}
	w, err := c.Data()
	if err != nil {
		return "data", err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return "write", err
	}
	if err := w.Close(); err != nil {
		return "end", err
	}
	return "", nil
}

func dial(t *testing.T, srv *smtptest.Server) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(srv.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func body(subject string) string {
	return "From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject + "\r\n\r\nhello\r\n"
}

func TestStoresMessages(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	if !strings.HasPrefix(srv.URL(), "smtp://127.0.0.1:") {
		t.Fatalf("URL = %q", srv.URL())
	}
	c := dial(t, srv)
	for i := range 3 {
		if at, err := send(c, "a@example.com", fmt.Sprintf("b%d@example.com", i), body(fmt.Sprint("hi ", i))); err != nil {
			t.Fatalf("send %d at %s: %v", i, at, err)
		}
	}
	if got := srv.Count(); got != 3 {
		t.Fatalf("Count = %d, want 3", got)
	}
	msgs := srv.Messages()
	if len(msgs) != 3 {
		t.Fatalf("len(Messages) = %d", len(msgs))
	}
	m := msgs[2]
	if m.From != "a@example.com" || len(m.To) != 1 || m.To[0] != "b2@example.com" {
		t.Fatalf("envelope = %q %q", m.From, m.To)
	}
	if got := m.Header.Get("Subject"); got != "hi 2" {
		t.Fatalf("Subject = %q", got)
	}
	if !strings.Contains(string(m.Data), "hello") {
		t.Fatalf("Data = %q", m.Data)
	}
	if got := srv.Connections(); got != 1 {
		t.Fatalf("Connections = %d, want 1", got)
	}
}

func TestCounterCounts(t *testing.T) {
	t.Parallel()
	srv := smtptest.StartCounter(t)
	if !strings.HasPrefix(srv.URL(), "smtp://127.0.0.1:") {
		t.Fatalf("URL = %q", srv.URL())
	}
	u, err := url.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.Dial(u.Host)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	// A body with a dot-stuffed line and a line longer than the server's
	// buffer: neither ends the message.
	long := strings.Repeat("x", 100<<10)
	for i := range 3 {
		if at, err := send(c, "a@example.com", "b@example.com", body(fmt.Sprint("n", i))+".\r\n"+long+"\r\n"); err != nil {
			t.Fatalf("send %d at %s: %v", i, at, err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("quit: %v", err)
	}
	if got := srv.Count(); got != 3 {
		t.Fatalf("Count = %d, want 3", got)
	}
	if !srv.WaitFor(3, time.Second) || srv.WaitFor(4, 50*time.Millisecond) {
		t.Fatal("WaitFor does not agree with Count")
	}
}

// TestCounterClose: Close drops open connections and returns once their
// handlers have.
func TestCounterClose(t *testing.T) {
	t.Parallel()
	srv := smtptest.StartCounter(t)
	u, _ := url.Parse(srv.URL())
	c, err := smtp.Dial(u.Host)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if err := c.Hello("client.example"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return with a connection open")
	}
	if err := c.Noop(); err == nil {
		t.Fatal("the connection still answers after Close")
	}
	if srv.Connections() != 1 {
		t.Fatalf("Connections = %d, want 1", srv.Connections())
	}
}

// The counter's options: PIPELINING left out of EHLO, and replies held back
// for the round trip.
func TestCounterOptions(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		opts       []smtptest.CounterOption
		pipelining bool
		wait       time.Duration
	}{
		{nil, true, 0},
		{[]smtptest.CounterOption{smtptest.WithoutPipelining(), smtptest.RoundTrip(30 * time.Millisecond)}, false, 30 * time.Millisecond},
	} {
		srv := smtptest.StartCounter(t, tt.opts...)
		u, _ := url.Parse(srv.URL())
		c, err := smtp.Dial(u.Host)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		start := time.Now()
		if err := c.Hello("client.example"); err != nil {
			t.Fatalf("EHLO: %v", err)
		}
		if took := time.Since(start); took < tt.wait {
			t.Errorf("EHLO answered after %v, want at least %v", took, tt.wait)
		}
		if ok, _ := c.Extension("PIPELINING"); ok != tt.pipelining {
			t.Errorf("PIPELINING offered: %v, want %v", ok, tt.pipelining)
		}
		if at, err := send(c, "a@example.com", "b@example.com", body("n")); err != nil {
			t.Fatalf("send at %s: %v", at, err)
		}
		_ = c.Close()
		if srv.Count() != 1 {
			t.Fatalf("Count = %d, want 1", srv.Count())
		}
	}
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	if srv.WaitFor(1, 10*time.Millisecond) {
		t.Fatal("WaitFor(1) = true with no message")
	}
	const n = 5
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := smtp.Dial(srv.Addr())
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			if at, err := send(c, "a@example.com", fmt.Sprintf("r%d@example.com", i), body("x")); err != nil {
				t.Errorf("send at %s: %v", at, err)
			}
		})
	}
	if !srv.WaitFor(n, 10*time.Second) {
		t.Fatalf("WaitFor(%d) timed out at %d", n, srv.Count())
	}
	wg.Wait()
}

func TestFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind    smtptest.FaultKind
		at      string
		code    int // 0: connection dropped
		stored  bool
		healthy bool // the connection still works afterwards
	}{
		{smtptest.TempFailMail, "mail", 451, false, true},
		{smtptest.TempFailRcpt, "rcpt", 451, false, true},
		{smtptest.TempFailData, "end", 451, false, true},
		{smtptest.RejectData, "end", 554, false, true},
		{smtptest.RejectRcpt, "rcpt", 550, false, true},
		{smtptest.DropAtMail, "mail", 0, false, false},
		{smtptest.DropAtRcpt, "rcpt", 0, false, false},
		{smtptest.DropAfterData, "end", 0, true, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.kind), func(t *testing.T) {
			t.Parallel()
			srv := smtptest.Start(t)
			srv.SetFault(smtptest.Fault{Kind: tt.kind})
			c := dial(t, srv)
			at, err := send(c, "a@example.com", "b@example.com", body("x"))
			if err == nil || at != tt.at {
				t.Fatalf("send failed at %q with %v, want a failure at %q", at, err, tt.at)
			}
			var se *smtp.SMTPError
			if tt.code != 0 {
				if !errors.As(err, &se) || se.Code != tt.code {
					t.Fatalf("err = %v, want SMTP %d", err, tt.code)
				}
			} else if errors.As(err, &se) {
				t.Fatalf("err = %v, want a dropped connection, not a reply", err)
			}
			if stored := srv.Count() == 1; stored != tt.stored {
				t.Fatalf("stored = %v, want %v", stored, tt.stored)
			}
			if tt.healthy {
				if err := c.Reset(); err != nil {
					t.Fatalf("RSET after the fault: %v", err)
				}
			}

			// Faults stay until changed; turning them off heals the server.
			srv.SetFault(smtptest.Fault{})
			c2 := dial(t, srv)
			if at, err := send(c2, "a@example.com", "b@example.com", body("y")); err != nil {
				t.Fatalf("send after clearing the fault failed at %s: %v", at, err)
			}
		})
	}
}

func TestFaultTimesAndMatch(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	c := dial(t, srv)

	srv.SetFault(smtptest.Fault{Kind: smtptest.RejectRcpt, Times: 2})
	for i, wantErr := range []bool{true, true, false} {
		_, err := send(c, "a@example.com", "b@example.com", body("x"))
		if (err != nil) != wantErr {
			t.Fatalf("send %d: err = %v, want error %v", i, err, wantErr)
		}
		_ = c.Reset()
	}

	srv.SetFault(smtptest.Fault{Kind: smtptest.TempFailData, Match: "bad"})
	for _, to := range []string{"good@example.com", "bad@example.com", "also-good@example.com", "bad2@example.com"} {
		_, err := send(c, "a@example.com", to, body(to))
		if wantErr := strings.HasPrefix(to, "bad"); (err != nil) != wantErr {
			t.Fatalf("send to %s: err = %v, want error %v", to, err, wantErr)
		}
	}
	var got []string
	for _, m := range srv.Messages() {
		got = append(got, m.To[0])
	}
	if want := "b@example.com good@example.com also-good@example.com"; strings.Join(got, " ") != want {
		t.Fatalf("stored = %v, want %s", got, want)
	}

	// At MAIL FROM, Match is tested against the sender.
	srv.SetFault(smtptest.Fault{Kind: smtptest.TempFailMail, Match: "noisy"})
	if at, err := send(c, "noisy@example.com", "x@example.com", body("x")); at != "mail" || err == nil {
		t.Fatalf("send from noisy: at %q err %v, want a MAIL failure", at, err)
	}
	if _, err := send(c, "quiet@example.com", "x@example.com", body("x")); err != nil {
		t.Fatalf("send from quiet: %v", err)
	}
}

func TestDropConnections(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	c := dial(t, srv)
	if _, err := send(c, "a@example.com", "b@example.com", body("x")); err != nil {
		t.Fatal(err)
	}
	srv.DropConnections()
	if err := c.Noop(); err == nil {
		t.Fatal("NOOP on a dropped connection succeeded")
	}
	c2 := dial(t, srv)
	if _, err := send(c2, "a@example.com", "b@example.com", body("y")); err != nil {
		t.Fatalf("send on a new connection: %v", err)
	}
	if srv.Count() != 2 || srv.Connections() != 2 {
		t.Fatalf("Count = %d, Connections = %d", srv.Count(), srv.Connections())
	}
}

func TestDelay(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	const delay = 200 * time.Millisecond
	srv.SetFault(smtptest.Fault{Delay: delay, Times: 1})
	c := dial(t, srv)
	start := time.Now()
	if _, err := send(c, "a@example.com", "b@example.com", body("slow")); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < delay {
		t.Fatalf("delayed send took %v, want at least %v", took, delay)
	}
	start = time.Now()
	if _, err := send(c, "a@example.com", "b@example.com", body("fast")); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= delay {
		t.Fatalf("second send took %v: the Times: 1 delay applied twice", took)
	}
}

func TestCloseCutsDelayShort(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	srv.SetFault(smtptest.Fault{Delay: time.Hour})
	c := dial(t, srv)
	errc := make(chan error, 1)
	go func() {
		_, err := send(c, "a@example.com", "b@example.com", body("x"))
		errc <- err
	}()
	// Whether Close lands before or while the reply is held, the send must
	// end now rather than in an hour.
	srv.Close()
	select {
	case <-errc:
	case <-time.After(10 * time.Second):
		t.Fatal("send still blocked after Close")
	}
}

func TestAuthAndTLS(t *testing.T) {
	t.Parallel()
	insecure := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // self-signed test certificate

	t.Run("auth", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.Start(t, smtptest.Auth("u", "p"))
		if !strings.HasPrefix(srv.URL(), "smtp://u:p@127.0.0.1:") {
			t.Fatalf("URL = %q", srv.URL())
		}
		c := dial(t, srv)
		if _, err := send(c, "a@example.com", "b@example.com", body("x")); err == nil {
			t.Fatal("send without AUTH succeeded")
		}
		if err := c.Auth(sasl.NewPlainClient("", "u", "wrong")); err == nil {
			t.Fatal("AUTH with a wrong password succeeded")
		}
		c = dial(t, srv)
		if err := c.Auth(sasl.NewLoginClient("u", "p")); err != nil {
			t.Fatalf("AUTH LOGIN: %v", err)
		}
		if at, err := send(c, "a@example.com", "b@example.com", body("x")); err != nil {
			t.Fatalf("send after AUTH at %s: %v", at, err)
		}
	})
	t.Run("starttls", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.Start(t, smtptest.StartTLS())
		if !strings.HasPrefix(srv.URL(), "smtp+starttls://") {
			t.Fatalf("URL = %q", srv.URL())
		}
		c, err := smtp.DialStartTLS(srv.Addr(), insecure)
		if err != nil {
			t.Fatalf("STARTTLS: %v", err)
		}
		defer c.Close()
		if at, err := send(c, "a@example.com", "b@example.com", body("x")); err != nil {
			t.Fatalf("send at %s: %v", at, err)
		}
	})
	t.Run("implicit", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.Start(t, smtptest.ImplicitTLS())
		if !strings.HasPrefix(srv.URL(), "smtps://") {
			t.Fatalf("URL = %q", srv.URL())
		}
		c, err := smtp.DialTLS(srv.Addr(), insecure)
		if err != nil {
			t.Fatalf("TLS: %v", err)
		}
		defer c.Close()
		if at, err := send(c, "a@example.com", "b@example.com", body("x")); err != nil {
			t.Fatalf("send at %s: %v", at, err)
		}
	})
}
