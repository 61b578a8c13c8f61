// Command tend is Tend's one binary: the HTTP API, the asynq worker, and the
// operator's commands.
//
//	tend serve | worker | all        run the API, the worker, or both
//	tend migrate                     create the database if missing and migrate it
//	tend keys create --name N --role R | keys list | keys revoke ID
//	tend clock advance DURATION | clock show   (demo mode)
//	tend seed --demo [--accounts N] [--seed S] [--if-empty]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	_ "time/tzdata" // every IANA zone, whatever the host has

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/app"
	"github.com/tendhq/tend/internal/audit"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/config"
	"github.com/tendhq/tend/internal/demo"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

const usage = `tend: customer-marketing drip campaigns for Customer Success teams

usage:
  tend all                                   run the API and the worker in one process (local default)
  tend serve                                 run the HTTP API
  tend worker                                run the background worker
  tend migrate                               create the database if missing, apply migrations
  tend keys create --name NAME --role ROLE   make an API key and print it once (roles: admin, marketing, csm, product, ingest)
  tend keys list                             list API keys
  tend keys revoke ID                        revoke an API key at once
  tend campaigns apply DIR [--templates T] [--activate]
                                             store campaigns/*.yaml and the templates/ they use (new campaigns are drafts)
  tend campaigns diff DIR [--templates T]    print what apply would change, changing nothing
  tend clock show                            print the clock (demo mode shares it through PostgreSQL)
  tend clock advance DURATION                move the demo clock forward, e.g. 2d or 36h (TEND_DEMO_CLOCK=true)
  tend seed --demo [--accounts N] [--seed S] [--if-empty]
                                             load demo data: CSMs, N accounts (default 2000) with contacts and 90 days
                                             of usage, and the demo segments; --if-empty skips a database with accounts
  tend help                                  this text

Configuration comes from TEND_* environment variables; see README.md.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tend:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	cfg, err := config.Load(nil)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	for _, w := range cfg.Warnings() {
		log.Warn(w)
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case app.ModeServe, app.ModeWorker, app.ModeAll:
		app.TuneGC()
		a, err := app.New(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer a.Close()
		return a.Run(ctx, cmd)
	case "migrate":
		return migrate(ctx, cfg, log)
	case "keys":
		return keys(ctx, cfg, log, rest, stdout)
	case "clock":
		return clockCmd(ctx, cfg, log, rest, stdout)
	case "campaigns":
		return campaignsCmd(ctx, cfg, log, rest, stdout)
	case "seed":
		return seedCmd(ctx, cfg, log, rest, stdout)
	default:
		return fmt.Errorf("unknown command %q; run `tend help`", cmd)
	}
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func migrate(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	created, err := postgres.EnsureDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	if created {
		log.Info("created database")
	}
	db, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	res, err := postgres.Migrate(ctx, db.DB)
	for _, r := range res {
		log.Info("migrated", "version", r.Source.Version, "file", r.Source.Path, "took", r.Duration)
	}
	if err != nil {
		return err
	}
	log.Info("database is up to date", "applied", len(res))
	return nil
}

// open wires the app for an operator command, migrating first so that the
// command works on a fresh database too.
func open(ctx context.Context, cfg config.Config, log *slog.Logger) (*app.App, error) {
	cfg.MigrateOnStart = true
	return app.New(ctx, cfg, log)
}

func keys(ctx context.Context, cfg config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("keys: want create, list or revoke")
	}
	a, err := open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	switch args[0] {
	case "create":
		fs := flag.NewFlagSet("keys create", flag.ContinueOnError)
		name := fs.String("name", "", "a name for the key (who or what uses it)")
		role := fs.String("role", "", "admin, marketing, csm, product or ingest")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		r, err := apikey.ParseRole(*role)
		if err != nil {
			return err
		}
		k, secret, err := a.Keys.Create(ctx, *name, r)
		if err != nil {
			return err
		}
		log.Info("created API key; it is shown once", "id", k.ID, "name", k.Name, "role", k.Role)
		fmt.Fprintln(stdout, secret)
		return cliAudit(ctx, a, "keys create", fmt.Sprintf("key %d (%s, %s)", k.ID, k.Name, k.Role))
	case "list":
		ks, err := a.Keys.List(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tROLE\tPREFIX\tCREATED\tREVOKED")
		for _, k := range ks {
			revoked := ""
			if k.RevokedAt != nil {
				revoked = k.RevokedAt.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s…\t%s\t%s\n", k.ID, k.Name, k.Role, k.Prefix, k.CreatedAt.Format(time.RFC3339), revoked)
		}
		return tw.Flush()
	case "revoke":
		if len(args) != 2 {
			return errors.New("keys revoke: want the key's id (see `tend keys list`)")
		}
		id, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil {
			return fmt.Errorf("keys revoke: %q is not a key id", args[1])
		}
		k, err := a.Keys.Revoke(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked key %d (%s)\n", k.ID, k.Name)
		return cliAudit(ctx, a, "keys revoke", fmt.Sprintf("key %d (%s)", k.ID, k.Name))
	default:
		return fmt.Errorf("keys: unknown subcommand %q", args[0])
	}
}

func campaignsCmd(ctx context.Context, cfg config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 || (args[0] != "apply" && args[0] != "diff") {
		return errors.New("campaigns: want apply DIR or diff DIR")
	}
	fs := flag.NewFlagSet("campaigns "+args[0], flag.ContinueOnError)
	templates := fs.String("templates", "", "the templates folder (default: templates/ beside DIR)")
	activate := fs.Bool("activate", false, "activate every applied campaign that is a draft (a paused one stays paused)")
	// Flags may come before or after DIR.
	var dir string
	rest := args[1:]
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		dir, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return err
	}
	if dir == "" && fs.NArg() > 0 {
		dir = fs.Arg(0)
	}
	if dir == "" {
		return fmt.Errorf("campaigns %s: want the campaigns folder, e.g. campaigns/", args[0])
	}
	if *templates == "" {
		*templates = filepath.Join(filepath.Dir(filepath.Clean(dir)), "templates")
	}
	b, err := campaign.LoadDir(dir, *templates)
	if err != nil {
		return describe(err)
	}
	a, err := open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	dry := args[0] == "diff"
	changes, err := a.Campaigns.Apply(ctx, b, dry)
	if err != nil {
		return describe(err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, c := range changes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.What, c.Name, c.Action, c.Detail)
	}
	tw.Flush()
	if dry {
		return nil
	}
	if *activate {
		for _, d := range b.Campaigns {
			c, err := a.Campaigns.Get(ctx, d.Name)
			if err != nil {
				return err
			}
			// Only drafts: a campaign an operator paused stays paused when
			// the files are applied again (make run does at every start).
			if c.Status != "draft" {
				continue
			}
			if _, err := a.Campaigns.SetStatus(ctx, d.Name, "activate"); err != nil {
				return describe(err)
			}
			if _, err := a.Enroller.EnrollExisting(ctx, d.Name); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "activated %s\n", d.Name)
		}
	}
	return cliAudit(ctx, a, "campaigns apply", dir)
}

// describe spells out a validation error's problems for the terminal.
func describe(err error) error {
	var e *errs.Error
	if !errors.As(err, &e) {
		return err
	}
	lines := []string{e.Message}
	if ps, ok := e.Details["problems"].([]errs.ItemError); ok {
		for _, p := range ps {
			lines = append(lines, "  "+p.Field+": "+p.Reason)
		}
	}
	return errors.New(strings.Join(lines, "\n"))
}

// cliAudit records a mutation made from the command line in the audit log.
func cliAudit(ctx context.Context, a *app.App, action, target string) error {
	actor := "cli"
	if u, err := user.Current(); err == nil {
		actor = "cli:" + u.Username
	}
	return a.Audit.Record(ctx, audit.Entry{At: a.Clock.Now(), Actor: actor, Action: action, Target: target})
}

func clockCmd(ctx context.Context, cfg config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("clock: want show or advance DURATION")
	}
	a, err := open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	db := a.DB
	switch args[0] {
	case "show":
		off, err := clock.ReadOffset(ctx, db.DB)
		if err != nil {
			return err
		}
		if !cfg.DemoClock {
			off = 0
		}
		fmt.Fprintf(stdout, "%s (offset %s, demo clock %v)\n", time.Now().UTC().Add(off).Format(time.RFC3339), off, cfg.DemoClock)
		return nil
	case "advance":
		if !cfg.DemoClock {
			return errors.New("clock advance: the demo clock is off; run every tend process with TEND_DEMO_CLOCK=true")
		}
		if len(args) != 2 {
			return errors.New("clock advance: want a duration such as 2d, 36h or 90m")
		}
		d, err := clock.ParseDuration(args[1])
		if err != nil {
			return err
		}
		off, err := clock.Advance(ctx, db.DB, d)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "clock is now %s (offset %s)\n", time.Now().UTC().Add(off).Format(time.RFC3339), off)
		return cliAudit(ctx, a, "clock advance", args[1])
	default:
		return fmt.Errorf("clock: unknown subcommand %q", args[0])
	}
}

const seedUsage = "tend seed --demo [--accounts N] [--seed S] [--if-empty]"

// seedCmd loads demo data (internal/demo) through the stores, on the app's
// clock: the shared demo clock in local runs.
func seedCmd(ctx context.Context, cfg config.Config, log *slog.Logger, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("seed", flag.ContinueOnError)
	isDemo := fs.Bool("demo", false, "load demo data (the only kind for now)")
	accounts := fs.Int("accounts", demo.DefaultAccounts, "how many accounts")
	seed := fs.Uint64("seed", 1, "the random seed")
	ifEmpty := fs.Bool("if-empty", false, "do nothing when any account exists")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("seed: %w", err) // the flag package has printed the flags
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("seed: unexpected argument %q; usage: %s", fs.Arg(0), seedUsage)
	case !*isDemo:
		return fmt.Errorf("seed: only demo data can be seeded for now, say --demo; usage: %s", seedUsage)
	case *accounts < 1 || *accounts > demo.MaxAccounts:
		return fmt.Errorf("seed: --accounts is 1 to %d, got %d", demo.MaxAccounts, *accounts)
	}
	a, err := open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	start := time.Now()
	seeder := &demo.Seeder{DB: a.DB, Accounts: a.Accounts, Segments: a.Segments, Clock: a.Clock, Health: a.Health}
	sum, err := seeder.Seed(ctx, demo.Options{Accounts: *accounts, Seed: *seed, IfEmpty: *ifEmpty})
	if err != nil {
		return describe(err)
	}
	if sum.Skipped {
		fmt.Fprintln(stdout, "seed: the database already has accounts; nothing seeded (--if-empty)")
		return nil
	}
	personas := make([]string, len(demo.Personas))
	for i, p := range demo.Personas {
		personas[i] = fmt.Sprintf("%s %d", p, len(sum.Personas[p]))
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "seeded demo data\tseed %d, usage for the 90 days before %s, in %s\n", *seed, sum.Day.Format(time.DateOnly), time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(tw, "csms\t%d\n", sum.CSMs)
	fmt.Fprintf(tw, "accounts\t%d (%s)\n", sum.Accounts, strings.Join(personas, ", "))
	fmt.Fprintf(tw, "contacts\t%d\n", sum.Contacts)
	fmt.Fprintf(tw, "events\t%d (%d new)\n", sum.Events, sum.NewEvents)
	fmt.Fprintf(tw, "nps answers\t%d\n", sum.NPS)
	fmt.Fprintf(tw, "segments\t%d created, %d already there\n", len(sum.SegmentsCreated), len(sum.SegmentsExisting))
	tw.Flush()
	return cliAudit(ctx, a, "seed", fmt.Sprintf("demo: %d accounts, seed %d", sum.Accounts, *seed))
}
