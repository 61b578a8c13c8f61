package postgres_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/testsvc"
)

// The checks agree with PostgreSQL itself: what they pass, it stores; what
// it refuses, they refuse. (Their bounds on JSON numbers are tighter than
// numeric's, well beyond any of these.)
func TestChecksAgreeWithPostgreSQL(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	ctx := context.Background()
	stores := func(query string, arg any) bool {
		t.Helper()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		_, err = tx.ExecContext(ctx, query, arg)
		return err == nil
	}

	for _, s := range []string{"", "plain", "café 😀", "a\x00b", "\x00", "\xff", "caf\xc3", "\xed\xa0\x80"} {
		ok := postgres.TextProblem(s) == ""
		if got := stores(`SELECT $1::text`, s); got != ok {
			t.Errorf("text %q: PostgreSQL stores it: %v, TextProblem passes it: %v", s, got, ok)
		}
		if c := postgres.CleanText(s); postgres.TextProblem(c) != "" || !stores(`SELECT $1::text`, c) {
			t.Errorf("CleanText(%q) = %q is still refused", s, c)
		}
	}

	for _, j := range []string{
		`{}`, `{"a": "b"}`, `{"k": "\\u0000"}`, `{"k": "\\\\u0000"}`, `{"k": "\\\"\\u0041"}`, `{"k": "\u00e9\ud83d\ude00"}`,
		`[1, -2.5e-300, 1e300, 0, -0, 1E+5, 123456789012345678901234567890]`, `{"k": 1e-1000}`,
		`{"k": "\u0000"}`, `{"k\u0000": 1}`, `["\u0000"]`, `{"k": "a\\\u0000"}`,
		"{\"k\": \"\xff\"}", `{"k": "\ud800"}`, `{"k": "\udc00"}`, `{"k": "\ud800\u0041"}`, `{"k": "\ud800x"}`, `{"k": "\udbff\udfff"}`,
		`{"k": 1e400}`, `{"k": 1e-20000}`, `{"k": 1e1001}`, `{"k": 1` + strings.Repeat("0", 400) + `}`,
	} {
		if !json.Valid([]byte(j)) {
			if !strings.Contains(j, "\xff") {
				t.Fatalf("test case %s is not JSON", j)
			}
		}
		ok := postgres.JSONProblem([]byte(j)) == ""
		// A number that PostgreSQL stores but float64 cannot hold is
		// refused all the same: the profile reads traits into float64.
		var v any
		goReads := json.Unmarshal([]byte(j), &v) == nil
		if got := stores(`SELECT $1::jsonb`, j) && goReads; got != ok {
			t.Errorf("JSON %s: PostgreSQL stores it and Go reads it: %v, JSONProblem passes it: %v", j, got, ok)
		}
	}

	for _, tm := range []time.Time{
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(0, 12, 31, 23, 0, 0, 0, time.UTC), time.Date(1, 1, 1, 0, 30, 0, 0, time.FixedZone("", 3600)),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 0, 0, 0, time.FixedZone("", -7200)),
	} {
		ok := postgres.TimeProblem(tm) == ""
		// Statements take times as parameters and in JSON rows, in their
		// own offset or in UTC.
		got := stores(`SELECT $1::timestamptz`, tm)
		for _, v := range []time.Time{tm, tm.UTC()} {
			b, err := json.Marshal(v)
			got = got && err == nil && stores(`SELECT ($1::jsonb #>> '{}')::timestamptz`, string(b))
		}
		if got != ok {
			t.Errorf("time %s: PostgreSQL stores it: %v, TimeProblem passes it: %v", tm, got, ok)
		}
	}
}

func TestTruncateText(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abcdef", 3, "abc"},
		{"abé", 3, "ab"}, // the cut falls inside é
		{"ab😀", 5, "ab"}, // and inside a four-byte character
		{"ab\xffc\x00d", 9, "ab\uFFFDcd"},
		{"é", 0, ""},
	} {
		if got := postgres.TruncateText(c.in, c.n); got != c.want {
			t.Errorf("TruncateText(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}
