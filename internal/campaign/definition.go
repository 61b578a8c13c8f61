// Package campaign owns campaign definitions ("campaigns as code": YAML in
// campaigns/, the same JSON through the API), their validation and versions,
// the templates they use, and enrollment of accounts into drips.
package campaign

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"regexp"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/segment"
)

// Kinds of campaign.
const (
	KindDrip      = "drip"
	KindBroadcast = "broadcast"
)

// Channels of a step.
const (
	ChannelEmail = "email"
	ChannelInApp = "in_app"
)

// Exit policies of a drip.
const (
	ExitLeavesSegment = "leaves_segment" // stop when the account leaves the segment
	ExitNever         = "never"          // run every step whatever the segment does
)

// SenderCSM signs with the account's CSM (the team sender when it has none).
const SenderCSM = "csm"

// DefaultTopic is the topic of a campaign that names none.
const DefaultTopic = "general"

// Definition is a campaign as written in campaigns/*.yaml or sent as JSON.
type Definition struct {
	Name           string     `yaml:"name" json:"name"`
	Kind           string     `yaml:"kind" json:"kind"`
	Topic          string     `yaml:"topic,omitempty" json:"topic,omitempty"`
	Description    string     `yaml:"description,omitempty" json:"description,omitempty"`
	Segment        string     `yaml:"segment,omitempty" json:"segment,omitempty"`
	Audience       string     `yaml:"audience,omitempty" json:"audience,omitempty"`
	Sender         string     `yaml:"sender,omitempty" json:"sender,omitempty"`
	Exit           string     `yaml:"exit,omitempty" json:"exit,omitempty"`
	Goal           string     `yaml:"goal,omitempty" json:"goal,omitempty"`
	Window         *Window    `yaml:"window,omitempty" json:"window,omitempty"`
	EnrollExisting bool       `yaml:"enroll_existing,omitempty" json:"enroll_existing,omitempty"`
	ReenrollAfter  string     `yaml:"reenroll_after,omitempty" json:"reenroll_after,omitempty"`
	Steps          []Step     `yaml:"steps,omitempty" json:"steps,omitempty"`
	SendAt         *time.Time `yaml:"send_at,omitempty" json:"send_at,omitempty"`
	Variants       []Variant  `yaml:"variants,omitempty" json:"variants,omitempty"`
}

// Step is one message of a drip.
type Step struct {
	ID       string `yaml:"id" json:"id"`
	Wait     string `yaml:"wait" json:"wait"`
	Channel  string `yaml:"channel" json:"channel"`
	Template string `yaml:"template" json:"template"`
	Unless   string `yaml:"unless,omitempty" json:"unless,omitempty"`
	Expires  string `yaml:"expires,omitempty" json:"expires,omitempty"`
}

// Window is when messages may go out, in the contact's local time.
type Window struct {
	Days []string `yaml:"days,omitempty" json:"days,omitempty"`
	From string   `yaml:"from,omitempty" json:"from,omitempty"`
	To   string   `yaml:"to,omitempty" json:"to,omitempty"`
}

// Variant is one broadcast variant: the first whose segment the account is
// in wins.
type Variant struct {
	Segment  string `yaml:"segment" json:"segment"`
	Template string `yaml:"template" json:"template"`
	Channel  string `yaml:"channel,omitempty" json:"channel,omitempty"`
}

// Wait is a step's delay: Days are calendar days in the contact's time zone
// (DST-safe), D an exact duration (h, m).
type Wait struct {
	Days int
	D    time.Duration
}

var waitRe = regexp.MustCompile(`^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$`)

// ParseWait reads "0h", "2d", "36h", "1d12h", "90m".
func ParseWait(s string) (Wait, error) {
	m := waitRe.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil || s == "" {
		return Wait{}, fmt.Errorf("%q is not a wait; use forms like 0h, 2d, 36h, 1d12h, 90m", s)
	}
	var w Wait
	var h, min int
	fmt.Sscan(orZero(m[1]), &w.Days)
	fmt.Sscan(orZero(m[2]), &h)
	fmt.Sscan(orZero(m[3]), &min)
	w.D = time.Duration(h)*time.Hour + time.Duration(min)*time.Minute
	if w.Days > 3650 || w.D > 3650*24*time.Hour {
		return Wait{}, fmt.Errorf("%q is longer than ten years", s)
	}
	return w, nil
}

