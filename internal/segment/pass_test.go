package segment

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/tendhq/tend/internal/account"
)

// TestShardsFinishingTogetherFinishThePass runs many quick shards at once:
// whichever finishes last must see every other one done and finish the pass.
func TestShardsFinishingTogetherFinishThePass(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		f.account(fmt.Sprintf("a%02d", i), account.AccountInput{Seats: ptr(i)})
	}
	f.create("big", `seats >= 20`)
	f.engine.ShardSize = 1
	f.pass("fullpass:0", 0) // stamps every account: the passes below are quick
	for round := 1; round <= 5; round++ {
		key := fmt.Sprintf("fullpass:%d", round)
		shards, err := f.engine.StartPass(ctx, key, 0)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := w; i < len(shards); i += 8 {
					if _, err := f.engine.RunShard(ctx, shards[i]); err != nil {
						t.Error(err)
					}
				}
			}(w)
		}
		wg.Wait()
		var finished bool
		if err := f.db.Get(&finished, `SELECT finished_at IS NOT NULL FROM segment_pass WHERE key = $1`, key); err != nil || !finished {
			t.Fatalf("%s: every shard is done but the pass is not finished (%v)", key, err)
		}
	}
}
