// Package smtptest runs a real SMTP server (github.com/emersion/go-smtp) on
// loopback for tests: it stores what it accepts, counts connections, and
// injects faults on demand — a 451 or 550 reply at a chosen step, a connection
// dropped before DATA, or one dropped after a message was stored but before
// the final reply, which is the case that makes a send "uncertain".
//
//	srv := smtptest.Start(t)
//	mailer, _ := delivery.NewMailer(srv.URL(), delivery.MailerOptions{})
//	srv.SetFault(smtptest.Fault{Kind: smtptest.DropAfterData, Times: 1})
package smtptest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/mail"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one message the server accepted.
type Message struct {
	From   string      // envelope sender (MAIL FROM)
	To     []string    // envelope recipients (RCPT TO)
	Data   []byte      // the message as received after DATA
	Header mail.Header // Data's header, parsed; nil when Data has none
}

// FaultKind says what the server does to a message a Fault hits.
type FaultKind int

// The faults. "Drop" closes the TCP connection without a reply.
const (
	NoFault       FaultKind = iota // accept normally (a Fault may still add a Delay)
	TempFailMail                   // reply 451 to MAIL FROM
	TempFailRcpt                   // reply 451 to RCPT TO
	TempFailData                   // read the message, then reply 451 to the end of DATA; nothing is stored
	RejectData                     // read the message, then reply 554 (transaction failed) to the end of DATA; nothing is stored
	RejectRcpt                     // reply 550 (mailbox unavailable: a hard bounce) to RCPT TO
	DropAtMail                     // drop the connection at MAIL FROM
	DropAtRcpt                     // drop the connection at RCPT TO
	DropAfterData                  // store the message, then drop the connection instead of replying 250
)

func (k FaultKind) String() string {
	names := [...]string{"NoFault", "TempFailMail", "TempFailRcpt", "TempFailData", "RejectData",
		"RejectRcpt", "DropAtMail", "DropAtRcpt", "DropAfterData"}
	if k >= 0 && int(k) < len(names) {
		return names[k]
	}
	return fmt.Sprintf("FaultKind(%d)", int(k))
}

// Fault is the misbehaviour the server applies to the messages it hits.
//
// A fault is tested at the step its Kind acts on: at MAIL FROM for
// TempFailMail and DropAtMail, at each RCPT TO for TempFailRcpt, RejectRcpt
// and DropAtRcpt, and at the end of DATA for the rest (NoFault included).
type Fault struct {
	Kind FaultKind
	// Times, when positive, limits the fault to the next Times hits; the
	// server then behaves normally again. Zero means every message.
	Times int
	// Match, when set, limits the fault to messages with a recipient
	// containing Match. At MAIL FROM, before any recipient is known, it is
	// tested against the sender instead.
	Match string
	// Delay holds the reply to the end of DATA that long for each message the
	// fault hits (with a DATA-step Kind: NoFault, TempFailData, RejectData,
	// DropAfterData), to make sends slow. The server's Close cuts it short.
	Delay time.Duration
}

type step int

const (
	stepMail step = iota
	stepRcpt
	stepData
)

func (k FaultKind) step() step {
	switch k {
	case TempFailMail, DropAtMail:
		return stepMail
	case TempFailRcpt, RejectRcpt, DropAtRcpt:
		return stepRcpt
	default:
		return stepData
	}
}

// Option configures a Server.
type Option func(*config)

type config struct {
	user     string
	pass     string
	startTLS bool
	implicit bool
}

// Auth makes the server offer AUTH PLAIN and LOGIN (also without TLS) and
// require it before MAIL FROM. URL then carries the credentials.
func Auth(user, pass string) Option {
	return func(c *config) { c.user, c.pass = user, pass }
}

// StartTLS makes the server offer STARTTLS with a self-signed certificate for
// 127.0.0.1 (clients must skip verification). URL's scheme is smtp+starttls.
func StartTLS() Option { return func(c *config) { c.startTLS = true } }

