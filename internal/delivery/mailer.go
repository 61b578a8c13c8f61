// Mailer: email delivery over a pool of reused SMTP connections (go-mail),
// with every failure classified by whether the server can have accepted the
// message. See SendError.

package delivery

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	netmail "net/mail"
	"net/textproto"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"
)

// MailerOptions tunes a Mailer. The zero value is usable.
type MailerOptions struct {
	// Connections is the most SMTP connections open at once (default 8).
	Connections int
	// Timeout bounds each step of dialling (the TCP and TLS connect, the
	// greeting, then EHLO, STARTTLS and AUTH together), each message's
	// SMTP transaction, and a NOOP or RSET (default DefaultTimeout). See
	// MaxHandOver.
	Timeout time.Duration
	// HELO is the name sent in EHLO (default: the host name).
	HELO string
	// TLSSkipVerify accepts any server certificate (self-signed test servers).
	TLSSkipVerify bool
}

// DefaultTimeout is MailerOptions.Timeout when it is not set.
const DefaultTimeout = mail.DefaultTimeout

// handOverTimeouts is how many Timeouts one message's handover can take at
// most (see run): a NOOP checking the idle connection it is given (1), the
// transaction (1); when that connection turns out to be closed, a new
// connection (3: connect, greeting, EHLO to AUTH) and the transaction again
// (1); after a failure the server answered, RSET (1).
const handOverTimeouts = 7

// MaxHandOver is the longest one message's handover to SMTP can take, from
// Send or a Reservation's SendRaw being called on a reserved connection to
// its return, on a Mailer whose Timeout is timeout.
func MaxHandOver(timeout time.Duration) time.Duration {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return handOverTimeouts * timeout
}

const (
	defaultConnections = 8
	// A connection idle longer than this is checked with NOOP before reuse,
	// so that one the server timed out is replaced instead of failing a send.
	// Busy connections skip the NOOP: it would cost a round trip a message.
	idleCheckAfter = 10 * time.Second
	// quitTimeout bounds the QUIT sent to idle connections on Close.
	quitTimeout = 2 * time.Second
)

// ErrMailerClosed is the cause of the SendError a closed Mailer returns.
var ErrMailerClosed = errors.New("delivery: mailer closed")

// Mailer sends email over up to Connections reused SMTP connections. It is
// safe for concurrent use; each connection carries one message at a time.
type Mailer struct {
	client    *mail.Client // configuration and dialling; connections are *smtp.Client
	timeout   time.Duration
	idleCheck time.Duration // idleCheckAfter (tests shorten it)
	slots     chan struct{} // one per connection in use; bounds the pool

	mu     sync.Mutex
	idle   []*conn
	closed bool
}

// conn is one pooled connection.
type conn struct {
	smtp     *smtp.Client
	lastUsed time.Time
	reused   bool // taken from the pool rather than just dialled
}

