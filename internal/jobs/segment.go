package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/hibiken/asynq"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/segment"
)

// Segment task types.
const (
	// TypeSegmentDirty re-evaluates the changed accounts of one dirty shard.
	TypeSegmentDirty = "segment:dirty"
	// TypeSegmentPass starts a pass (full, or the build of one segment) and
	// enqueues its shards.
	TypeSegmentPass = "segment:pass"
	// TypeSegmentShard evaluates one shard (a range of account ids) of a pass.
	TypeSegmentShard = "segment:shard"
)

// DirtyShards splits dirty-account evaluation so that several workers share
// a burst of changes (accounts with id % DirtyShards == k).
const DirtyShards = 4

type dirtyPayload struct {
	Shard int `json:"shard"`
}

type passPayload struct {
	Key       string `json:"key"`
	SegmentID int64  `json:"segment_id,omitempty"` // 0 for a full pass
}

// Client enqueues Tend's tasks.
type Client struct {
	c   *asynq.Client
	log *slog.Logger
}

// NewClient returns a task client on redis.
func NewClient(redis asynq.RedisConnOpt, log *slog.Logger) *Client {
	return &Client{c: asynq.NewClient(redis), log: log}
}

// Close closes the client's connection.
func (c *Client) Close() error { return c.c.Close() }

// enqueue enqueues a task; a task with the same id already waiting or running
// is not an error (that task will do the work).
func (c *Client) enqueue(ctx context.Context, t *asynq.Task, opts ...asynq.Option) error {
	_, err := c.c.EnqueueContext(ctx, t, opts...)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) && !errors.Is(err, asynq.ErrDuplicateTask) {
		return fmt.Errorf("jobs: enqueue %s: %w", t.Type(), err)
	}
	return nil
}

// AccountsChanged signals that accounts' data changed. The change is already
// recorded in PostgreSQL (change_version), so a failed signal only delays
// re-evaluation until the scheduler's sweep; it is logged, not returned.
func (c *Client) AccountsChanged(ctx context.Context, ids []int64) {
	seen := map[int]bool{}
	for _, id := range ids {
		seen[int(id%DirtyShards)] = true
	}
	for shard := range seen {
		if err := c.signalDirty(ctx, shard); err != nil {
			c.log.Warn("signal re-evaluation failed; the sweep will catch up", "err", err)
		}
	}
}

func (c *Client) signalDirty(ctx context.Context, shard int) error {
	payload, _ := json.Marshal(dirtyPayload{Shard: shard})
	return c.enqueue(ctx, asynq.NewTask(TypeSegmentDirty, payload),
		asynq.TaskID("segment:dirty:"+strconv.Itoa(shard)), asynq.Queue(QueueCritical), asynq.MaxRetry(3))
}

// SegmentChanged signals that a segment was created or its predicate edited,
// so its membership is built at once.
func (c *Client) SegmentChanged(ctx context.Context, segmentID, generation int64) {
	if err := c.startPass(ctx, segment.BuildKey(segmentID, generation), segmentID); err != nil {
		c.log.Warn("signal segment build failed; the sweep will catch up", "err", err)
	}
}

// HealthModelChanged starts a full pass, which rescores every account under
// the new model (and moves accounts between segments accordingly). Lost, the
// periodic pass does the same.
func (c *Client) HealthModelChanged(ctx context.Context, version int64) {
	if err := c.startPass(ctx, fmt.Sprintf("health-model:%d", version), 0); err != nil {
		c.log.Warn("signal health model change failed; the next full pass will rescore", "err", err)
	}
}

func (c *Client) startPass(ctx context.Context, key string, segmentID int64) error {
	payload, _ := json.Marshal(passPayload{Key: key, SegmentID: segmentID})
	return c.enqueue(ctx, asynq.NewTask(TypeSegmentPass, payload),
		asynq.TaskID("segment:pass:"+key), asynq.Queue(QueueDefault), asynq.MaxRetry(5))
}

func (c *Client) runShard(ctx context.Context, sh segment.Shard) error {
	payload, _ := json.Marshal(sh)
	return c.enqueue(ctx, asynq.NewTask(TypeSegmentShard, payload),
		asynq.TaskID(fmt.Sprintf("segment:shard:%d:%d", sh.PassID, sh.Lo)), asynq.Queue(QueueBulk), asynq.MaxRetry(5),
		asynq.Timeout(30*time.Minute))
}

// SegmentHandlers run the segment tasks.
type SegmentHandlers struct {
	Engine *segment.Engine
	Client *Client
	Log    *slog.Logger
}

