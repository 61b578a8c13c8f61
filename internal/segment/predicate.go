// Package segment owns behavioral segments: predicates written in expr over an
// account's profile, their membership and its history, and the engine that
// keeps membership right as data changes (per account, on change) and as time
// passes (in sharded full passes).
package segment

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
	"github.com/expr-lang/expr/vm/runtime"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Limits on a predicate.
const (
	MaxPredicateLen   = 4000
	MaxPredicateNodes = 500
)

// Predicate is a compiled segment predicate.
type Predicate struct {
	Source  string
	program *vm.Program
	// Maps says which of the profile's map fields the predicate reads, so
	// that evaluation decodes only those.
	Maps account.Maps
	// Time says how the predicate's result can change while the account's
	// data stays the same and its profile valid.
	Time TimeDeps
}

// TimeDeps says through which clock readings a predicate can change its
// result for one account while the account's data (its change_version) stays
// the same and its profile valid (account.Cached.ValidUntil). Everything else
// in the profile is fixed for that account until then (the windows' counts,
// the health score), so a predicate with no TimeDeps keeps its result.
type TimeDeps struct {
	// SignupDays: the whole days since signup_at (days_since_signup, or
	// days_since(signup_at)), which change once a day at the signup's time
	// of day.
	SignupDays bool
	// LoginDays: the whole days since last_login_at, likewise.
	LoginDays bool
	// Always: the clock read otherwise (now(), days_since of anything
	// else): the result may change at any moment.
	Always bool
}

// Any reports whether the predicate depends on the clock at all.
func (t TimeDeps) Any() bool { return t.SignupDays || t.LoginDays || t.Always }

// analysis collects what a compiled predicate reads: the identifiers (for
// Maps) and its dependence on the clock. It errs on the side of "depends":
// whatever it cannot classify reads the clock Always.
type analysis struct {
	ids  map[string]bool
	time TimeDeps
	// days_since as a name and as a call whose argument was classified:
	// a name used any other way counts as Always.
	daysSinceNames, daysSinceCalls int
}

func (a *analysis) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.IdentifierNode:
		a.ids[n.Value] = true
		switch n.Value {
		case "days_since_signup":
			a.time.SignupDays = true
		case "days_since_last_login":
			a.time.LoginDays = true
		case "days_since":
			a.daysSinceNames++
		case "now":
			a.time.Always = true
		}
	case *ast.CallNode:
		id, ok := n.Callee.(*ast.IdentifierNode)
		if !ok || id.Value != "days_since" {
			return
		}
		a.daysSinceCalls++
		// days_since(signup_at) and days_since(last_login_at) are the
		// whole-day fields by another name (same clock, same rounding).
		if len(n.Arguments) == 1 {
			if arg, ok := n.Arguments[0].(*ast.IdentifierNode); ok {
				switch arg.Value {
				case "signup_at":
					a.time.SignupDays = true
					return
				case "last_login_at":
					a.time.LoginDays = true
					return
				}
			}
		}
		a.time.Always = true
	case *ast.BuiltinNode:
		if n.Name == "now" {
			a.time.Always = true
		}
		// The optimizer folds map() into filter() and friends here, where
		// ast.Walk does not look.
		if n.Map != nil {
			ast.Walk(&n.Map, a)
		}
	}
}

// analyse walks a compiled program's tree.
func analyse(prog *vm.Program) *analysis {
	a := &analysis{ids: map[string]bool{}}
	root := prog.Node()
	ast.Walk(&root, a)
	if a.daysSinceNames != a.daysSinceCalls {
		a.time.Always = true
	}
	return a
}

// Options returns the expr options of the predicate environment over env (a
// zero value of the environment struct), with now() and days_since() on clk.
// Campaign expressions (audience, goal, unless) build on the same options.
func Options(env any, clk clock.Clock) []expr.Option {
	return []expr.Option{
		expr.Env(env),
		expr.AsBool(),
		expr.MaxNodes(MaxPredicateNodes),
		expr.Timezone("UTC"),
		expr.DisableBuiltin("now"),
		expr.Function("now", func(...any) (any, error) { return clk.Now(), nil }, new(func() time.Time)),
		expr.Function("days_since", func(p ...any) (any, error) {
			t, ok := p[0].(time.Time)
			if !ok {
				return nil, fmt.Errorf("days_since wants a time, got %T", p[0])
			}
			d := clk.Now().Sub(t)
			if d < 0 {
				return 0, nil
			}
			return int(d / (24 * time.Hour)), nil
		}, new(func(time.Time) int)),
	}
}

// nilSafeOptions route ordering comparisons with a dynamically typed side
// through nil-safe functions. They are added after type checking, because a
// patched comparison would also hide an unknown name.
var nilSafeOptions = []expr.Option{
	expr.Function(cmpFuncs["<"], nilSafe(runtime.Less), new(func(any, any) bool)),
	expr.Function(cmpFuncs[">"], nilSafe(runtime.More), new(func(any, any) bool)),
	expr.Function(cmpFuncs["<="], nilSafe(runtime.LessOrEqual), new(func(any, any) bool)),
	expr.Function(cmpFuncs[">="], nilSafe(runtime.MoreOrEqual), new(func(any, any) bool)),
	expr.Patch(nilComparisons{}),
}