// NewMailer builds a Mailer for smtpURL, which is one of
//
//	smtp://[user:pass@]host[:port]           plain; STARTTLS when offered, except to loopback (default port 25)
//	smtp+starttls://[user:pass@]host[:port]  STARTTLS required (default port 587)
//	smtps://[user:pass@]host[:port]          TLS from the first byte (default port 465)
//
// With user info it authenticates (SCRAM, CRAM-MD5, PLAIN or LOGIN, whichever
// the server offers first in that order; PLAIN and LOGIN only over TLS or to
// loopback). NewMailer does not connect: connections are dialled on demand.
func NewMailer(smtpURL string, opts MailerOptions) (*Mailer, error) {
	u, err := url.Parse(smtpURL)
	if err != nil {
		return nil, fmt.Errorf("delivery: parse SMTP URL: %w", err)
	}
	host := u.Hostname()
	if host == "" {
		return nil, fmt.Errorf("delivery: SMTP URL %q has no host", u.Redacted())
	}
	if opts.Connections <= 0 {
		opts.Connections = defaultConnections
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}

	var port int
	var implicitTLS bool
	clientOpts := []mail.Option{
		mail.WithTimeout(opts.Timeout),
		// go-mail sends NOOP before, and RSET after, every message by
		// default: two round trips a message. The pool checks idle
		// connections itself and resets only after a failure (a completed
		// DATA already ends the transaction).
		mail.WithoutNoop(),
		mail.WithoutRset(),
	}
	switch u.Scheme {
	case "smtp":
		port = mail.DefaultPort
		policy := mail.TLSOpportunistic
		if isLoopback(host) {
			policy = mail.NoTLS
		}
		clientOpts = append(clientOpts, mail.WithTLSPolicy(policy))
	case "smtp+starttls":
		port = mail.DefaultPortTLS
		clientOpts = append(clientOpts, mail.WithTLSPolicy(mail.TLSMandatory))
	case "smtps":
		port = mail.DefaultPortSSL
		implicitTLS = true
		// The TLS dial itself happens in dialer.dial; WithSSL keeps go-mail
		// from attempting STARTTLS inside it.
		clientOpts = append(clientOpts, mail.WithSSL(), mail.WithTLSPolicy(mail.NoTLS))
	default:
		return nil, fmt.Errorf("delivery: SMTP URL %q: scheme must be smtp, smtp+starttls or smtps", u.Redacted())
	}
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("delivery: SMTP URL %q: bad port: %w", u.Redacted(), err)
		}
	}
	clientOpts = append(clientOpts, mail.WithPort(port))

	tlsConfig := &tls.Config{
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: opts.TLSSkipVerify, //nolint:gosec // opt-in, for test servers
	}
	clientOpts = append(clientOpts, mail.WithTLSConfig(tlsConfig))
	d := &dialer{tlsConfig: tlsConfig, implicitTLS: implicitTLS}
	clientOpts = append(clientOpts, mail.WithDialContextFunc(d.dial))

	if opts.HELO != "" {
		clientOpts = append(clientOpts, mail.WithHELO(opts.HELO))
	}
	if u.User != nil && u.User.Username() != "" {
		pass, _ := u.User.Password()
		// An explicit preference list, not go-mail's auto-discovery: that
		// one never picks PLAIN or LOGIN over smtps (go-mail only sees its
		// own TLS dials as encrypted). PLAIN and LOGIN still refuse to run
		// in clear except to loopback.
		clientOpts = append(clientOpts,
			mail.WithUsername(u.User.Username()), mail.WithPassword(pass),
			mail.WithOpportunisticSMTPAuth(mail.SMTPAuthSCRAMSHA256, mail.SMTPAuthSCRAMSHA1,
				mail.SMTPAuthCramMD5, mail.SMTPAuthPlain, mail.SMTPAuthLogin))
	}

	client, err := mail.NewClient(host, clientOpts...)
	if err != nil {
		return nil, fmt.Errorf("delivery: SMTP client for %q: %w", u.Redacted(), err)
	}
	return &Mailer{
		client:    client,
		timeout:   opts.Timeout,
		idleCheck: idleCheckAfter,
		slots:     make(chan struct{}, opts.Connections),
	}, nil
}

// Send hands msg to the SMTP server over a pooled connection, dialling one
// when none is idle and fewer than Connections are open, else waiting for
// one. ctx bounds the wait and the dial; once the handover has begun it runs
// to its end (bounded by Timeout), because abandoning it half way could only
// turn a clear outcome into an uncertain one.
//
// When a pooled connection turns out to have been closed by the server while
// idle (no reply, or 421, to MAIL FROM), Send tries once more on a new
// connection: nothing of the message had reached the server.
//
// Every failure is a *SendError saying whether the server may have accepted
// the message.
func (m *Mailer) Send(ctx context.Context, msg *mail.Msg) error {
	if msg == nil {
		return &SendError{Stage: StageBeforeData, Command: CommandMessage, Err: errors.New("delivery: nil message")}
	}
	return m.handOver(ctx, func(sc *smtp.Client) error { return m.client.SendWithSMTPClient(sc, msg) })
}

// SendRaw is Send for a message already serialised (by Sender.seal, then
// DKIM-signed, say): data, header and body with CRLF line ends, goes to the
// server byte for byte, so that a signature over it stays valid. from is the
// envelope sender and to the envelope recipients, each a bare address or one
// in angle brackets.
//
// The pool, the retry on a stale connection and the classification of
// failures are Send's: every failure is a *SendError, StageBeforeData until
// the end of DATA was sent, StageAfterData when its reply never came.
func (m *Mailer) SendRaw(ctx context.Context, from string, to []string, data []byte) error {
	h, err := m.rawHandover(from, to, data)
	if err != nil {
		return err
	}
	return m.handOver(ctx, h)
}