// Register adds the handlers to mux.
func (h *SegmentHandlers) Register(mux *asynq.ServeMux) {
	mux.HandleFunc(TypeSegmentDirty, h.dirty)
	mux.HandleFunc(TypeSegmentPass, h.pass)
	mux.HandleFunc(TypeSegmentShard, h.shard)
}

func (h *SegmentHandlers) dirty(ctx context.Context, t *asynq.Task) error {
	var p dirtyPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil || p.Shard < 0 || p.Shard >= DirtyShards {
		return fmt.Errorf("bad payload %q: %w", t.Payload(), asynq.SkipRetry)
	}
	st, more, err := h.Engine.EvaluateDirty(ctx, p.Shard, DirtyShards)
	if err != nil {
		return err
	}
	if st.Entered+st.Exited > 0 {
		h.Client.SegmentEventsWritten(ctx)
	}
	if st.Accounts > 0 {
		h.Log.Debug("re-evaluated changed accounts", "shard", p.Shard, "accounts", st.Accounts, "entered", st.Entered, "exited", st.Exited, "errors", st.Errors, "more", more)
	}
	return nil
}

func (h *SegmentHandlers) pass(ctx context.Context, t *asynq.Task) error {
	var p passPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil || p.Key == "" {
		return fmt.Errorf("bad payload %q: %w", t.Payload(), asynq.SkipRetry)
	}
	shards, err := h.Engine.StartPass(ctx, p.Key, p.SegmentID)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		if err := h.Client.runShard(ctx, sh); err != nil {
			return err
		}
	}
	h.Log.Info("segment pass started", "key", p.Key, "shards", len(shards))
	return nil
}

func (h *SegmentHandlers) shard(ctx context.Context, t *asynq.Task) error {
	var sh segment.Shard
	if err := json.Unmarshal(t.Payload(), &sh); err != nil || sh.PassID == 0 {
		return fmt.Errorf("bad payload %q: %w", t.Payload(), asynq.SkipRetry)
	}
	st, err := h.Engine.RunShard(ctx, sh)
	if err != nil {
		return err
	}
	if st.Entered+st.Exited > 0 {
		h.Client.SegmentEventsWritten(ctx)
	}
	h.Log.Debug("segment shard done", "pass", sh.PassID, "lo", sh.Lo, "accounts", st.Accounts, "entered", st.Entered, "exited", st.Exited)
	return nil
}

// Scheduler enqueues periodic work and repairs lost signals. Any number of
// scheduler processes may run: passes are keyed by time bucket
// (fullpass:<bucket>), in PostgreSQL and as asynq task ids, so one pass runs
// per bucket.
type Scheduler struct {
	Client   *Client
	Engine   *segment.Engine
	Clock    clock.Clock
	Log      *slog.Logger
	FullPass time.Duration // interval between full passes
	Sweep    time.Duration // interval between sweeps for lost signals
	// Also run these on every sweep (delivery's reconciler, say).
	Also []func(context.Context) error
}

// Run schedules until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	t := time.NewTicker(s.Sweep)
	defer t.Stop()
	var last int64 = -1
	for {
		bucket := s.Clock.Now().Unix() / int64(s.FullPass/time.Second)
		if bucket != last {
			if err := s.Client.startPass(ctx, fmt.Sprintf("fullpass:%d", bucket), 0); err != nil {
				s.Log.Warn("schedule full pass", "err", err)
			} else {
				last = bucket
			}
		}
		if err := s.sweep(ctx); err != nil && ctx.Err() == nil {
			s.Log.Warn("sweep", "err", err)
		}
		for _, f := range s.Also {
			if err := f(ctx); err != nil && ctx.Err() == nil {
				s.Log.Warn("sweep", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// sweep re-sends signals that Redis may have lost: dirty accounts, segments
// waiting for their build, and unfinished shards of passes.
func (s *Scheduler) sweep(ctx context.Context) error {
	dirty, err := s.Engine.HasDirty(ctx)
	if err != nil {
		return err
	}
	if dirty {
		for shard := 0; shard < DirtyShards; shard++ {
			if err := s.Client.signalDirty(ctx, shard); err != nil {
				return err
			}
		}
	}
	unbuilt, err := s.Engine.Unbuilt(ctx)
	if err != nil {
		return err
	}
	for _, u := range unbuilt {
		if err := s.Client.startPass(ctx, segment.BuildKey(u[0], u[1]), u[0]); err != nil {
			return err
		}
	}
	open, err := s.Engine.OpenShards(ctx, s.Clock.Now().Add(-time.Minute), 1000)
	if err != nil {
		return err
	}
	for _, sh := range open {
		if err := s.Client.runShard(ctx, sh); err != nil {
			return err
		}
	}
	return nil
}
