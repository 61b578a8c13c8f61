package delivery_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wneessen/go-mail"

	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/smtptest"
)

func newMailer(t testing.TB, url string, opts delivery.MailerOptions) *delivery.Mailer {
	t.Helper()
	m, err := delivery.NewMailer(url, opts)
	if err != nil {
		t.Fatalf("NewMailer: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func newMsg(t testing.TB, to, subject, html string) *mail.Msg {
	t.Helper()
	m := mail.NewMsg()
	if err := m.From("Dana CSM <dana@vendor.example>"); err != nil {
		t.Fatal(err)
	}
	if err := m.To(to); err != nil {
		t.Fatal(err)
	}
	m.Subject(subject)
	m.SetBodyString(mail.TypeTextHTML, html)
	return m
}

// sendRaw sends msg through SendRaw: serialised by go-mail, with its
// envelope.
func sendRaw(t *testing.T, m *delivery.Mailer, msg *mail.Msg) error {
	t.Helper()
	var buf bytes.Buffer
	if _, err := msg.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	from, err := msg.GetSender(false)
	if err != nil {
		t.Fatal(err)
	}
	to, err := msg.GetRecipients()
	if err != nil {
		t.Fatal(err)
	}
	return m.SendRaw(t.Context(), from, to, buf.Bytes())
}

func sendErr(t *testing.T, err error) *delivery.SendError {
	t.Helper()
	var se *delivery.SendError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v (%T), want a *delivery.SendError", err, err)
	}
	return se
}

func TestMailerReusesConnections(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	m := newMailer(t, srv.URL(), delivery.MailerOptions{Connections: 8})

	// One sender at a time needs one connection, however many are allowed.
	for i := range 10 {
		if err := m.Send(t.Context(), newMsg(t, fmt.Sprintf("c%d@customer.example", i), "Hello", "<p>hi</p>")); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if got := srv.Connections(); got != 1 {
		t.Fatalf("sequential sends opened %d connections, want 1", got)
	}
	msgs := srv.Messages()
	if len(msgs) != 10 {
		t.Fatalf("server has %d messages, want 10", len(msgs))
	}
	if got := msgs[3]; got.From != "dana@vendor.example" || got.To[0] != "c3@customer.example" ||
		got.Header.Get("Subject") != "Hello" || !strings.Contains(string(got.Data), "<p>hi</p>") {
		t.Fatalf("message 3 = %+v", got)
	}
}

func TestMailerParallelSendsStayWithinConnections(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	const conns, senders, each = 3, 12, 15
	m := newMailer(t, srv.URL(), delivery.MailerOptions{Connections: conns})

	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				to := fmt.Sprintf("s%d-%d@customer.example", s, i)
				if err := m.Send(t.Context(), newMsg(t, to, "Hi", "<p>x</p>")); err != nil {
					t.Errorf("send %s: %v", to, err)
				}
			}
		})
	}
	wg.Wait()
	if got := srv.Count(); got != senders*each {
		t.Fatalf("server accepted %d, want %d", got, senders*each)
	}
	if got := srv.Connections(); got < 1 || got > conns {
		t.Fatalf("server saw %d connections, want 1..%d", got, conns)
	}
	seen := map[string]bool{}
	for _, msg := range srv.Messages() {
		if seen[msg.To[0]] {
			t.Fatalf("%s received twice", msg.To[0])
		}
		seen[msg.To[0]] = true
	}
}

func TestMailerFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		fault      smtptest.FaultKind
		times      int // how many sends the fault hits
		stage      delivery.Stage
		temporary  bool
		code       int
		command    string
		stored     bool // the server kept the message despite the error
		hardBounce bool
		conns      int // connections the server saw in all
	}{
		{smtptest.TempFailMail, 1, delivery.StageBeforeData, true, 451, delivery.CommandMail, false, false, 1},
		{smtptest.TempFailRcpt, 1, delivery.StageBeforeData, true, 451, delivery.CommandRcpt, false, false, 1},
		{smtptest.RejectRcpt, 1, delivery.StageBeforeData, false, 550, delivery.CommandRcpt, false, true, 1},
		{smtptest.TempFailData, 1, delivery.StageRefused, true, 451, delivery.CommandDataEnd, false, false, 1},
		{smtptest.RejectData, 1, delivery.StageRefused, false, 554, delivery.CommandDataEnd, false, false, 1},
		// A pooled connection dropped at MAIL FROM is retried once on a new
		// one (TestMailerRetriesStalePooledConnection); drop that one too.
		{smtptest.DropAtMail, 2, delivery.StageBeforeData, true, 0, delivery.CommandMail, false, false, 3},
		{smtptest.DropAtRcpt, 1, delivery.StageBeforeData, true, 0, delivery.CommandRcpt, false, false, 2},
		{smtptest.DropAfterData, 1, delivery.StageAfterData, false, 0, delivery.CommandDataEnd, true, false, 2},
	}
	// The same faults through Send and through SendRaw: one classification.
	vias := []struct {
		name string
		send func(t *testing.T, m *delivery.Mailer, msg *mail.Msg) error
	}{
		{"Send", func(t *testing.T, m *delivery.Mailer, msg *mail.Msg) error { return m.Send(t.Context(), msg) }},
		{"SendRaw", sendRaw},
	}
	for _, via := range vias {
		for _, tt := range tests {
			t.Run(via.name+"/"+tt.fault.String(), func(t *testing.T) {
				t.Parallel()
				srv := smtptest.Start(t)
				m := newMailer(t, srv.URL(), delivery.MailerOptions{Connections: 2})
				// Warm one connection so the fault hits a pooled one.
				if err := via.send(t, m, newMsg(t, "warm@customer.example", "warm", "<p>w</p>")); err != nil {
					t.Fatalf("warm-up send: %v", err)
				}

				srv.SetFault(smtptest.Fault{Kind: tt.fault, Times: tt.times})
				err := via.send(t, m, newMsg(t, "target@customer.example", "target", "<p>t</p>"))
				se := sendErr(t, err)
				if se.Stage != tt.stage || se.Temporary != tt.temporary || se.Code != tt.code || se.Command != tt.command ||
					(se.Code != 0) != (se.Enhanced != "") {
					t.Fatalf("got stage %v temporary %v code %d command %q, want %v %v %d %q (%v)",
						se.Stage, se.Temporary, se.Code, se.Command, tt.stage, tt.temporary, tt.code, tt.command, err)
				}
				if got := delivery.IsHardBounce(err); got != tt.hardBounce {
					t.Fatalf("IsHardBounce = %v, want %v", got, tt.hardBounce)
				}
				if got, want := delivery.IsUncertain(err), tt.stage == delivery.StageAfterData; got != want {
					t.Fatalf("IsUncertain = %v, want %v", got, want)
				}
				if via.name == "Send" && !errors.As(err, new(*mail.SendError)) {
					t.Fatalf("go-mail's SendError is not in the chain of %v", err)
				}
				if via.name == "SendRaw" && tt.code != 0 && !errors.As(err, new(*textproto.Error)) {
					t.Fatalf("the server's reply is not in the chain of %v", err)
				}
				targets := 0
				for _, msg := range srv.Messages() {
					if msg.To[0] == "target@customer.example" {
						targets++
					}
				}
				if stored := targets == 1; stored != tt.stored {
					t.Fatalf("server stored the target: %v, want %v", stored, tt.stored)
				}

				// The pool recovers: the next send works, on the same connection
				// after a reply, on a new one after a drop.
				if err := via.send(t, m, newMsg(t, "next@customer.example", "next", "<p>n</p>")); err != nil {
					t.Fatalf("send after the fault: %v", err)
				}
				if got := srv.Connections(); got != tt.conns {
					t.Fatalf("server saw %d connections, want %d", got, tt.conns)
				}
			})
		}
	}
}

// A pooled connection the server closed while idle fails at MAIL FROM with
// no reply: nothing of the message reached the server, so Send tries once
// more on a new connection. A connection just dialled is not retried.
func TestMailerRetriesStalePooledConnection(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	m := newMailer(t, srv.URL(), delivery.MailerOptions{Connections: 2})
	if err := m.Send(t.Context(), newMsg(t, "warm@customer.example", "warm", "<p>w</p>")); err != nil {
		t.Fatal(err)
	}

	srv.DropConnections() // a server restart
	if err := m.Send(t.Context(), newMsg(t, "after-restart@customer.example", "Hi", "<p>x</p>")); err != nil {
		t.Fatalf("send over a stale pooled connection: %v", err)
	}
	if srv.Count() != 2 || srv.Connections() != 2 {
		t.Fatalf("accepted %d over %d connections, want 2 over 2", srv.Count(), srv.Connections())
	}

	srv.DropConnections()
	srv.SetFault(smtptest.Fault{Kind: smtptest.DropAtMail, Times: 1})
	// The pooled connection is stale; its replacement is dropped at MAIL.
	err := m.Send(t.Context(), newMsg(t, "twice@customer.example", "Hi", "<p>x</p>"))
	if se := sendErr(t, err); se.Stage != delivery.StageBeforeData || !se.Temporary || se.Command != delivery.CommandMail {
		t.Fatalf("got %v", err)
	}
	if srv.Count() != 2 || srv.Connections() != 3 {
		t.Fatalf("accepted %d over %d connections, want 2 over 3", srv.Count(), srv.Connections())
	}
}