// rawHandover is SendRaw's handover, or the SendError of a bad envelope.
func (m *Mailer) rawHandover(from string, to []string, data []byte) (handover, error) {
	env, err := parseEnvelope(from, to)
	if err != nil {
		se, _ := classify(err)
		return nil, se
	}
	return func(sc *smtp.Client) error { return m.sendRaw(sc, env, data) }, nil
}

// handover runs one message's SMTP transaction on a connection. Its error is
// one classify understands: a *mail.SendError (go-mail's Send) or a
// *stepError (sendRaw).
type handover func(*smtp.Client) error

// handOver runs h on a pooled connection: the waiting, dialling and
// once-only retry Send and SendRaw describe.
func (m *Mailer) handOver(ctx context.Context, h handover) error {
	if err := ctx.Err(); err != nil {
		return dialError(err)
	}
	select {
	case m.slots <- struct{}{}:
	case <-ctx.Done():
		return dialError(ctx.Err())
	}
	defer func() { <-m.slots }()
	return m.run(ctx, h)
}

// run is handOver on a connection slot the caller holds.
func (m *Mailer) run(ctx context.Context, h handover) error {
	c, err := m.get(ctx)
	if err != nil {
		return dialError(err)
	}
	reused := c.reused // c may be back in the pool, in other hands, once send returns
	se := m.send(c, h)
	if reused && closedWhileIdle(se) {
		if c, err = m.dial(ctx); err != nil {
			return dialError(err)
		}
		se = m.send(c, h)
	}
	if se != nil {
		return se
	}
	return nil
}

// Reservation is a share of a Mailer's connections set aside for one caller,
// who hands messages over through it without waiting for a connection: up to
// Len at once, each on its own connection. The sender reserves connections
// before it records which messages it is about to hand over, so that none of
// them waits for a connection (handed over on paper only) should the process
// die.
//
// SendRaw may run concurrently, up to Len at once; Grow, Shrink and Release
// may not run concurrently with it.
type Reservation struct {
	m     *Mailer
	held  int          // slots taken from the pool
	inUse atomic.Int32 // sends running
}

// errOverbooked is the cause of a send beyond a reservation's connections.
var errOverbooked = errors.New("delivery: more sends at once than connections reserved")

// Reserve waits, within ctx, until one of the pool's connections is free,
// and takes as many as are free then, up to n (at least one). Release gives
// them back.
func (m *Mailer) Reserve(ctx context.Context, n int) (*Reservation, error) {
	if err := ctx.Err(); err != nil {
		return nil, dialError(err)
	}
	select {
	case m.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, dialError(ctx.Err())
	}
	r := &Reservation{m: m, held: 1}
	r.Grow(n)
	return r, nil
}

// Len is the number of connections r holds.
func (r *Reservation) Len() int { return r.held }

// Grow takes more connections that are free now, without waiting for any,
// until r holds n.
func (r *Reservation) Grow(n int) {
	for r.held < n {
		select {
		case r.m.slots <- struct{}{}:
			r.held++
		default:
			return
		}
	}
}

// Shrink gives back the connections beyond n (at least one is kept).
func (r *Reservation) Shrink(n int) {
	for n = max(n, 1); r.held > n; r.held-- {
		<-r.m.slots
	}
}

// Release gives every connection back to the pool. r is unusable after.
func (r *Reservation) Release() {
	for ; r.held > 0; r.held-- {
		<-r.m.slots
	}
}

// SendRaw is Mailer.SendRaw on one of the reserved connections.
func (r *Reservation) SendRaw(ctx context.Context, from string, to []string, data []byte) error {
	h, err := r.m.rawHandover(from, to, data)
	if err != nil {
		return err
	}
	return r.handOver(ctx, h)
}

func (r *Reservation) handOver(ctx context.Context, h handover) error {
	if err := ctx.Err(); err != nil {
		return dialError(err)
	}
	if int(r.inUse.Add(1)) > r.held {
		r.inUse.Add(-1)
		return dialError(errOverbooked)
	}
	defer r.inUse.Add(-1)
	return r.m.run(ctx, h)
}

// closedWhileIdle reports whether se is what a pooled connection the server
// has since closed gives: no reply, or 421 (closing), to the first command.
func closedWhileIdle(se *SendError) bool {
	return se != nil && se.Stage == StageBeforeData &&
		(se.Command == CommandMail || se.Command == CommandConnect) &&
		(se.Code == 0 || se.Code == 421)
}

