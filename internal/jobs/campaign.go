package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"

	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/delivery"
)

// Campaign and delivery task types.
const (
	// TypeCampaignEnroll consumes segment entries and exits into enrollments.
	TypeCampaignEnroll = "campaign:enroll"
	// TypeDeliverySend sends a batch of due outbox messages (ids, not content).
	TypeDeliverySend = "delivery:send"
)

// SendBatchSize is how many message ids one send task carries. A batch
// costs a claim, a settle and an enrollment advance whatever its size, and
// hands its messages to SMTP in rounds of one per connection, so a batch
// larger than the connections of a worker keeps them all busy. In
// BenchmarkSendPipeline 100 cost about a tenth less PostgreSQL time a
// message than 50, and 200 another tenth less than 100 (3,530-3,870
// msgs/s against 3,160-3,370, alternating); 400 gained nothing more. A
// batch's messages wait, claimed, for its earlier ones to be sent: at 200
// they outlast the default 5-minute lease only when a message takes over
// 1.5 s to hand over (the reaper then gives the rest back, unsent).
const SendBatchSize = 200

type sendPayload struct {
	IDs []int64 `json:"ids"`
}

// SegmentEventsWritten signals that segment entries or exits wait to be
// turned into enrollments.
func (c *Client) SegmentEventsWritten(ctx context.Context) {
	if err := c.enqueue(ctx, asynq.NewTask(TypeCampaignEnroll, nil),
		asynq.TaskID("campaign:enroll"), asynq.Queue(QueueCritical), asynq.MaxRetry(3)); err != nil {
		c.log.Warn("signal enrollment failed; the sweep will catch up", "err", err)
	}
}

// SendMessages enqueues send tasks for message ids, in batches.
func (c *Client) SendMessages(ctx context.Context, ids []int64) error {
	for start := 0; start < len(ids); start += SendBatchSize {
		end := min(start+SendBatchSize, len(ids))
		payload, _ := json.Marshal(sendPayload{IDs: ids[start:end]})
		if err := c.enqueue(ctx, asynq.NewTask(TypeDeliverySend, payload), asynq.Queue(QueueCritical),
			asynq.MaxRetry(3), asynq.Timeout(10*time.Minute)); err != nil {
			return err
		}
	}
	return nil
}

// CampaignHandlers run enrollment and sending.
type CampaignHandlers struct {
	Enroller *campaign.Enroller
	Sender   *delivery.Sender
	Client   *Client // signals the accounts a batch emailed
	Metrics  *Metrics
	Log      *slog.Logger
}

// Register adds the handlers to mux.
func (h *CampaignHandlers) Register(mux *asynq.ServeMux) {
	mux.HandleFunc(TypeCampaignEnroll, h.enroll)
	mux.HandleFunc(TypeDeliverySend, h.send)
}

func (h *CampaignHandlers) enroll(ctx context.Context, _ *asynq.Task) error {
	for round := 0; round < 100; round++ {
		n, err := h.Enroller.ProcessSegmentEvents(ctx, 500)
		if err != nil || n == 0 {
			return err
		}
	}
	return nil
}

func (h *CampaignHandlers) send(ctx context.Context, t *asynq.Task) error {
	var p sendPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil || len(p.IDs) == 0 {
		return fmt.Errorf("bad payload %q: %w", t.Payload(), asynq.SkipRetry)
	}
	sent, err := h.Sender.SendBatch(ctx, p.IDs)
	h.Metrics.sent(sent)
	if sent.Delivered > 0 {
		h.Log.Debug("sent batch", "messages", sent.Delivered, "of", len(p.IDs))
	}
	if len(sent.Changed) > 0 {
		h.Client.AccountsChanged(context.WithoutCancel(ctx), sent.Changed)
	}
	return err
}

// DeliverySweep re-sends what Redis may have lost and reclaims what dead
// workers held: run by the Scheduler every sweep.
type DeliverySweep struct {
	Outbox   *delivery.Outbox
	Enroller *campaign.Enroller
	Client   *Client
	Log      *slog.Logger
	// Lease is how long a worker may hold a claimed or sending message
	// before it is presumed dead.
	Lease time.Duration
	// RequeueAfter is how long an enqueued message may wait for its task
	// before it is enqueued again.
	RequeueAfter time.Duration
	// MaxDelay is how late a held message may get before it is skipped.
	MaxDelay time.Duration
}

// Run does one sweep.
func (d *DeliverySweep) Run(ctx context.Context) error {
	released, uncertain, err := d.Outbox.Reap(ctx, d.Lease)
	if err != nil {
		return err
	}
	if released+uncertain > 0 {
		d.Log.Warn("reclaimed messages of a stopped worker", "released", released, "uncertain", uncertain)
	}
	if d.MaxDelay > 0 {
		if n, err := d.Outbox.ExpireHeld(ctx, d.MaxDelay); err != nil {
			return err
		} else if n > 0 {
			d.Log.Info("skipped messages held past the maximum delay", "messages", n)
		}
	}
	pending, err := d.Enroller.PendingSegmentEvents(ctx)
	if err != nil {
		return err
	}
	if pending {
		d.Client.SegmentEventsWritten(ctx)
	}
	// A broadcast that fails is reported, and what is due still goes:
	// one broken broadcast must not stop every message.
	n, broadcastErr := d.Enroller.RunDueBroadcasts(ctx)
	if n > 0 {
		d.Log.Info("broadcast fanned out", "messages", n)
	}
	return errors.Join(broadcastErr, d.enqueueDue(ctx))
}

// enqueueDue hands the messages that are due to the workers.
func (d *DeliverySweep) enqueueDue(ctx context.Context) error {
	for round := 0; round < 20; round++ {
		ids, err := d.Outbox.TakeDue(ctx, 5000, d.RequeueAfter)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		if err := d.Client.SendMessages(ctx, ids); err != nil {
			return err
		}
	}
	return nil
}

// StalledDrips moves on drip enrollments whose current step was settled
// without them moving on (campaign.Enroller.AdvanceStalled: the reaper made
// a message uncertain, a hold outlasted the maximum delay, an operator
// dropped one, a worker died before its advance), run by the Scheduler
// every sweep: it reads the active enrollments a page of Batch at a time,
// for about Budget of a sweep (a page at least), going on where it stopped
// at the next sweep; once through them all, again after Every. Every
// scheduler process runs it; Advance locks what it moves, so two never
// advance a step twice.
type StalledDrips struct {
	Enroller *campaign.Enroller
	Clock    clock.Clock
	Log      *slog.Logger
	Every    time.Duration
	Batch    int
	Budget   time.Duration

	pass   paced
	cursor campaign.StalledCursor // where the pass in progress goes on
}

// Run goes on with the pass in progress, or starts one when due.
func (d *StalledDrips) Run(ctx context.Context) error {
	total := 0
	defer func() {
		if total > 0 {
			d.Log.Info("advanced drip enrollments whose step was settled without them moving on", "enrollments", total)
		}
	}()
	return d.pass.run(d.Clock.Now(), d.Every, d.Budget, func() (bool, error) {
		cur, n, through, err := d.Enroller.AdvanceStalled(ctx, d.cursor, d.Batch)
		total += n
		// Past the page even when some of it could not move on: those
		// wait for the next pass, and the rest of this one goes on. A page
		// that could not be read is read again at the next sweep.
		d.cursor = cur
		return through, err
	})
}
