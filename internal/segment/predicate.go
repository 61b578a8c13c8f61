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

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
	"github.com/expr-lang/expr/vm/runtime"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
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
}

type identifiers map[string]bool

func (ids identifiers) Visit(node *ast.Node) {
	if id, ok := (*node).(*ast.IdentifierNode); ok {
		ids[id.Value] = true
	}
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
	ids := identifiers{}
	root := prog.Node()
	ast.Walk(&root, ids)
	return &Predicate{Source: src, program: prog, Maps: account.Maps{Features: ids["features"], Events: ids["events"], Traits: ids["traits"]}}, nil
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