// send runs h over c, then returns c to the pool or closes it.
func (m *Mailer) send(c *conn, h handover) *SendError {
	err := h(c.smtp)
	if err == nil {
		m.put(c)
		return nil
	}
	se, reusable := classify(err)
	if reusable && se != nil && se.Code != 0 {
		// The server answered; RSET clears whatever of the transaction it
		// still holds (after a refused DATA command, say) before the next
		// message. 421 means it is closing the connection anyway.
		reusable = se.Code != 421 && m.reset(c) == nil
	}
	if reusable {
		m.put(c)
	} else {
		_ = c.smtp.Close() // without QUIT: the session's state is unknown
	}
	return se // nil when delivered and only the connection was lost after
}

// get returns an idle connection, or dials one.
func (m *Mailer) get(ctx context.Context) (*conn, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrMailerClosed
	}
	var c *conn
	if n := len(m.idle); n > 0 {
		c, m.idle = m.idle[n-1], m.idle[:n-1] // most recently used first
	}
	m.mu.Unlock()
	if c == nil {
		return m.dial(ctx)
	}
	if time.Since(c.lastUsed) < m.idleCheck || m.noop(c) == nil {
		c.reused = true
		return c, nil
	}
	// Gone stale while idle. The connections still idle have been so
	// at least as long (the most recently used is taken first), so
	// are likely gone too, and checking each could take Timeout: they
	// are closed unchecked, and a new connection is dialled. One
	// handover checks one connection at most (see handOverTimeouts).
	_ = c.smtp.Close()
	m.closeIdleSince(c.lastUsed)
	return m.dial(ctx)
}

// closeIdleSince closes, without QUIT, the idle connections last used no
// later than t.
func (m *Mailer) closeIdleSince(t time.Time) {
	m.mu.Lock()
	var stale []*conn
	kept := m.idle[:0]
	for _, c := range m.idle {
		if c.lastUsed.After(t) {
			kept = append(kept, c)
		} else {
			stale = append(stale, c)
		}
	}
	clear(m.idle[len(kept):])
	m.idle = kept
	m.mu.Unlock()
	for _, c := range stale {
		_ = c.smtp.Close()
	}
}

// dial opens a new connection: TCP, TLS, EHLO, STARTTLS, AUTH.
func (m *Mailer) dial(ctx context.Context) (*conn, error) {
	rec := &dialRecord{}
	sc, err := m.client.DialToSMTPClientWithContext(context.WithValue(ctx, dialRecordKey{}, rec))
	if err != nil {
		// go-mail leaves the connection open when EHLO, STARTTLS or AUTH
		// fails after the TCP connect; close it here.
		rec.close()
		return nil, err
	}
	return &conn{smtp: sc}, nil
}

// put returns c to the pool, or closes it if the Mailer was closed.
func (m *Mailer) put(c *conn) {
	c.lastUsed = time.Now()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.quit(c)
		return
	}
	m.idle = append(m.idle, c)
	m.mu.Unlock()
}

func (m *Mailer) noop(c *conn) error {
	if err := c.smtp.UpdateDeadline(m.timeout); err != nil {
		return err
	}
	return c.smtp.Noop()
}

func (m *Mailer) reset(c *conn) error {
	if err := c.smtp.UpdateDeadline(m.timeout); err != nil {
		return err
	}
	return c.smtp.Reset()
}

func (m *Mailer) quit(c *conn) {
	if c.smtp.UpdateDeadline(quitTimeout) == nil && c.smtp.Quit() == nil {
		return
	}
	_ = c.smtp.Close()
}

// Close closes the idle connections (with QUIT); connections still carrying
// a message are closed when it is done. Send fails after Close.
func (m *Mailer) Close() error {
	m.mu.Lock()
	idle := m.idle
	m.idle, m.closed = nil, true
	m.mu.Unlock()
	for _, c := range idle {
		m.quit(c)
	}
	return nil
}

// Stage says how far a failed send got, and so whether the server can have
// accepted the message.
type Stage int

const (
	// StageBeforeData: the send failed before the end of DATA was sent
	// (dial, EHLO, STARTTLS, AUTH, MAIL FROM, RCPT TO, the DATA command, the
	// body, or a connection lost before the final dot). The server did not
	// accept the message: resending cannot duplicate it.
	StageBeforeData Stage = iota + 1
	// StageRefused: the whole message was sent and the server replied 4xx
	// or 5xx to the end of DATA. It explicitly did not accept it.
	StageRefused
	// StageAfterData: the whole message may have reached the server but its
	// reply to the end of DATA never arrived (connection lost, timeout) or
	// could not be read. The server may or may not have accepted it: the
	// outcome is uncertain and the message must not be resent automatically.
	StageAfterData
)