// ImplicitTLS makes the server speak TLS from the first byte (SMTPS), with a
// self-signed certificate for 127.0.0.1. URL's scheme is smtps.
func ImplicitTLS() Option { return func(c *config) { c.implicit = true } }

// Server is a running SMTP server. Its methods are safe for concurrent use.
type Server struct {
	cfg  config
	srv  *smtp.Server
	ln   net.Listener
	addr string
	done chan struct{} // closed by Close
	once sync.Once

	conns atomic.Int64 // connections accepted

	mu        sync.Mutex
	open      map[*trackedConn]struct{}
	fault     Fault
	faultLeft int // hits left when fault.Times > 0
	count     int // messages accepted
	msgs      []Message
	changed   chan struct{} // closed and replaced each time count grows
}

// Start starts a server on 127.0.0.1 on a free port; it is closed when the
// test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		open:    make(map[*trackedConn]struct{}),
	}
	for _, o := range opts {
		o(&s.cfg)
	}

	srv := smtp.NewServer(backend{s})
	srv.Domain = "smtptest.local"
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.MaxMessageBytes = 32 << 20
	srv.AllowInsecureAuth = true
	// Dropped connections are the point of some tests; don't log them.
	srv.ErrorLog = log.New(io.Discard, "", 0)

	var tlsConfig *tls.Config
	if s.cfg.startTLS || s.cfg.implicit {
		cert, err := selfSigned()
		if err != nil {
			t.Fatalf("smtptest: certificate: %v", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if s.cfg.startTLS {
		srv.TLSConfig = tlsConfig
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: listen: %v", err)
	}
	s.ln, s.addr = ln, ln.Addr().String()
	var l net.Listener = trackingListener{Listener: ln, s: s}
	if s.cfg.implicit {
		l = tls.NewListener(l, tlsConfig)
	}
	s.srv = srv

	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(l) // returns nil once Close is called
	}()
	t.Cleanup(func() {
		s.Close()
		<-served
	})
	return s
}

// Close stops the server and drops its connections. Tests need not call it:
// Start arranges it. Calling it again does nothing.
func (s *Server) Close() {
	s.once.Do(func() {
		close(s.done)
		_ = s.srv.Close()
		// Serve may not have registered the listener with srv yet.
		_ = s.ln.Close()
	})
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// URL is the server's address as smtp://127.0.0.1:PORT (smtp+starttls:// or
// smtps:// with StartTLS or ImplicitTLS), with user:pass@ when Auth is set.
func (s *Server) URL() string {
	u := url.URL{Scheme: "smtp", Host: s.addr}
	switch {
	case s.cfg.implicit:
		u.Scheme = "smtps"
	case s.cfg.startTLS:
		u.Scheme = "smtp+starttls"
	}
	if s.cfg.user != "" {
		u.User = url.UserPassword(s.cfg.user, s.cfg.pass)
	}
	return u.String()
}

// Connections is the number of connections the server has accepted so far.
func (s *Server) Connections() int { return int(s.conns.Load()) }

// DropConnections closes every open connection without a word, as a server
// restart would, and keeps listening. A client finds out at its next command.
func (s *Server) DropConnections() {
	s.mu.Lock()
	open := make([]*trackedConn, 0, len(s.open))
	for c := range s.open {
		open = append(open, c)
	}
	s.mu.Unlock()
	for _, c := range open {
		_ = c.Close()
	}
}

// SetFault replaces the current fault; Fault{} turns faults off.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
	s.faultLeft = f.Times
}

// Messages returns a copy of the list of accepted messages, oldest first
// (nothing with Discard).
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.msgs))
	copy(out, s.msgs)
	return out
}

// Count is the number of messages accepted so far.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// WaitFor blocks until at least n messages were accepted, and reports whether
// that happened within timeout.
func (s *Server) WaitFor(n int, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		if s.count >= n {
			s.mu.Unlock()
			return true
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			return s.Count() >= n
		}
	}
}

