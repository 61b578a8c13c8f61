package errs

import (
	"fmt"
	"testing"
)

func TestKindSurvivesWrapping(t *testing.T) {
	err := fmt.Errorf("account: upsert: %w", E(Conflict, "duplicate", "already there"))
	if KindOf(err) != Conflict || !Is(err, Conflict) {
		t.Fatalf("kind lost through wrapping: %v", KindOf(err))
	}
	if KindOf(fmt.Errorf("plain")) != Internal {
		t.Fatal("a plain error must be internal")
	}
}

func TestItems(t *testing.T) {
	var it Items
	if it.Err("events") != nil {
		t.Fatal("no items, no error")
	}
	it.Add(3, "account_id", "unknown account %q", "a-9")
	err := it.Err("events")
	var e *Error
	if !asError(err, &e) || e.Code != "invalid_batch" || len(e.Details["items"].([]ItemError)) != 1 {
		t.Fatalf("unexpected %#v", err)
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	*target = e
	return ok
}
