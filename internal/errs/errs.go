// Package errs defines Tend's domain errors: an error carries a Kind (invalid,
// not found, conflict, ...), a machine-readable Code, a message safe to show a
// client, and optional details. Domain packages return them; the HTTP layer maps
// the Kind to a status code. Any other error is internal, and its text is never
// sent to a client.
package errs

import (
	"errors"
	"fmt"
)

// Kind classifies an error for the caller.
type Kind int

// The kinds of domain error.
const (
	Internal Kind = iota
	Invalid
	NotFound
	Conflict
	Unauthorized
	Forbidden
	TooLarge
	RateLimited
	Unavailable
)

// Error is a domain error.
type Error struct {
	Kind    Kind
	Code    string         // machine-readable, e.g. "invalid_batch"
	Message string         // for humans, safe to show to a client
	Details map[string]any // extra fields for the client, e.g. "items", "line"
	Err     error          // underlying cause, never shown to a client
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// E builds an error of the given kind.
func E(kind Kind, code, format string, args ...any) *Error {
	return &Error{Kind: kind, Code: code, Message: fmt.Sprintf(format, args...)}
}

// With returns a copy of e with a detail added.
func (e *Error) With(key string, value any) *Error {
	c := *e
	c.Details = make(map[string]any, len(e.Details)+1)
	for k, v := range e.Details {
		c.Details[k] = v
	}
	c.Details[key] = value
	return &c
}

// KindOf returns the kind of the first *Error in err's chain, Internal otherwise.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Internal
}

// Is reports whether err is a domain error of the given kind.
func Is(err error, kind Kind) bool { return err != nil && KindOf(err) == kind }

// ItemError is one bad item of a batch: its index in the request and why.
type ItemError struct {
	Index  int    `json:"index"`
	Field  string `json:"field,omitempty"`
	Reason string `json:"reason"`
}

// Items is a list of item errors collected while validating a batch.
type Items []ItemError

// Add records a bad item.
func (it *Items) Add(index int, field, format string, args ...any) {
	*it = append(*it, ItemError{Index: index, Field: field, Reason: fmt.Sprintf(format, args...)})
}

// Err returns nil when no item was bad, else an Invalid error listing them all.
func (it Items) Err(what string) error {
	if len(it) == 0 {
		return nil
	}
	return E(Invalid, "invalid_batch", "%d of the %s are invalid; nothing was stored", len(it), what).With("items", []ItemError(it))
}