func TestIsHardBounce(t *testing.T) {
	t.Parallel()
	rcpt := func(code int, enhanced string) error {
		return fmt.Errorf("wrapped: %w", &delivery.SendError{
			Stage: delivery.StageBeforeData, Code: code, Enhanced: enhanced, Command: delivery.CommandRcpt,
		})
	}
	tests := []struct {
		err  error
		want bool
	}{
		{rcpt(550, "5.1.1"), true},  // user unknown
		{rcpt(550, ""), true},       // no enhanced code: the basic code decides
		{rcpt(553, ""), true},       // mailbox name not allowed
		{rcpt(550, "5.2.1"), true},  // mailbox disabled
		{rcpt(552, "5.2.2"), false}, // mailbox full
		{rcpt(554, "5.7.1"), false}, // relay access denied: our problem, not the address's
		{rcpt(554, ""), false},
		{rcpt(451, "4.1.1"), false}, // temporary
		{&delivery.SendError{Code: 550, Enhanced: "5.1.1", Command: delivery.CommandMail}, false},
		{errors.New("550 5.1.1 not a SendError"), false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := delivery.IsHardBounce(tt.err); got != tt.want {
			t.Errorf("IsHardBounce(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestMailerFaultTargetsOneRecipient(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	srv.SetFault(smtptest.Fault{Kind: smtptest.RejectRcpt, Match: "bounce"})
	m := newMailer(t, srv.URL(), delivery.MailerOptions{Connections: 4})

	var wg sync.WaitGroup
	var bounced atomic.Int32
	for i := range 20 {
		wg.Go(func() {
			to := fmt.Sprintf("ok%d@customer.example", i)
			if i%5 == 0 {
				to = fmt.Sprintf("bounce%d@customer.example", i)
			}
			err := m.Send(t.Context(), newMsg(t, to, "Hi", "<p>x</p>"))
			switch {
			case strings.HasPrefix(to, "bounce") && delivery.IsHardBounce(err):
				bounced.Add(1)
			case err != nil:
				t.Errorf("send to %s: %v", to, err)
			}
		})
	}
	wg.Wait()
	if bounced.Load() != 4 || srv.Count() != 16 {
		t.Fatalf("bounced %d, accepted %d; want 4 and 16", bounced.Load(), srv.Count())
	}
}

// A send waiting for a connection gives up with its context, before DATA; a
// send whose reply to the end of DATA never comes within Timeout is
// uncertain.
func TestMailerWaitAndTimeout(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	srv.SetFault(smtptest.Fault{Delay: time.Hour, Times: 1}) // until the server closes
	m := newMailer(t, srv.URL(), delivery.MailerOptions{Connections: 1, Timeout: time.Second})

	errs := make(chan error, 2)
	for i := range 2 {
		go func() {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			errs <- m.Send(ctx, newMsg(t, fmt.Sprintf("r%d@customer.example", i), "Hi", "<p>x</p>"))
		}()
	}
	var waited, uncertain int
	for range 2 {
		err := <-errs
		se := sendErr(t, err)
		switch {
		case se.Stage == delivery.StageBeforeData && se.Temporary && errors.Is(err, context.DeadlineExceeded):
			waited++
		case delivery.IsUncertain(err) && se.Command == delivery.CommandDataEnd && !se.Temporary:
			uncertain++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if waited != 1 || uncertain != 1 {
		t.Fatalf("waited %d, uncertain %d; want 1 and 1", waited, uncertain)
	}
	if err := m.Send(t.Context(), newMsg(t, "after@customer.example", "Hi", "<p>x</p>")); err != nil {
		t.Fatalf("send after the timeout: %v", err)
	}
}

func TestMailerClose(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	m := newMailer(t, srv.URL(), delivery.MailerOptions{})
	if err := m.Send(t.Context(), newMsg(t, "a@customer.example", "Hi", "<p>x</p>")); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	err := m.Send(t.Context(), newMsg(t, "b@customer.example", "Hi", "<p>x</p>"))
	if se := sendErr(t, err); se.Stage != delivery.StageBeforeData || !errors.Is(err, delivery.ErrMailerClosed) {
		t.Fatalf("send after Close: %v", err)
	}
}

func TestMailerInvalidMessage(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	m := newMailer(t, srv.URL(), delivery.MailerOptions{})
	msg := mail.NewMsg() // no sender, no recipient
	msg.Subject("nobody")
	se := sendErr(t, m.Send(t.Context(), msg))
	if se.Stage != delivery.StageBeforeData || se.Temporary || se.Command != delivery.CommandMessage {
		t.Fatalf("got %v", se)
	}
	se = sendErr(t, m.Send(t.Context(), nil))
	if se.Stage != delivery.StageBeforeData || se.Temporary {
		t.Fatalf("nil message: %v", se)
	}
	if err := m.Send(t.Context(), newMsg(t, "a@customer.example", "Hi", "<p>x</p>")); err != nil {
		t.Fatalf("send after a bad message: %v", err)
	}
	if got := srv.Connections(); got != 1 {
		t.Fatalf("server saw %d connections, want 1", got)
	}
}

func TestMailerURLs(t *testing.T) {
	t.Parallel()
	skip := delivery.MailerOptions{TLSSkipVerify: true}
	send := func(t *testing.T, url string, opts delivery.MailerOptions) error {
		m, err := delivery.NewMailer(url, opts)
		if err != nil {
			t.Fatalf("NewMailer(%q): %v", url, err)
		}
		defer m.Close()
		return m.Send(t.Context(), newMsg(t, "a@customer.example", "Hi", "<p>x</p>"))
	}

	t.Run("auth", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.Start(t, smtptest.Auth("postmaster", "s3cret"))
		if err := send(t, srv.URL(), delivery.MailerOptions{}); err != nil {
			t.Fatalf("send with credentials: %v", err)
		}
		err := send(t, strings.Replace(srv.URL(), "s3cret", "wrong", 1), delivery.MailerOptions{})
		if se := sendErr(t, err); se.Command != delivery.CommandConnect || se.Code != 535 || se.Temporary {
			t.Fatalf("send with a wrong password: %v", err)
		}
		if strings.Contains(err.Error(), "wrong") {
			t.Fatalf("error shows the password: %v", err)
		}
		if srv.Count() != 1 {
			t.Fatalf("server accepted %d, want 1", srv.Count())
		}
	})
	t.Run("starttls", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.Start(t, smtptest.StartTLS(), smtptest.Auth("u", "p"))
		if err := send(t, srv.URL(), skip); err != nil {
			t.Fatalf("send: %v", err)
		}
		err := send(t, srv.URL(), delivery.MailerOptions{}) // self-signed: refused
		if se := sendErr(t, err); se.Command != delivery.CommandConnect || se.Stage != delivery.StageBeforeData {
			t.Fatalf("send verifying a self-signed certificate: %v", err)
		}
	})
	t.Run("starttls required", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.Start(t) // offers no STARTTLS
		url := strings.Replace(srv.URL(), "smtp://", "smtp+starttls://", 1)
		if se := sendErr(t, send(t, url, skip)); se.Command != delivery.CommandConnect {
			t.Fatalf("got %v", se)
		}
		if srv.Count() != 0 {
			t.Fatal("message sent in clear")
		}
	})
	t.Run("smtps", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.Start(t, smtptest.ImplicitTLS(), smtptest.Auth("u", "p"))
		if err := send(t, srv.URL(), skip); err != nil {
			t.Fatalf("send: %v", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.Start(t)
		url := srv.URL()
		srv.Close()
		se := sendErr(t, send(t, url, delivery.MailerOptions{}))
		if se.Stage != delivery.StageBeforeData || !se.Temporary || se.Command != delivery.CommandConnect {
			t.Fatalf("got %v", se)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		t.Parallel()
		for _, url := range []string{"http://127.0.0.1:25", "smtp://", "smtp://127.0.0.1:port", "://x"} {
			if _, err := delivery.NewMailer(url, delivery.MailerOptions{}); err == nil {
				t.Errorf("NewMailer(%q) succeeded", url)
			}
		}
	})
}

// BenchmarkMailerSend pushes TEND_BENCH_MESSAGES (default 20000) ~4 KB HTML
// messages through 8 pooled connections into a server that keeps nothing,
// and reports msgs/s. Each message is built and encoded by go-mail as a
// worker would.
//
//	go test -run '^$' -bench BenchmarkMailerSend -benchtime 1x ./internal/delivery/
func BenchmarkMailerSend(b *testing.B) {
	n := benchMessages(b, 20000)
	const conns, senders = 8, 16
	srv := smtptest.StartCounter(b)
	m := newMailer(b, srv.URL(), delivery.MailerOptions{Connections: conns})
	html := benchHTML()
	total := sendAll(b, n, senders, func(to string) error {
		return m.Send(b.Context(), newMsg(b, to, "Your weekly usage report", html))
	})
	if srv.Connections() > conns {
		b.Fatalf("server saw %d connections, want at most %d", srv.Connections(), conns)
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "msgs/s")
}

// benchHTML is a CSM check-in email of about 4 KB.
func benchHTML() string {
	var sb strings.Builder
	sb.WriteString(`<!doctype html><html><body style="font-family:Helvetica,Arial,sans-serif;color:#222">`)
	sb.WriteString(`<p>Hi Sam,</p><p>I noticed your team has not opened the reports dashboard this month.</p>`)
	for i := 0; sb.Len() < 3800; i++ {
		fmt.Fprintf(&sb, `<p style="margin:0 0 12px">Tip %d: schedule a weekly export so the whole team sees `+
			`<a href="https://tend.example/t/c/tok%06d">the numbers that matter</a>.</p>`, i, i)
	}
	sb.WriteString(`<p>Best,<br>Dana, Customer Success</p></body></html>`)
	return sb.String()
}

// BenchmarkMailerRoundTrips sends TEND_BENCH_MESSAGES (default 2,000) ~4 KB
// messages with SendRaw through 8 connections to a server
// TEND_BENCH_RTT (default 2ms) away, with and without PIPELINING offered,
// and reports msgs/s: against a relay that is not on the same machine, the
// dialogue's round trips bound what each connection carries.
//
//	go test -run '^$' -bench BenchmarkMailerRoundTrips -benchtime 1x ./internal/delivery/
func BenchmarkMailerRoundTrips(b *testing.B) {
	n := benchMessages(b, 2000)
	rtt := 2 * time.Millisecond
	if s := os.Getenv("TEND_BENCH_RTT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			b.Fatalf("TEND_BENCH_RTT=%q: want a duration", s)
		}
		rtt = d
	}
	const conns = 8
	var data bytes.Buffer
	if _, err := newMsg(b, "contact@customer.example", "Your weekly usage report", benchHTML()).WriteTo(&data); err != nil {
		b.Fatal(err)
	}
	for _, pipelining := range []bool{true, false} {
		b.Run(fmt.Sprintf("pipelining=%v", pipelining), func(b *testing.B) {
			opts := []smtptest.CounterOption{smtptest.RoundTrip(rtt)}
			if !pipelining {
				opts = append(opts, smtptest.WithoutPipelining())
			}
			srv := smtptest.StartCounter(b, opts...)
			m := newMailer(b, srv.URL(), delivery.MailerOptions{Connections: conns})
			total := sendAll(b, n, conns, func(to string) error {
				return m.SendRaw(b.Context(), "dana@vendor.example", []string{to}, data.Bytes())
			})
			b.ReportMetric(float64(n*b.N)/total.Seconds(), "msgs/s")
		})
	}
}

// benchMessages is TEND_BENCH_MESSAGES, or def.
func benchMessages(b *testing.B, def int) int {
	s := os.Getenv("TEND_BENCH_MESSAGES")
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		b.Fatalf("TEND_BENCH_MESSAGES=%q: want a positive number", s)
	}
	return n
}

// sendAll runs the benchmark's loop: each time, n messages to distinct
// addresses sent by send from senders goroutines. It returns the time taken.
func sendAll(b *testing.B, n, senders int, send func(to string) error) time.Duration {
	var total time.Duration
	for b.Loop() {
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range senders {
			wg.Go(func() {
				for i := next.Add(1); i <= int64(n); i = next.Add(1) {
					if err := send(fmt.Sprintf("contact%d@customer.example", i)); err != nil {
						b.Errorf("send %d: %v", i, err)
						return
					}
				}
			})
		}
		wg.Wait()
		total += time.Since(start)
	}
	return total
}
