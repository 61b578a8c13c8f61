package demo

import (
	"context"
	"fmt"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/health"
	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/segment"
)

// Limits on Options.Accounts.
const (
	DefaultAccounts = 2000
	MaxAccounts     = 99999 // account ids have five digits
)

// chunkSize is how many accounts are drawn and written at a time: accounts,
// contacts, usage and metrics of one chunk are written before the next chunk
// is drawn, so memory does not grow with the number of accounts.
const chunkSize = 100

// Options say what to seed.
type Options struct {
	Accounts int    // how many accounts; DefaultAccounts when 0
	Seed     uint64 // the same seed on the same clock day gives the same data
	IfEmpty  bool   // do nothing when any account exists
}

// Summary says what a seed did.
type Summary struct {
	Skipped bool      // IfEmpty was set and accounts existed: nothing was written
	Day     time.Time // usage ends at the start of this UTC day (the clock's)

	CSMs     int
	Accounts int
	Personas map[Persona][]string // account ids by persona
	Contacts int
	Events   int // events generated
	// NewEvents is how many of them were stored; the others had been
	// seeded before (their message ids were known).
	NewEvents int
	NPS       int // accounts with an NPS answer

	SegmentsCreated  []string
	SegmentsExisting []string // already there, left as they were
}

// Seeder writes demo data through the stores' public API, so that rollups,
// change versions and validation are the ones real ingest gets.
type Seeder struct {
	// DB answers "is there any account yet?" for Options.IfEmpty.
	DB       postgres.Queryer
	Accounts *account.Store
	Segments *segment.Store
	Clock    clock.Clock
	// Health, when set, backfills the score history as of 60 and 30 days
	// ago, so that the 30-day change and the summary's "then" mean
	// something on the demo's first day.
	Health *health.Service
}

// Seed writes the demo data: the CSMs, then the accounts chunk by chunk (each
// with its contacts, its usage events, in batches of account.MaxBatch, and its
// metrics), then the segments. Everything is an upsert by external id or an
// event with a deterministic message id, so seeding again duplicates nothing.
func (s *Seeder) Seed(ctx context.Context, opt Options) (Summary, error) {
	if opt.Accounts == 0 {
		opt.Accounts = DefaultAccounts
	}
	if opt.Accounts < 0 || opt.Accounts > MaxAccounts {
		return Summary{}, errs.E(errs.Invalid, "invalid_accounts", "the number of accounts is 1 to %d, got %d", MaxAccounts, opt.Accounts)
	}
	y, m, d := s.Clock.Now().UTC().Date()
	sum := Summary{Day: time.Date(y, m, d, 0, 0, 0, 0, time.UTC), Personas: map[Persona][]string{}}
	if opt.IfEmpty {
		var exists bool
		if err := s.DB.GetContext(ctx, &exists, `SELECT EXISTS (SELECT 1 FROM account)`); err != nil {
			return Summary{}, fmt.Errorf("demo: seed: %w", err)
		}
		if exists {
			sum.Skipped = true
			return sum, nil
		}
	}

	stored, err := s.Accounts.UpsertCSMs(ctx, csmInputs())
	if err != nil {
		return Summary{}, fmt.Errorf("demo: seed: csms: %w", err)
	}
	sum.CSMs = len(stored)

	events := &batcher{store: s.Accounts}
	for lo := 0; lo < opt.Accounts; lo += chunkSize {
		hi := min(lo+chunkSize, opt.Accounts)
		if err := s.seedChunk(ctx, opt.Seed, lo, hi, sum.Day, events, &sum); err != nil {
			return Summary{}, err
		}
	}
	if err := events.flush(ctx); err != nil {
		return Summary{}, err
	}
	sum.Events, sum.NewEvents = events.sent, events.stored

	for _, in := range Segments {
		_, err := s.Segments.Create(ctx, in)
		switch {
		case errs.Is(err, errs.Conflict):
			sum.SegmentsExisting = append(sum.SegmentsExisting, in.Name)
		case err != nil:
			return Summary{}, fmt.Errorf("demo: seed: segment %s: %w", in.Name, err)
		default:
			sum.SegmentsCreated = append(sum.SegmentsCreated, in.Name)
		}
	}
	if s.Health != nil {
		for _, days := range []int{60, 30} {
			if _, err := s.Health.Backfill(ctx, sum.Day.AddDate(0, 0, -days)); err != nil {
				return Summary{}, fmt.Errorf("demo: seed: health history: %w", err)
			}
		}
	}
	return sum, nil
}

// seedChunk writes accounts lo to hi (excluded). Their events go to the
// batcher, which sends a batch whenever it is full; the accounts exist by then.
func (s *Seeder) seedChunk(ctx context.Context, seed uint64, lo, hi int, day time.Time, events *batcher, sum *Summary) error {
	specs := make([]*accountSpec, 0, hi-lo)
	accounts := make([]account.AccountInput, 0, hi-lo)
	var contacts []account.ContactInput
	for i := lo; i < hi; i++ {
		a := newAccount(seed, i, day)
		specs = append(specs, a)
		accounts = append(accounts, a.input())
		contacts = append(contacts, a.contacts...)
		sum.Personas[a.persona] = append(sum.Personas[a.persona], a.id)
	}
	if _, err := s.Accounts.UpsertAccounts(ctx, accounts); err != nil {
		return fmt.Errorf("demo: seed: accounts: %w", err)
	}
	if err := s.Accounts.UpsertContacts(ctx, contacts); err != nil {
		return fmt.Errorf("demo: seed: contacts: %w", err)
	}
	sum.Accounts += len(accounts)
	sum.Contacts += len(contacts)

	var metrics []account.MetricInput
	for _, a := range specs {
		var err error
		m := a.usage(seed, day, func(e account.EventInput) {
			if err == nil {
				err = events.add(ctx, e)
			}
		})
		if err != nil {
			return err
		}
		for _, mi := range m {
			if _, ok := mi.Values[account.MetricNPS]; ok {
				sum.NPS++
			}
		}
		metrics = append(metrics, m...)
	}
	if _, err := s.Accounts.RecordMetrics(ctx, metrics); err != nil {
		return fmt.Errorf("demo: seed: metrics: %w", err)
	}
	return nil
}

// batcher sends events to IngestEvents in batches of the largest size it takes.
type batcher struct {
	store  *account.Store
	batch  []account.EventInput
	sent   int // events sent
	stored int // events stored (the others were duplicates)
}

func (b *batcher) add(ctx context.Context, e account.EventInput) error {
	b.batch = append(b.batch, e)
	if len(b.batch) < account.MaxBatch {
		return nil
	}
	return b.flush(ctx)
}

func (b *batcher) flush(ctx context.Context) error {
	if len(b.batch) == 0 {
		return nil
	}
	res, err := b.store.IngestEvents(ctx, b.batch, false)
	if err != nil {
		return fmt.Errorf("demo: seed: events: %w", err)
	}
	b.sent += len(b.batch)
	b.stored += res.Accepted
	b.batch = b.batch[:0]
	return nil
}
