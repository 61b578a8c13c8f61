// Package clock is the one source of "now" in Tend.
//
// Every component that reads the time takes a Clock. Production runs on System;
// tests drive a Manual clock; demo mode (TEND_DEMO_CLOCK=true) runs on a Shared
// clock whose offset from real time lives in PostgreSQL, so that `tend clock
// advance 2d` moves time forward for every process at once.
//
// Work that is due is found by comparing stored times with Now() passed to SQL as
// a parameter, never with SQL's own now(): that way the clock really is the only
// authority on time, and moving it makes due work visible immediately.
package clock

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Clock tells the current time.
type Clock interface {
	Now() time.Time
}

// System is the real wall clock, in UTC.
type System struct{}

// Now returns the real time in UTC.
func (System) Now() time.Time { return time.Now().UTC() }

// Manual is a clock that only moves when told to. Safe for concurrent use.
type Manual struct {
	mu  sync.Mutex
	now time.Time
}

// NewManual returns a manual clock set to t.
func NewManual(t time.Time) *Manual { return &Manual{now: t.UTC()} }

// Now returns the clock's current time.
func (m *Manual) Now() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

// Set moves the clock to t.
func (m *Manual) Set(t time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.now = t.UTC()
}

// Advance moves the clock forward by d and returns the new time.
func (m *Manual) Advance(d time.Duration) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.now = m.now.Add(d)
	return m.now
}

// ParseDuration parses a Go duration with an extra unit "d" for 24-hour days, as
// used on the command line and in campaign waits: "2d", "36h", "1d12h", "90m".
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	var total time.Duration
	rest := s
	if i := strings.IndexByte(rest, 'd'); i >= 0 {
		days, err := strconv.Atoi(rest[:i])
		if err != nil || days < 0 {
			return 0, fmt.Errorf("invalid duration %q: days must be a whole number", s)
		}
		total = time.Duration(days) * 24 * time.Hour
		rest = rest[i+1:]
	}
	if rest != "" {
		d, err := time.ParseDuration(rest)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: use forms like 2d, 36h, 90m", s)
		}
		if d < 0 {
			return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
		}
		total += d
	}
	return total, nil
}