func (s Stage) String() string {
	switch s {
	case StageBeforeData:
		return "before end of DATA"
	case StageRefused:
		return "refused at end of DATA"
	case StageAfterData:
		return "after end of DATA (uncertain)"
	}
	return "stage(" + strconv.Itoa(int(s)) + ")"
}

// The SMTP steps a SendError names in Command.
const (
	CommandConnect = "connect" // dial, TLS, EHLO, AUTH, or the connection check
	CommandMessage = "message" // the message itself (no sender, no recipients, 8BITMIME missing)
	CommandMail    = "MAIL FROM"
	CommandRcpt    = "RCPT TO"
	CommandData    = "DATA"        // the DATA command
	CommandBody    = "body"        // writing the message after DATA
	CommandDataEnd = "end of DATA" // the final dot and the server's reply to it
	CommandUnknown = "unknown"     // go-mail could not say (ErrAmbiguous or newer reasons)
)

// SendError is a failed send, classified for the outbox.
//
// Stage is the part that matters for exactly-once: StageBeforeData and
// StageRefused mean the server did not accept the message (Temporary then
// says whether trying again later may succeed: a 4xx reply or a connection
// failure); StageAfterData means nobody knows (Uncertain), and Temporary is
// false because it must not be retried automatically.
//
// How go-mail's SendError.Reason maps (Code is its ErrorCode, 0 when the
// failure was not a server reply; SendRaw names its steps' failures with the
// same reasons):
//
//	ErrConnCheck                       StageBeforeData  temporary        connection unusable before MAIL FROM
//	ErrGetSender, ErrGetRcpts,
//	  ErrNoUnencoded                   StageBeforeData  permanent        the message cannot be sent as built
//	ErrSMTPMailFrom, ErrSMTPRcptTo,
//	  ErrSMTPData                      StageBeforeData  4xx or no reply: temporary; 5xx: permanent
//	ErrWriteContent                    StageBeforeData  temporary        the final dot was never written
//	ErrSMTPDataClose, 4xx/5xx reply    StageRefused     4xx: temporary; 5xx: permanent
//	ErrSMTPDataClose, no reply         StageAfterData   uncertain        the dot may have arrived
//	ErrSMTPReset                       not an error     the reply to the dot was 250: delivered
//	ErrAmbiguous, any other            StageAfterData   uncertain        nothing can be proved
//
// Failures before go-mail's Send (waiting for a connection, dialling, TLS,
// EHLO, AUTH) are StageBeforeData, temporary unless the server replied 5xx.
type SendError struct {
	Stage     Stage
	Temporary bool   // worth retrying later; never true when Stage is StageAfterData
	Code      int    // the SMTP reply code, 0 when there was none
	Enhanced  string // the RFC 3463 enhanced status code ("5.1.1"), when the server sent one
	Command   string // the step that failed: one of the Command constants
	Err       error  // the cause (a *mail.SendError once go-mail's Send ran; SendRaw's wraps the server's *textproto.Error)
}

func (e *SendError) Error() string {
	kind := "permanent"
	switch {
	case e.Stage == StageAfterData:
		kind = "uncertain"
	case e.Temporary:
		kind = "temporary"
	}
	code := ""
	if e.Code != 0 {
		code = " " + strconv.Itoa(e.Code)
	}
	if e.Enhanced != "" {
		code += " " + e.Enhanced
	}
	return fmt.Sprintf("delivery: smtp %s failed%s (%s, %s): %v", e.Command, code, kind, e.Stage, e.Err)
}

func (e *SendError) Unwrap() error { return e.Err }

// Uncertain reports whether the server may have accepted the message.
func (e *SendError) Uncertain() bool { return e.Stage == StageAfterData }

// IsUncertain reports whether err is a SendError after which the server may
// have accepted the message: it must be marked uncertain, never resent
// automatically.
func IsUncertain(err error) bool {
	var se *SendError
	return errors.As(err, &se) && se.Uncertain()
}

