package smtptest

import (
	"bufio"
	"bytes"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Counter is the smallest SMTP server that is still one: it accepts every
// message and counts it, nothing more (no faults, no TLS, no AUTH, nothing
// kept). It is the receiving end of throughput benchmarks, where it shares
// the machine with what it measures: Server, built on go-smtp, reads a
// message byte by byte and cost as much CPU per message as rendering one.
// Counter reads lines straight from its buffer.
type Counter struct {
	ln       net.Listener
	count    atomic.Int64
	accepts  atomic.Int64 // connections accepted
	mu       sync.Mutex
	changed  chan struct{} // closed and replaced when count grows
	conns    sync.WaitGroup
	accepted chan struct{} // closed when the accept loop has returned

	open   sync.Map // net.Conn → struct{}
	closed sync.Once

	opts counterOptions
}

// CounterOption changes how a Counter answers.
type CounterOption func(*counterOptions)

type counterOptions struct {
	noPipelining bool
	roundTrip    time.Duration
}

// WithoutPipelining leaves PIPELINING out of the reply to EHLO, so that
// clients wait for the reply to each command before sending the next.
func WithoutPipelining() CounterOption {
	return func(o *counterOptions) { o.noPipelining = true }
}

// RoundTrip holds every batch of replies back for d before sending it: each
// round trip of the dialogue then takes about d, like a relay d away.
func RoundTrip(d time.Duration) CounterOption {
	return func(o *counterOptions) { o.roundTrip = d }
}

// StartCounter starts a Counter on 127.0.0.1 on a free port; it is closed
// when the test ends.
func StartCounter(t testing.TB, opts ...CounterOption) *Counter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: listen: %v", err)
	}
	c := &Counter{ln: ln, changed: make(chan struct{}), accepted: make(chan struct{})}
	for _, o := range opts {
		o(&c.opts)
	}
	go c.accept()
	t.Cleanup(c.Close)
	return c
}

// URL is the server's address as smtp://127.0.0.1:PORT.
func (c *Counter) URL() string {
	return (&url.URL{Scheme: "smtp", Host: c.ln.Addr().String()}).String()
}

// Connections is the number of connections the server has accepted so far.
func (c *Counter) Connections() int { return int(c.accepts.Load()) }

// Count is the number of messages accepted so far.
func (c *Counter) Count() int { return int(c.count.Load()) }

// WaitFor blocks until at least n messages were accepted, and reports whether
// that happened within timeout.
func (c *Counter) WaitFor(n int, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		changed := c.changed
		c.mu.Unlock()
		if c.Count() >= n {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return c.Count() >= n
		}
	}
}

// Close stops listening, drops the open connections and waits for their
// handlers. Calling it again does nothing.
func (c *Counter) Close() {
	c.closed.Do(func() {
		_ = c.ln.Close()
		<-c.accepted // no connection is added from here on
		c.open.Range(func(k, _ any) bool {
			_ = k.(net.Conn).Close()
			return true
		})
		c.conns.Wait()
	})
}

func (c *Counter) accept() {
	defer close(c.accepted)
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return // closed
		}
		c.accepts.Add(1)
		c.conns.Add(1)
		c.open.Store(conn, struct{}{})
		go func() {
			defer c.conns.Done()
			defer c.open.Delete(conn)
			defer conn.Close()
			c.serve(conn)
		}()
	}
}

// serve speaks SMTP on one connection until QUIT or an error. Replies are
// flushed before the server waits for more: pipelined commands that arrived
// together get their replies together.
func (c *Counter) serve(conn net.Conn) {
	r := bufio.NewReaderSize(conn, 64<<10)
	w := bufio.NewWriterSize(conn, 4<<10)
	flush := func() error {
		if c.opts.roundTrip > 0 && w.Buffered() > 0 {
			time.Sleep(c.opts.roundTrip)
		}
		return w.Flush()
	}
	ehlo := "250-smtptest.local\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
	if c.opts.noPipelining {
		ehlo = "250-smtptest.local\r\n250 8BITMIME\r\n"
	}
	_, _ = w.WriteString("220 smtptest.local ESMTP counter\r\n")
	for {
		if !lineBuffered(r) && flush() != nil {
			return
		}
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		verb := line
		if i := bytes.IndexAny(line, " \r\n"); i >= 0 {
			verb = line[:i]
		}
		switch string(bytes.ToUpper(verb)) {
		case "EHLO":
			_, _ = w.WriteString(ehlo)
		case "HELO", "MAIL", "RCPT", "RSET", "NOOP":
			_, _ = w.WriteString("250 OK\r\n")
		case "DATA":
			_, _ = w.WriteString("354 go ahead\r\n")
			if flush() != nil || !readData(r) {
				return
			}
			c.count.Add(1)
			c.mu.Lock()
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
			_, _ = w.WriteString("250 OK counted\r\n")
		case "QUIT":
			_, _ = w.WriteString("221 bye\r\n")
			_ = flush()
			return
		default:
			_, _ = w.WriteString("502 not implemented\r\n")
		}
	}
}

// lineBuffered tells whether r holds a whole line already.
func lineBuffered(r *bufio.Reader) bool {
	b, _ := r.Peek(r.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
}

// readData reads a message up to the line holding a single dot, and reports
// whether it got there.
func readData(r *bufio.Reader) bool {
	atLineStart := true
	for {
		line, err := r.ReadSlice('\n')
		switch err {
		case nil:
		case bufio.ErrBufferFull: // a line longer than the buffer: not its end
			atLineStart = false
			continue
		default:
			return false
		}
		if atLineStart && (string(line) == ".\r\n" || string(line) == ".\n") {
			return true
		}
		atLineStart = true
	}
}
