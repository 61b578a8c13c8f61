package jobs

import "time"

// paced runs a pass over a table in batches, spread over the Scheduler's
// sweeps: each sweep runs batches for about a budget (a batch at least) and
// stops, the next sweep goes on where it stopped, and once a pass is
// through, the next starts an interval after the sweep that finished it (by
// the clock). The budget is the process's own time, not the clock's: a demo
// clock moved ahead must not make a sweep run longer.
type paced struct {
	running bool      // a pass has batches left
	next    time.Time // when to start the next pass, once through
}

// run goes on with the pass in progress, or starts one when due at now,
// for about budget; the next pass is due the interval every after the sweep
// that finishes this one.
// batch does one batch and says whether the pass is through; a failed batch
// ends the sweep's share, and the next sweep goes on (or, when the failed
// batch was the last, the next pass starts when due).
func (p *paced) run(now time.Time, every, budget time.Duration, batch func() (through bool, err error)) error {
	if !p.running && now.Before(p.next) {
		return nil
	}
	start := time.Now()
	for {
		through, err := batch()
		p.running = !through
		if through {
			p.next = now.Add(every)
		}
		if err != nil || through {
			return err
		}
		if time.Since(start) >= budget {
			return nil // more to do: the next sweep goes on
		}
	}
}