// IsHardBounce reports whether err is a permanent refusal of the recipient's
// address (a 5xx reply to RCPT TO): the address should be suppressed.
//
// A 5xx at RCPT TO that is about something else is not one, lest a
// misconfigured relay suppress every contact: with an enhanced code, only
// 5.1.x (bad address) and 5.2.x (mailbox disabled; not 5.2.2, mailbox full)
// count — 5.7.1 "relay access denied" does not; without one, only 550, 551
// and 553.
func IsHardBounce(err error) bool {
	var se *SendError
	if !errors.As(err, &se) || se.Command != CommandRcpt || se.Code < 500 || se.Code >= 600 {
		return false
	}
	if se.Enhanced != "" {
		return strings.HasPrefix(se.Enhanced, "5.1.") ||
			strings.HasPrefix(se.Enhanced, "5.2.") && se.Enhanced != "5.2.2"
	}
	return se.Code == 550 || se.Code == 551 || se.Code == 553
}

// classify turns the error of a handover (go-mail's SendWithSMTPClient, or
// sendRaw) into a SendError (nil when the message was in fact delivered) and
// says whether the connection can carry another message.
func classify(err error) (*SendError, bool) {
	var st *stepError
	var ge *mail.SendError
	switch {
	case errors.As(err, &ge):
		st = &stepError{reason: ge.Reason, code: ge.ErrorCode(), enhanced: ge.EnhancedStatusCode()}
	case errors.As(err, &st):
	default:
		// Neither (none of go-mail's paths returns such an error): nothing
		// proves the message was not handed over.
		return &SendError{Stage: StageAfterData, Command: CommandUnknown, Err: err}, false
	}
	se, reusable := classifyReason(st.reason, st.code, err)
	if se != nil {
		se.Enhanced = st.enhanced
	}
	return se, reusable && !st.broken
}

// classifyReason implements the table on SendError for a step that failed
// for reason with reply code (0 for none); err is the handover's error.
func classifyReason(reason mail.SendErrReason, code int, err error) (se *SendError, reusable bool) {
	replied := code >= 400 && code < 600
	notAccepted := func(cmd string) *SendError {
		return &SendError{Stage: StageBeforeData, Temporary: !replied || code < 500, Code: code, Command: cmd, Err: err}
	}
	switch reason {
	case mail.ErrGetSender, mail.ErrGetRcpts, mail.ErrNoUnencoded:
		// Checked before any command is sent; the connection is untouched.
		return &SendError{Stage: StageBeforeData, Command: CommandMessage, Err: err}, true
	case mail.ErrConnCheck:
		return &SendError{Stage: StageBeforeData, Temporary: true, Command: CommandConnect, Err: err}, false
	case mail.ErrSMTPMailFrom:
		return notAccepted(CommandMail), replied
	case mail.ErrSMTPRcptTo:
		return notAccepted(CommandRcpt), replied
	case mail.ErrSMTPData:
		return notAccepted(CommandData), replied
	case mail.ErrWriteContent:
		// The DotWriter sends the terminating dot only when closed, which
		// go-mail does after the body was written: the server saw no end of
		// DATA. Mid-DATA, the connection cannot be reused; closing it
		// without the dot makes the server drop the partial message.
		return &SendError{Stage: StageBeforeData, Temporary: true, Code: code, Command: CommandBody, Err: err}, false
	case mail.ErrSMTPDataClose:
		if replied {
			return &SendError{Stage: StageRefused, Temporary: code < 500, Code: code, Command: CommandDataEnd, Err: err}, true
		}
		return &SendError{Stage: StageAfterData, Command: CommandDataEnd, Err: err}, false
	case mail.ErrSMTPReset:
		// Only returned after the server replied 250 to the end of DATA
		// (go-mail then marks the Msg delivered); the RSET that followed
		// failed. Not a failure of this message. (WithoutRset makes go-mail
		// skip that RSET; kept for safety.)
		return nil, false
	default:
		return &SendError{Stage: StageAfterData, Code: code, Command: CommandUnknown, Err: err}, false
	}
}

// envelope is a raw message's MAIL FROM and RCPT TO paths, "<addr>".
type envelope struct {
	from string
	to   []string
}