// Compile type-checks a predicate against the account profile. Errors are
// Invalid, with the line and column (1-based) where expr found the problem.
func Compile(src string, clk clock.Clock) (*Predicate, error) {
	prog, err := CompileWith(src, Options(account.Profile{}, clk))
	if err != nil {
		return nil, err
	}
	a := analyse(prog)
	return &Predicate{Source: src, program: prog, Time: a.time,
		Maps: account.Maps{Features: a.ids["features"], Events: a.ids["events"], Traits: a.ids["traits"]}}, nil
}

// CompileWith compiles an expression with the given options, turning expr's
// errors into Invalid domain errors with a line and column. The expression is
// type-checked with opts as written; the program that runs is compiled with
// the nil-safe comparison patch and runtime (extra patches that rewrite calls
// for evaluation, such as campaign conditions' opened()).
func CompileWith(src string, opts []expr.Option, runtime ...expr.Option) (*vm.Program, error) {
	if strings.TrimSpace(src) == "" {
		return nil, errs.E(errs.Invalid, "invalid_predicate", "the predicate is empty").With("line", 1).With("column", 1)
	}
	if len(src) > MaxPredicateLen {
		return nil, errs.E(errs.Invalid, "invalid_predicate", "the predicate is longer than %d characters", MaxPredicateLen).With("line", 1).With("column", 1)
	}
	if p := postgres.TextProblem(src); p != "" {
		line, col := notText(src)
		return nil, errs.E(errs.Invalid, "invalid_predicate", "the predicate %s (line %d, column %d)", p, line, col).
			With("line", line).With("column", col)
	}
	// Type-check as written first, then compile with the nil-safe patch.
	_, err := expr.Compile(src, opts...)
	var prog *vm.Program
	if err == nil {
		all := append(append(append([]expr.Option{}, opts...), nilSafeOptions...), runtime...)
		prog, err = expr.Compile(src, all...)
	}
	if err != nil {
		line, col, msg := 1, 1, err.Error()
		var fe *file.Error
		if errors.As(err, &fe) {
			line, col, msg = fe.Line, fe.Column+1, fe.Message
			if line < 1 {
				line = 1
			}
		}
		return nil, errs.E(errs.Invalid, "invalid_predicate", "%s (line %d, column %d)", msg, line, col).
			With("line", line).With("column", col)
	}
	return prog, nil
}

// notText returns the line and column (1-based, in characters) of the first
// NUL or byte that is not UTF-8 in src.
func notText(src string) (line, col int) {
	line, col = 1, 1
	for i, r := range src {
		if r == 0 || r == utf8.RuneError && !strings.HasPrefix(src[i:], "\uFFFD") {
			break
		}
		col++
		if r == '\n' {
			line, col = line+1, 1
		}
	}
	return line, col
}

// Matcher evaluates predicates; it reuses one expr VM and is not safe for
// concurrent use (make one per goroutine).
type Matcher struct{ vm vm.VM }

// Match runs p against one profile. A runtime error (a trait of the wrong
// type, say) is returned for the caller to count; the account does not match.
func (m *Matcher) Match(p *Predicate, prof *account.Profile) (bool, error) {
	return m.Run(p.program, prof)
}

// Run runs any compiled boolean program against env.
func (m *Matcher) Run(prog *vm.Program, env any) (bool, error) {
	out, err := m.vm.Run(prog, env)
	if err != nil {
		return false, err
	}
	b, _ := out.(bool)
	return b, nil
}

// Ordering comparisons where one side's type is only known at run time (a
// trait, say) go through these functions, so that a missing value (nil)
// compares false instead of failing, while a value of the wrong type still
// fails.
var cmpFuncs = map[string]string{"<": "_lt", ">": "_gt", "<=": "_le", ">=": "_ge"}

func nilSafe(cmp func(a, b any) bool) func(...any) (any, error) {
	return func(p ...any) (res any, err error) {
		if p[0] == nil || p[1] == nil {
			return false, nil
		}
		defer func() {
			if r := recover(); r != nil {
				res, err = false, fmt.Errorf("cannot compare %T with %T", p[0], p[1])
			}
		}()
		return cmp(p[0], p[1]), nil
	}
}

type nilComparisons struct{}

func (nilComparisons) Visit(node *ast.Node) {
	b, ok := (*node).(*ast.BinaryNode)
	if !ok {
		return
	}
	fn, ok := cmpFuncs[b.Operator]
	if !ok || !(dynamic(b.Left) || dynamic(b.Right)) {
		return
	}
	ast.Patch(node, &ast.CallNode{Callee: &ast.IdentifierNode{Value: fn}, Arguments: []ast.Node{b.Left, b.Right}})
}

func dynamic(n ast.Node) bool {
	t := n.Type()
	return t == nil || t.Kind() == reflect.Interface
}
