package delivery_test

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/smtptest"
)

// When the NOOP checking an idle pooled connection gets no answer, the
// connections idle as long or longer are given up unchecked and a new one
// is dialled: a handover waits for one NOOP at most, not one per idle
// connection, so that it stays within MaxHandOver.
func TestAnUnansweredNoopGivesUpTheOlderIdleConnections(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	fz := startFreezer(t, srv.Addr())
	const timeout = 300 * time.Millisecond
	m := newMailer(t, "smtp://"+fz.ln.Addr().String(), delivery.MailerOptions{Connections: 3, Timeout: timeout})
	m.SetIdleCheckAfter(0) // every idle connection is checked

	// Three connections at once (slow sends), then idle in the pool.
	srv.SetFault(smtptest.Fault{Kind: smtptest.NoFault, Delay: 100 * time.Millisecond})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			if err := m.Send(t.Context(), newMsg(t, "warm@customer.example", "warm", "<p>w</p>")); err != nil {
				t.Errorf("send %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	srv.SetFault(smtptest.Fault{})
	if fz.accepted.Load() != 3 {
		t.Fatalf("%d connections, want 3", fz.accepted.Load())
	}

	// The network drops them silently: nothing comes back on them.
	fz.freeze()
	start := time.Now()
	if err := m.Send(t.Context(), newMsg(t, "after@customer.example", "Hi", "<p>x</p>")); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if got := fz.noops.Load(); got != 1 {
		t.Errorf("%d NOOPs went unanswered, want 1", got)
	}
	if srv.Count() != 4 || fz.accepted.Load() != 4 {
		t.Errorf("accepted %d over %d connections, want 4 over 4", srv.Count(), fz.accepted.Load())
	}
	if took > delivery.MaxHandOver(timeout) {
		t.Errorf("the send took %s, more than MaxHandOver %s", took, delivery.MaxHandOver(timeout))
	}
}

// freezer is a TCP proxy to an SMTP server whose connections can be made to
// go silent, as a NAT that forgot them does: what the client writes then
// goes nowhere (NOOPs are counted), and nothing comes back.
type freezer struct {
	ln       net.Listener
	accepted atomic.Int32
	noops    atomic.Int32

	mu     sync.Mutex
	frozen []*atomic.Bool // one per connection so far
}

func startFreezer(t *testing.T, upstream string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			f.accepted.Add(1)
			frozen := &atomic.Bool{}
			f.mu.Lock()
			f.frozen = append(f.frozen, frozen)
			f.mu.Unlock()
			go func() {
				defer u.Close()
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if frozen.Load() {
							f.noops.Add(int32(bytes.Count(buf[:n], []byte("NOOP"))))
						} else if _, err := u.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer c.Close()
				io.Copy(c, u)
			}()
		}
	}()
	return f
}

// freeze silences every connection made so far.
func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.frozen {
		b.Store(true)
	}
}