// parseEnvelope checks SendRaw's addresses as go-mail's GetSender and
// GetRecipients would: a failure is ErrGetSender or ErrGetRcpts.
func parseEnvelope(from string, to []string) (envelope, error) {
	path := func(s string) (string, error) {
		a, err := netmail.ParseAddress(s)
		if err != nil {
			return "", fmt.Errorf("delivery: address %q: %w", s, err)
		}
		return (&netmail.Address{Address: a.Address}).String(), nil
	}
	var env envelope
	var err error
	if env.from, err = path(from); err != nil {
		return env, &stepError{reason: mail.ErrGetSender, err: err}
	}
	if len(to) == 0 {
		return env, &stepError{reason: mail.ErrGetRcpts, err: mail.ErrNoRcptAddresses}
	}
	env.to = make([]string, len(to))
	for i, r := range to {
		if env.to[i], err = path(r); err != nil {
			return env, &stepError{reason: mail.ErrGetRcpts, err: err}
		}
	}
	return env, nil
}

// sendRaw is SendRaw's handover: the SMTP transaction of go-mail's Send
// (connection check, 8BITMIME check, MAIL FROM, RCPT TO, DATA, the body, the
// end of DATA), each failure named by the go-mail reason classify maps.
//
// To a server that offers PIPELINING (RFC 2920) the envelope goes as one
// group: MAIL FROM, every RCPT TO and DATA written at once, their replies read
// after. A message then costs two round trips rather than three plus one per
// recipient: against a relay some milliseconds away, round trips, not
// bandwidth, bound what a connection carries. The first refusal is the
// message's failure, as in the lock-step dialogue, and every reply of the
// group is read so that the connection stays in step for the next message.
func (m *Mailer) sendRaw(sc *smtp.Client, env envelope, data []byte) error {
	esc, _ := sc.Extension("ENHANCEDSTATUSCODES")
	fail := func(reason mail.SendErrReason, err error) *stepError {
		st := &stepError{reason: reason, err: err}
		var te *textproto.Error
		if errors.As(err, &te) && te.Code >= 400 && te.Code < 600 {
			st.code = te.Code
			if esc {
				st.enhanced = enhancedCode.FindString(te.Msg)
			}
		}
		return st
	}
	if !sc.HasConnection() {
		return fail(mail.ErrConnCheck, mail.ErrNoActiveConnection)
	}
	if err := sc.UpdateDeadline(m.timeout); err != nil {
		return fail(mail.ErrConnCheck, err)
	}
	eightBit, _ := sc.Extension("8BITMIME")
	if !eightBit && !is7bit(data) {
		return fail(mail.ErrNoUnencoded, mail.ErrServerNoUnencoded)
	}

	// The envelope, as go-mail's Client.Mail, Rcpt and Data write it.
	mailFrom := "MAIL FROM:" + env.from
	if eightBit {
		mailFrom += " BODY=8BITMIME"
	}
	if ok, _ := sc.Extension("SMTPUTF8"); ok {
		mailFrom += " SMTPUTF8"
	}
	type command struct {
		line   string
		expect int // the reply code expected, or its first digits
		reason mail.SendErrReason
	}
	cmds := make([]command, 0, len(env.to)+2)
	cmds = append(cmds, command{mailFrom, 250, mail.ErrSMTPMailFrom})
	for _, rcpt := range env.to {
		cmds = append(cmds, command{"RCPT TO:" + rcpt, 25, mail.ErrSMTPRcptTo})
	}
	cmds = append(cmds, command{"DATA", 354, mail.ErrSMTPData})

	tp := sc.Text
	pipelining, _ := sc.Extension("PIPELINING")
	write := func(cmds []command) error {
		for _, c := range cmds {
			if _, err := tp.W.WriteString(c.line + "\r\n"); err != nil {
				return err
			}
		}
		return tp.W.Flush()
	}
	var refused *stepError
	for i, c := range cmds {
		switch {
		case pipelining && i == 0:
			if err := write(cmds); err != nil {
				return fail(c.reason, err)
			}
		case !pipelining:
			if err := write(cmds[i : i+1]); err != nil {
				return fail(c.reason, err)
			}
		}
		_, _, err := tp.ReadResponse(c.expect)
		var te *textproto.Error
		switch {
		case err == nil && (refused == nil || c.reason != mail.ErrSMTPData):
		case err == nil:
			// DATA accepted after a refusal (a server may, when
			// another recipient was accepted): the server now waits
			// for a body that must not come. Leave the connection
			// without ending DATA; the server drops the transaction.
			refused.broken = true
			return refused
		case !errors.As(err, &te):
			// No reply (the connection failed): nothing more can be
			// read. A refusal before it is still the message's failure.
			if refused != nil {
				refused.broken = true
				return refused
			}
			return fail(c.reason, err)
		case refused == nil:
			refused = fail(c.reason, err)
			if !pipelining {
				return refused
			}
		}
	}
	if refused != nil {
		return refused
	}

	w := tp.DotWriter()
	if err := writeData(tp.W, w, data); err != nil {
		return fail(mail.ErrWriteContent, err) // the final dot was not written
	}
	// Closing w writes the end of DATA: from here on, a failure may come
	// after the server took the message.
	if err := w.Close(); err != nil {
		return fail(mail.ErrSMTPDataClose, err)
	}
	if _, _, err := tp.ReadResponse(250); err != nil {
		return fail(mail.ErrSMTPDataClose, err)
	}
	return nil
}

