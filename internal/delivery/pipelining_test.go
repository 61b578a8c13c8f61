package delivery_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/delivery"
)

// scripted is an SMTP server on loopback that serves one connection at a
// time through a script, and checks how the client writes its commands.
type scripted struct {
	ln         net.Listener
	pipelining bool // offered in EHLO
	errs       chan error
}

func startScripted(t *testing.T, pipelining bool, script func(s *session) error) *scripted {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &scripted{ln: ln, pipelining: pipelining, errs: make(chan error, 16)}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s := &session{c: c, r: bufio.NewReader(c), pipelining: pipelining}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				err := s.greet()
				if err == nil {
					err = script(s)
				}
				srv.errs <- err
			}()
		}
	}()
	return srv
}

func (s *scripted) URL() string { return "smtp://" + s.ln.Addr().String() }

// result is what the script of the n-th connection returned.
func (s *scripted) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.errs:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("the script did not end")
		return nil
	}
}

type session struct {
	c          net.Conn
	r          *bufio.Reader
	pipelining bool
}

func (s *session) reply(lines ...string) error {
	_, err := s.c.Write([]byte(strings.Join(lines, "\r\n") + "\r\n"))
	return err
}

// expect reads one command line and checks that it starts with prefix.
func (s *session) expect(prefix string) error {
	line, err := s.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", prefix, err)
	}
	if !strings.HasPrefix(line, prefix) {
		return fmt.Errorf("got %q, want %s", line, prefix)
	}
	return nil
}

func (s *session) greet() error {
	if err := s.reply("220 scripted ESMTP"); err != nil {
		return err
	}
	if err := s.expect("EHLO "); err != nil {
		return err
	}
	if s.pipelining {
		return s.reply("250-scripted", "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 8BITMIME")
	}
	return s.reply("250-scripted", "250-ENHANCEDSTATUSCODES", "250 8BITMIME")
}

// envelope reads MAIL FROM, RCPT TO and DATA and answers them with replies.
// With PIPELINING offered, all three must come before any reply (a client
// waiting for the first reply makes the read time out); without, each
// command must come alone, after the reply to the one before.
func (s *session) envelope(replies ...string) error {
	cmds := []string{"MAIL FROM:<dana@vendor.example> BODY=8BITMIME", "RCPT TO:<", "DATA"}
	for i, cmd := range cmds {
		if s.pipelining {
			_ = s.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		} else if s.r.Buffered() > 0 {
			return fmt.Errorf("%s came before the reply to the command before it, without PIPELINING", cmd)
		}
		if err := s.expect(cmd); err != nil {
			return err
		}
		if !s.pipelining {
			if err := s.reply(replies[i]); err != nil {
				return err
			}
			if !strings.HasPrefix(replies[i], "2") && !strings.HasPrefix(replies[i], "3") {
				return nil // the client stops at a refusal
			}
		}
	}
	_ = s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if s.pipelining {
		return s.reply(replies...)
	}
	return nil
}

// body reads the message up to the end of DATA and accepts it.
func (s *session) body() error {
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the body: %w", err)
		}
		if line == ".\r\n" {
			return s.reply("250 2.0.0 queued")
		}
	}
}

// The envelope goes as one group to a server that offers PIPELINING, and in
// lock step to one that does not; both deliver, over one connection.
func TestMailerPipelinesTheEnvelope(t *testing.T) {
	t.Parallel()
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			t.Parallel()
			srv := startScripted(t, pipelining, func(s *session) error {
				for range 3 {
					if err := s.envelope("250 2.1.0 ok", "250 2.1.5 ok", "354 go ahead"); err != nil {
						return err
					}
					if err := s.body(); err != nil {
						return err
					}
				}
				if err := s.expect("QUIT"); err != nil {
					return err
				}
				return s.reply("221 bye")
			})
			m, err := delivery.NewMailer(srv.URL(), delivery.MailerOptions{Connections: 1})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if err := sendRaw(t, m, newMsg(t, fmt.Sprintf("c%d@customer.example", i), "Hi", "<p>x</p>")); err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
			}
			_ = m.Close()
			if err := srv.result(t); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A refusal inside the group is the message's failure, read with the replies
// after it, and the connection carries the next message (after RSET). A
// server that accepts DATA after refusing the recipient is left without a
// body: the connection is closed, not ended with a dot that would send an
// empty message.
func TestMailerPipelinedRefusal(t *testing.T) {
	t.Parallel()
	srv := startScripted(t, true, func(s *session) error {
		if err := s.envelope("250 2.1.0 ok", "550 5.1.1 no such user", "554 5.5.1 no valid recipients"); err != nil {
			return err
		}
		if err := s.expect("RSET"); err != nil {
			return err
		}
		if err := s.reply("250 2.0.0 reset"); err != nil {
			return err
		}
		if err := s.envelope("250 2.1.0 ok", "250 2.1.5 ok", "354 go ahead"); err != nil {
			return err
		}
		if err := s.body(); err != nil {
			return err
		}
		if err := s.envelope("250 2.1.0 ok", "451 4.3.0 try later", "354 go ahead"); err != nil {
			return err
		}
		// Nothing more comes on this connection: no body, no dot.
		_ = s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := s.r.ReadString('\n'); err == nil || errors.Is(err, net.ErrClosed) || isTimeout(err) {
			return fmt.Errorf("after DATA was accepted despite the refusal: read %q, %v; want the connection closed", line, err)
		}
		return nil
	})
	m, err := delivery.NewMailer(srv.URL(), delivery.MailerOptions{Connections: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })

	err = sendRaw(t, m, newMsg(t, "gone@customer.example", "Hi", "<p>x</p>"))
	if se := sendErr(t, err); se.Command != delivery.CommandRcpt || se.Code != 550 || se.Enhanced != "5.1.1" || !delivery.IsHardBounce(err) {
		t.Fatalf("got %+v, want a hard bounce at RCPT", se)
	}
	if err := sendRaw(t, m, newMsg(t, "ok@customer.example", "Hi", "<p>x</p>")); err != nil {
		t.Fatalf("send after the refusal: %v", err)
	}
	err = sendRaw(t, m, newMsg(t, "later@customer.example", "Hi", "<p>x</p>"))
	if se := sendErr(t, err); se.Command != delivery.CommandRcpt || se.Code != 451 || !se.Temporary || se.Stage != delivery.StageBeforeData {
		t.Fatalf("got %+v, want a temporary failure at RCPT before DATA", se)
	}
	if err := srv.result(t); err != nil {
		t.Fatal(err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
