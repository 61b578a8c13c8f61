package delivery_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/delivery"
	"github.com/tendhq/tend/internal/smtptest"
)

// raw serialises a message for SendRaw.
func raw(t *testing.T, to string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := newMsg(t, to, "Hi", "<p>.x</p>").WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// reserveWithin reports whether Reserve gets a connection within d.
func reserveWithin(m *delivery.Mailer, d time.Duration) (*delivery.Reservation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return m.Reserve(ctx, 1)
}

// Reserve takes the free connections, up to what is asked; a reservation
// grows into connections freed since and shrinks back; what it holds nobody
// else can take.
func TestMailerReservations(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	m := newMailer(t, srv.URL(), delivery.MailerOptions{Connections: 4})

	a, err := m.Reserve(t.Context(), 3)
	if err != nil || a.Len() != 3 {
		t.Fatalf("Reserve(3) = %v, %v; want 3 connections", a, err)
	}
	b, err := m.Reserve(t.Context(), 3)
	if err != nil || b.Len() != 1 {
		t.Fatalf("Reserve(3) with one free = %v, %v; want 1 connection", b, err)
	}
	// None free: Reserve and Send wait, and give up with their context.
	if _, err := reserveWithin(m, 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) || !sendErr(t, err).Temporary {
		t.Fatalf("Reserve with none free: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := m.Send(ctx, newMsg(t, "w@customer.example", "Hi", "<p>x</p>")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send with none free: %v", err)
	}

	a.Shrink(1)
	if a.Len() != 1 {
		t.Fatalf("after Shrink(1): %d", a.Len())
	}
	b.Grow(10)
	if b.Len() != 3 {
		t.Fatalf("after Grow(10) with two free: %d, want 3", b.Len())
	}
	a.Shrink(0) // keeps one
	if a.Len() != 1 {
		t.Fatalf("after Shrink(0): %d, want 1", a.Len())
	}

	// Up to Len sends at once, each on its own connection.
	var wg sync.WaitGroup
	errs := make([]error, b.Len())
	for i := range errs {
		to := fmt.Sprintf("r%d@customer.example", i)
		data := raw(t, to)
		wg.Go(func() { errs[i] = b.SendRaw(t.Context(), "dana@vendor.example", []string{to}, data) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("send %d: %v", i, err)
		}
	}
	if srv.Count() != 3 {
		t.Fatalf("server accepted %d, want 3", srv.Count())
	}

	a.Release()
	b.Release()
	c, err := reserveWithin(m, time.Second)
	if err != nil {
		t.Fatalf("Reserve after Release: %v", err)
	}
	if c.Grow(4); c.Len() != 4 {
		t.Fatalf("every connection is free again: got %d of 4", c.Len())
	}
	c.Release()
}

// More sends at once than connections reserved fail before DATA, and are
// safe to retry.
func TestReservationOverbooked(t *testing.T) {
	t.Parallel()
	srv := smtptest.Start(t)
	srv.SetFault(smtptest.Fault{Delay: 300 * time.Millisecond, Times: 1})
	m := newMailer(t, srv.URL(), delivery.MailerOptions{Connections: 2})
	r, err := m.Reserve(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	first := make(chan error, 1)
	data := raw(t, "a@customer.example")
	go func() { first <- r.SendRaw(t.Context(), "dana@vendor.example", []string{"a@customer.example"}, data) }()
	// Wait until the first send holds the connection, then try another.
	deadline := time.Now().Add(5 * time.Second)
	for srv.Connections() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	err = r.SendRaw(t.Context(), "dana@vendor.example", []string{"b@customer.example"}, raw(t, "b@customer.example"))
	if se := sendErr(t, err); se.Stage != delivery.StageBeforeData || !se.Temporary {
		t.Fatalf("second send at once on one connection: %v", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("first send: %v", err)
	}
	if srv.Count() != 1 {
		t.Fatalf("server accepted %d, want 1", srv.Count())
	}
}