func orZero(s string) string {
	if s == "" {
		return "0"
	}
	return s
}

// After returns t plus the wait: calendar days in loc, then the exact duration.
func (w Wait) After(t time.Time, loc *time.Location) time.Time {
	if w.Days > 0 {
		lt := t.In(loc)
		y, mo, d := lt.Date()
		t = time.Date(y, mo, d+w.Days, lt.Hour(), lt.Minute(), lt.Second(), lt.Nanosecond(), loc)
	}
	return t.Add(w.D).UTC()
}

const maxDescriptionLen = 2000

var (
	nameRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	stepIDRe  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	hhmmRe    = regexp.MustCompile(`^([01]\d|2[0-3]):[0-5]\d$`)
	weekdays  = map[string]bool{"mon": true, "tue": true, "wed": true, "thu": true, "fri": true, "sat": true, "sun": true}
	templRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9_./-]{0,199}$`)
	topicRe   = nameRe
	errNoDocs = errors.New("no campaign in the input")
)

// ParseYAML reads one or more definitions separated by "---". Unknown keys
// are refused, so a typo never silently changes a campaign.
func ParseYAML(src []byte) ([]Definition, error) {
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	var out []Definition
	for {
		var d Definition
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, errs.E(errs.Invalid, "invalid_yaml", "%s", strings.TrimPrefix(err.Error(), "yaml: ")).With("field", "")
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, errs.E(errs.Invalid, "invalid_yaml", "%v", errNoDocs)
	}
	return out, nil
}

// Lookup answers what a definition refers to.
type Lookup interface {
	// SegmentExists reports whether a live segment has the name.
	SegmentExists(name string) bool
	// TemplateKind returns the kind ("email" or "nudge") of a template.
	TemplateKind(name string) (string, bool)
}

// Problem is one thing wrong with a definition, at a field path such as
// "steps[2].unless".
type Problem = errs.ItemError

// Validate checks a whole definition and fills defaults (topic, sender,
// exit). It returns every problem at once as an Invalid error whose details
// list each field.
func Validate(d *Definition, lk Lookup, clk clock.Clock) error {
	var p problems
	if !nameRe.MatchString(d.Name) {
		p.add("name", "is 1 to 63 lower-case letters, digits, - or _ (got %q)", d.Name)
	}
	if d.Topic == "" {
		d.Topic = DefaultTopic
	}
	if !topicRe.MatchString(d.Topic) {
		p.add("topic", "is 1 to 63 lower-case letters, digits, - or _ (got %q)", d.Topic)
	}
	if problem := postgres.BoundedTextProblem(d.Description, maxDescriptionLen); problem != "" {
		p.add("description", "%s", problem)
	}
	if d.Sender == "" {
		d.Sender = SenderCSM
	}
	if d.Sender != SenderCSM {
		if _, err := mail.ParseAddress(d.Sender); err != nil {
			p.add("sender", "is \"csm\" or an address such as \"Acme Success <success@acme.example>\" (got %q)", d.Sender)
		}
	}
	if d.Audience != "" {
		if _, err := CompileAudience(d.Audience, clk); err != nil {
			p.addErr("audience", err)
		}
	}
	if d.Window != nil {
		for i, day := range d.Window.Days {
			if !weekdays[day] {
				p.add(fmt.Sprintf("window.days[%d]", i), "is one of mon, tue, wed, thu, fri, sat, sun (got %q)", day)
			}
		}
		if !hhmmRe.MatchString(d.Window.From) {
			p.add("window.from", "is a time of day HH:MM (got %q)", d.Window.From)
		}
		if !hhmmRe.MatchString(d.Window.To) {
			p.add("window.to", "is a time of day HH:MM (got %q)", d.Window.To)
		}
		if hhmmRe.MatchString(d.Window.From) && hhmmRe.MatchString(d.Window.To) && d.Window.From >= d.Window.To {
			p.add("window", "from (%s) must be before to (%s)", d.Window.From, d.Window.To)
		}
	}
	switch d.Kind {
	case KindDrip:
		validateDrip(d, lk, clk, &p)
	case KindBroadcast:
		validateBroadcast(d, lk, &p)
	default:
		p.add("kind", "is drip or broadcast (got %q)", d.Kind)
	}
	if len(p) == 0 {
		return nil
	}
	return errs.E(errs.Invalid, "invalid_campaign", "campaign %q has %d problem(s): %s", d.Name, len(p), p[0].Field+" "+p[0].Reason).With("problems", []Problem(p))
}

func validateDrip(d *Definition, lk Lookup, clk clock.Clock, p *problems) {
	if d.Segment == "" {
		p.add("segment", "is required: a drip is entered when an account enters its segment")
	} else if !lk.SegmentExists(d.Segment) {
		p.add("segment", "no segment named %q", d.Segment)
	}
	if d.Exit == "" {
		d.Exit = ExitNever
	}
	if d.Exit != ExitLeavesSegment && d.Exit != ExitNever {
		p.add("exit", "is leaves_segment or never (got %q)", d.Exit)
	}
	if d.Goal != "" {
		if _, err := CompileGoal(d.Goal, clk); err != nil {
			p.addErr("goal", err)
		}
	}
	if d.ReenrollAfter != "" {
		if w, err := ParseWait(d.ReenrollAfter); err != nil || (w.Days == 0 && w.D == 0) {
			p.add("reenroll_after", "is a positive wait such as 90d (got %q)", d.ReenrollAfter)
		}
	}
	if d.SendAt != nil || len(d.Variants) > 0 {
		p.add("send_at", "send_at and variants belong to broadcasts, not drips")
	}
	if len(d.Steps) == 0 {
		p.add("steps", "a drip needs at least one step")
	}
	seen := map[string]int{}
	for i, s := range d.Steps {
		f := fmt.Sprintf("steps[%d]", i)
		if !stepIDRe.MatchString(s.ID) {
			p.add(f+".id", "is 1 to 63 lower-case letters, digits, - or _ (got %q)", s.ID)
		} else if j, dup := seen[s.ID]; dup {
			p.add(f+".id", "repeats steps[%d].id %q", j, s.ID)
		}
		seen[s.ID] = i
		if _, err := ParseWait(s.Wait); err != nil {
			p.add(f+".wait", "%v", err)
		}
		checkChannel(f, s.Channel, s.Template, lk, p)
		if s.Expires != "" {
			if w, err := ParseWait(s.Expires); err != nil || (w.Days == 0 && w.D == 0) {
				p.add(f+".expires", "is a positive wait such as 14d (got %q)", s.Expires)
			}
		}
		if s.Unless != "" {
			earlier := map[string]bool{}
			for _, e := range d.Steps[:i] {
				earlier[e.ID] = true
			}
			if _, err := CompileUnless(s.Unless, earlier, clk); err != nil {
				p.addErr(f+".unless", err)
			}
		}
	}
}

func validateBroadcast(d *Definition, lk Lookup, p *problems) {
	if d.SendAt == nil {
		p.add("send_at", "is required for a broadcast (an RFC 3339 time)")
	} else if problem := postgres.TimeProblem(*d.SendAt); problem != "" {
		// Stored, it would fail the query that finds due broadcasts, and
		// hold up every other broadcast.
		p.add("send_at", "%s", problem)
	}
	if d.Segment != "" || len(d.Steps) > 0 || d.Goal != "" || d.ReenrollAfter != "" || d.EnrollExisting || d.Exit != "" {
		p.add("kind", "a broadcast has send_at and variants, not segment, steps, goal, exit or enrollment settings")
	}
	if len(d.Variants) == 0 {
		p.add("variants", "a broadcast needs at least one variant")
	}
	seen := map[string]int{}
	for i, v := range d.Variants {
		f := fmt.Sprintf("variants[%d]", i)
		if !lk.SegmentExists(v.Segment) {
			p.add(f+".segment", "no segment named %q", v.Segment)
		}
		if j, dup := seen[v.Segment]; dup {
			p.add(f+".segment", "repeats variants[%d]; the first matching variant wins, so this one could never be sent", j)
		}
		seen[v.Segment] = i
		if v.Channel == "" {
			d.Variants[i].Channel = ChannelEmail
		}
		checkChannel(f, d.Variants[i].Channel, v.Template, lk, p)
	}
}

// templateKinds maps a channel to the kind of template it sends.
var templateKinds = map[string]string{ChannelEmail: TemplateEmail, ChannelInApp: TemplateNudge}

// checkChannel checks a step's or variant's channel and that its template
// exists and is of the channel's kind.
func checkChannel(field, channel, template string, lk Lookup, p *problems) {
	want, ok := templateKinds[channel]
	if !ok {
		p.add(field+".channel", "is email or in_app (got %q)", channel)
	}
	checkTemplate(field+".template", template, want, lk, p)
}

func checkTemplate(field, name, wantKind string, lk Lookup, p *problems) {
	if !templRe.MatchString(name) {
		p.add(field, "names a template such as at-risk/checkin (got %q)", name)
		return
	}
	kind, ok := lk.TemplateKind(name)
	switch {
	case !ok:
		p.add(field, "no template named %q (apply templates/ with the campaign, or PUT /v1/templates/%s)", name, name)
	case wantKind != "" && kind != wantKind:
		p.add(field, "template %q is a %s template; this channel needs a %s template", name, kind, wantKind)
	}
}

type problems []Problem

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, Problem{Field: field, Reason: fmt.Sprintf(format, args...)})
}

// addErr records an expression error with its line and column.
func (p *problems) addErr(field string, err error) {
	var e *errs.Error
	if errors.As(err, &e) {
		*p = append(*p, Problem{Field: field, Reason: e.Message})
		return
	}
	p.add(field, "%v", err)
}

// ContactEnv is what campaign expressions see of a contact (contact.role, ...).
type ContactEnv struct {
	ID       string         `expr:"id"`
	Email    string         `expr:"email"`
	Name     string         `expr:"name"`
	Role     string         `expr:"role"`
	Timezone string         `expr:"timezone"`
	Locale   string         `expr:"locale"`
	Traits   map[string]any `expr:"traits"`
}

// AudienceEnv is the environment of an audience expression: the account's
// profile and the contact.
type AudienceEnv struct {
	*account.Profile
	Contact ContactEnv `expr:"contact"`
}

// StepState is what opened() and clicked() read: the steps this contact
// opened or clicked (human activity only) in this enrollment.
type StepState struct {
	Opened  map[string]bool
	Clicked map[string]bool
}

// UnlessEnv is the environment of a step's unless expression.
type UnlessEnv struct {
	*account.Profile
	Contact ContactEnv `expr:"contact"`
	State   *StepState `expr:"_state"`
}

// CompileAudience compiles an audience expression.
func CompileAudience(src string, clk clock.Clock) (*vm.Program, error) {
	return segment.CompileWith(src, segment.Options(AudienceEnv{}, clk))
}

// CompileGoal compiles a goal expression (over the account's profile).
func CompileGoal(src string, clk clock.Clock) (*vm.Program, error) {
	return segment.CompileWith(src, segment.Options(account.Profile{}, clk))
}

// CompileUnless compiles a step's unless expression. opened("step") and
// clicked("step") must name one of the earlier steps.
func CompileUnless(src string, earlier map[string]bool, clk clock.Clock) (*vm.Program, error) {
	declare := func(name string) expr.Option {
		return expr.Function(name, func(...any) (any, error) {
			return nil, fmt.Errorf("%s() runs only in a step condition", name)
		}, new(func(string) bool))
	}
	opts := append(segment.Options(UnlessEnv{}, clk), declare("opened"), declare("clicked"))
	prog, err := segment.CompileWith(src, opts,
		expr.Function("_opened", func(p ...any) (any, error) { return stateOf(p[0]).Opened[p[1].(string)], nil }, new(func(*StepState, string) bool)),
		expr.Function("_clicked", func(p ...any) (any, error) { return stateOf(p[0]).Clicked[p[1].(string)], nil }, new(func(*StepState, string) bool)),
		expr.Patch(engagementCalls{}),
	)
	if err != nil {
		return nil, err
	}
	var bad error
	root := prog.Node()
	ast.Walk(&root, stepRefs(func(fn string, arg ast.Node) {
		s, ok := arg.(*ast.StringNode)
		switch {
		case bad != nil:
		case !ok:
			bad = errs.E(errs.Invalid, "invalid_predicate", "%s() takes a step id in quotes, such as %s(\"checkin\")", fn, fn)
		case !earlier[s.Value]:
			bad = errs.E(errs.Invalid, "invalid_predicate", "%s(%q): no earlier step has that id", fn, s.Value)
		}
	}))
	return prog, bad
}

func stateOf(v any) *StepState {
	if s, ok := v.(*StepState); ok && s != nil {
		return s
	}
	return &StepState{}
}

// engagementCalls rewrites opened(x) / clicked(x) into _opened(_state, x) /
// _clicked(_state, x), so they read the evaluation's StepState.
type engagementCalls struct{}

func (engagementCalls) Visit(node *ast.Node) {
	c, ok := (*node).(*ast.CallNode)
	if !ok || len(c.Arguments) != 1 {
		return
	}
	id, ok := c.Callee.(*ast.IdentifierNode)
	if !ok || (id.Value != "opened" && id.Value != "clicked") {
		return
	}
	ast.Patch(node, &ast.CallNode{
		Callee:    &ast.IdentifierNode{Value: "_" + id.Value},
		Arguments: []ast.Node{&ast.IdentifierNode{Value: "_state"}, c.Arguments[0]},
	})
}

// stepRefs calls fn for every opened()/clicked() call (after patching).
type stepRefs func(fn string, arg ast.Node)

func (f stepRefs) Visit(node *ast.Node) {
	c, ok := (*node).(*ast.CallNode)
	if !ok || len(c.Arguments) != 2 {
		return
	}
	if id, ok := c.Callee.(*ast.IdentifierNode); ok && (id.Value == "_opened" || id.Value == "_clicked") {
		f(strings.TrimPrefix(id.Value, "_"), c.Arguments[1])
	}
}

// canonical returns the definition as canonical JSON, for versions and diffs.
func canonical(d Definition) ([]byte, error) {
	return json.Marshal(d)
}

// weekdayNames maps window day names to time.Weekday.
var weekdayNames = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday,
	"wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// Next returns the first moment at or after t that falls inside the window,
// in loc: t itself when it is inside, else the start of the next allowed
// day's window. Days are calendar days in loc, so DST changes keep the
// local time of day. A nil window allows any time.
func (w *Window) Next(t time.Time, loc *time.Location) time.Time {
	if w == nil {
		return t
	}
	days := map[time.Weekday]bool{}
	for _, d := range w.Days {
		days[weekdayNames[d]] = true
	}
	if len(days) == 0 {
		for d := time.Sunday; d <= time.Saturday; d++ {
			days[d] = true
		}
	}
	fh, fm := clockOf(w.From, 0)
	th, tm := clockOf(w.To, 24)
	lt := t.In(loc)
	for i := 0; i < 8; i++ {
		y, mo, d := lt.Date()
		day := time.Date(y, mo, d+i, 0, 0, 0, 0, loc)
		if !days[day.Weekday()] {
			continue
		}
		from := time.Date(day.Year(), day.Month(), day.Day(), fh, fm, 0, 0, loc)
		to := time.Date(day.Year(), day.Month(), day.Day(), th, tm, 0, 0, loc)
		switch {
		case i == 0 && !lt.Before(from) && lt.Before(to):
			return t
		case i == 0 && lt.Before(from), i > 0:
			return from.UTC()
		}
	}
	return t // unreachable with at least one allowed day
}

func clockOf(hhmm string, defHour int) (int, int) {
	var h, m int
	if _, err := fmt.Sscanf(hhmm, "%d:%d", &h, &m); err != nil {
		return defHour, 0
	}
	return h, m
}

// VariantStepID is the step id of a broadcast variant's messages: a
// broadcast runs as one step per variant, so the outbox, stats and "once"
// work as for drips.
func VariantStepID(segment string) string { return "variant-" + segment }

// BroadcastSteps returns the steps a broadcast runs as: one per variant.
func (d Definition) BroadcastSteps() []Step {
	steps := make([]Step, len(d.Variants))
	for i, v := range d.Variants {
		ch := v.Channel
		if ch == "" {
			ch = ChannelEmail
		}
		steps[i] = Step{ID: VariantStepID(v.Segment), Wait: "0h", Channel: ch, Template: v.Template}
	}
	return steps
}

// Decode reads a stored definition. A broadcast gets its steps, one per
// variant, so that everything downstream handles both kinds alike.
func Decode(raw []byte) (Definition, error) {
	var d Definition
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, fmt.Errorf("campaign: decode definition: %w", err)
	}
	if d.Kind == KindBroadcast {
		d.Steps = d.BroadcastSteps()
	}
	return d, nil
}