// hit reports whether the current fault acts on this step of a message whose
// addresses (sender at MAIL, recipient at RCPT, all recipients at DATA) are
// addrs, and uses up one of its Times if so.
func (s *Server) hit(at step, addrs ...string) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault
	if f.Kind.step() != at || (f.Kind == NoFault && f.Delay == 0) {
		return Fault{}, false
	}
	if f.Match != "" && !containsAny(addrs, f.Match) {
		return Fault{}, false
	}
	if f.Times > 0 {
		s.faultLeft--
		if s.faultLeft <= 0 {
			s.fault, s.faultLeft = Fault{}, 0
		}
	}
	return f, true
}

func containsAny(addrs []string, sub string) bool {
	for _, a := range addrs {
		if strings.Contains(a, sub) {
			return true
		}
	}
	return false
}

func (s *Server) store(from string, to []string, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count++
	m := Message{From: from, To: to, Data: data}
	if parsed, err := mail.ReadMessage(bytes.NewReader(data)); err == nil {
		m.Header = parsed.Header
	}
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

// sleep waits d, or less if the server closes.
func (s *Server) sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.done:
	}
}

var (
	errTempFail = &smtp.SMTPError{
		Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Requested action aborted: local error in processing (smtptest fault)",
	}
	errTransactionFailed = &smtp.SMTPError{
		Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Transaction failed (smtptest fault)",
	}
	errMailboxUnavailable = &smtp.SMTPError{
		Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
		Message: "Mailbox unavailable (smtptest fault)",
	}
	errDropped = errors.New("smtptest: connection dropped")
)

type backend struct{ s *Server }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: b.s, conn: c}, nil
}

// session is one SMTP connection's state.
type session struct {
	s      *Server
	conn   *smtp.Conn
	authed bool
	from   string
	to     []string
}

// drop closes the TCP connection under go-smtp: the reply it then tries to
// write fails, and its read loop ends on the closed connection.
func (ss *session) drop() error {
	_ = ss.conn.Conn().Close()
	return errDropped
}

func (ss *session) AuthMechanisms() []string {
	if ss.s.cfg.user == "" {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if user != ss.s.cfg.user || pass != ss.s.cfg.pass {
			return smtp.ErrAuthFailed
		}
		ss.authed = true
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return newLoginServer(check), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.s.cfg.user != "" && !ss.authed {
		return smtp.ErrAuthRequired
	}
	if f, ok := ss.s.hit(stepMail, from); ok {
		if f.Kind == DropAtMail {
			return ss.drop()
		}
		return errTempFail
	}
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if f, ok := ss.s.hit(stepRcpt, to); ok {
		switch f.Kind {
		case DropAtRcpt:
			return ss.drop()
		case RejectRcpt:
			return errMailboxUnavailable
		default:
			return errTempFail
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	f, hit := ss.s.hit(stepData, ss.to...)
	if hit {
		ss.s.sleep(f.Delay)
	}
	switch {
	case hit && f.Kind == TempFailData:
		return errTempFail
	case hit && f.Kind == RejectData:
		return errTransactionFailed
	case hit && f.Kind == DropAfterData:
		ss.s.store(ss.from, ss.to, data)
		return ss.drop()
	}
	ss.s.store(ss.from, ss.to, data)
	return nil
}

func (ss *session) Reset() {
	ss.from, ss.to = "", nil
}

func (ss *session) Logout() error { return nil }

// loginServer is the server side of AUTH LOGIN, which go-sasl only has as a
// client: ask for the user name, then the password.
type loginServer struct {
	check func(user, pass string) error
	user  string
	state int
}

func newLoginServer(check func(user, pass string) error) *loginServer {
	return &loginServer{check: check}
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.state {
	case 0:
		l.state = 1
		if len(response) == 0 { // no initial response
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		l.user = string(response)
		l.state = 2
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(response))
	}
}

// trackingListener counts accepted connections and keeps the open ones for
// DropConnections.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.s.conns.Add(1)
	tc := &trackedConn{Conn: c, s: l.s}
	l.s.mu.Lock()
	l.s.open[tc] = struct{}{}
	l.s.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	s *Server
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.open, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// selfSigned makes a throwaway certificate for 127.0.0.1 and localhost.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "smtptest"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