// writeData writes data as the content of DATA through w, the DotWriter of
// the connection whose buffer is bw. The DotWriter goes byte by byte (about a
// tenth of the CPU time of a send); data whose lines all end in CRLF, as
// Tend and go-mail write them, needs no more than a dot before each line that starts
// with one (RFC 5321, 4.5.2), which writeData writes a line at a time
// straight into bw. The last CRLF still goes through w, so that its Close
// knows it is at the start of a line and ends DATA with ".\r\n" alone.
func writeData(bw *bufio.Writer, w io.Writer, data []byte) error {
	if !crlfLines(data) {
		_, err := w.Write(data)
		return err
	}
	body := data[:len(data)-2]
	if len(body) > 0 && body[0] == '.' {
		if err := bw.WriteByte('.'); err != nil {
			return err
		}
	}
	for {
		i := bytes.Index(body, crlfDot)
		if i < 0 {
			break
		}
		if _, err := bw.Write(body[:i+3]); err != nil {
			return err
		}
		if err := bw.WriteByte('.'); err != nil {
			return err
		}
		body = body[i+3:]
	}
	if _, err := bw.Write(body); err != nil {
		return err
	}
	_, err := w.Write(crlf)
	return err
}

var (
	crlf    = []byte("\r\n")
	crlfDot = []byte("\r\n.")
)

// crlfLines reports whether data ends in CRLF and has no CR or LF but in
// CRLF pairs.
func crlfLines(data []byte) bool {
	n := bytes.Count(data, crlf)
	return bytes.HasSuffix(data, crlf) && bytes.Count(data, crlf[:1]) == n && bytes.Count(data, crlf[1:]) == n
}

// enhancedCode finds an RFC 3463 status code in a reply, as go-mail does.
var enhancedCode = regexp.MustCompile(`\b([245])\.\d{1,3}\.\d{1,3}\b`)

func is7bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// stepError is a failed step of sendRaw, in the terms of go-mail's SendError
// (which cannot be built outside go-mail with its reply code) so that
// classify treats both alike.
type stepError struct {
	reason   mail.SendErrReason
	code     int    // the reply code, 0 when there was none
	enhanced string // the enhanced status code, when the server offers them
	broken   bool   // the connection is out of step with the server: not to be reused
	err      error
}

func (e *stepError) Error() string { return e.reason.String() + ": " + e.err.Error() }

func (e *stepError) Unwrap() error { return e.err }

// dialError classifies a failure to get a connection (including giving up
// waiting for one).
func dialError(err error) *SendError {
	code := 0
	var te *textproto.Error
	if errors.As(err, &te) {
		code = te.Code
	}
	return &SendError{
		Stage:     StageBeforeData,
		Temporary: !(code >= 500 && code < 600),
		Code:      code,
		Command:   CommandConnect,
		Err:       err,
	}
}

// dialer is go-mail's DialContextFunc. It does the TLS handshake for smtps
// itself (go-mail skips its own TLS dial when given a dial function), and
// records the connection in the context's dialRecord so that Mailer.get can
// close it if go-mail fails after connecting.
type dialer struct {
	tlsConfig   *tls.Config
	implicitTLS bool
}

type dialRecordKey struct{}

type dialRecord struct{ conn net.Conn }

func (r *dialRecord) close() {
	if r.conn != nil {
		_ = r.conn.Close()
	}
}

func (d *dialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	if d.implicitTLS {
		td := &tls.Dialer{Config: d.tlsConfig}
		c, err = td.DialContext(ctx, network, addr)
	} else {
		var nd net.Dialer
		c, err = nd.DialContext(ctx, network, addr)
	}
	if err != nil {
		return nil, err
	}
	if r, ok := ctx.Value(dialRecordKey{}).(*dialRecord); ok {
		r.conn = c
	}
	return c, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
